"""The student: ID embeddings, per-modality item tables V^m (initialised from the stored features), their
fusion into the item representation a backbone consumes, and the distillation heads that supervise V^m.

The fused table of all items is built once per step and used as the backbone's input (rows of the
sequence) and, by default, as the output embeddings that score every candidate, so the features shape the
ranking; `model.score_items: id` scores with the ID embeddings alone instead.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.backbones import build_backbone, gather_at
from trainer.losses import CodeLoss, HolisticLoss, full_softmax_ce, sampled_bce


class Fusion(nn.Module):
    """ID rows (R, D) + modality rows [(R, d_m)] -> fused rows (R, D).

    sum: id + sum_m P_m V^m; concat: W [id; V^1; ...]; gate: the paper's learned softmax gate,
    sum_k a_k s_k over the states s = [id, P_1 V^1, ...] with a_k = softmax_k(w^T tanh(W s_k)), per item.
    """

    def __init__(self, mode: str, hidden: int, dims: list[int]):
        super().__init__()
        self.mode = mode
        if mode == "concat":
            self.proj = nn.Linear(hidden + sum(dims), hidden)
        elif mode in ("sum", "gate"):
            self.projs = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
            if mode == "gate":
                self.gate = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))
        else:
            raise ValueError(f"unknown fusion {mode!r}; known: sum, concat, gate")

    def forward(self, ids: torch.Tensor, mods: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == "concat":
            return self.proj(torch.cat([ids, *mods], dim=-1))
        states = [ids] + [p(v) for p, v in zip(self.projs, mods)]
        if self.mode == "sum":
            return torch.stack(states).sum(0)
        s = torch.stack(states, dim=1)  # (R, 1 + M, D)
        a = self.gate(s).softmax(dim=1)  # (R, 1 + M, 1)
        return (a * s).sum(1)  # (R, D)


class Student(nn.Module):
    """Everything trainable. forward(batch) -> unweighted loss terms {"rec", "hol/<m>", "code/<m>"}.

    features: {modality: (N + 1, d_m) float tensor, row 0 = zeros} to initialise V^m.
    heads: {modality: (use holistic, use code)}; n_codes: {modality: K}.
    """

    def __init__(
        self,
        n_items: int,
        cfg,
        features: dict[str, torch.Tensor],
        heads=None,
        n_codes=None,
        distill=None,
        loss: str = "ce",
    ):
        super().__init__()
        self.n_items, self.loss, self.score_items = n_items, loss, cfg.score_items
        self.backbone = build_backbone(cfg)
        self.mask_token = None if self.backbone.causal else n_items + 1  # BERT4Rec's [MASK]
        rows = n_items + 1 + (0 if self.backbone.causal else 1)
        self.id_emb = nn.Embedding(rows, cfg.hidden, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
        for name, x in features.items():
            if x.shape[0] != n_items + 1:
                raise ValueError(f"features for {name!r} have {x.shape[0]} rows, expected {n_items + 1} (N + padding)")
        self.modal = nn.ParameterDict({m: nn.Parameter(x.float().clone()) for m, x in features.items()})
        self.fusion = Fusion(cfg.fusion, cfg.hidden, [x.shape[1] for x in features.values()]) if features else None
        heads, n_codes = heads or {}, n_codes or {}
        self.hol = nn.ModuleDict(
            {
                m: HolisticLoss(features[m].shape[1], distill.proj_dim, distill.tau, distill.holistic)
                for m, (h, _) in heads.items()
                if h
            }
        )
        self.code = nn.ModuleDict({m: CodeLoss(features[m].shape[1], n_codes[m]) for m, (_, c) in heads.items() if c})

    def modality_parameters(self) -> list[nn.Parameter]:
        """The V^m tables: the slow parameter group of the asynchronous step."""
        return list(self.modal.values())

    def item_table(self) -> torch.Tensor:
        """Fused representations of every item id the backbone may see: (N + 1 [+ 1 mask], D)."""
        ids = self.id_emb.weight
        if self.fusion is None:
            return ids
        mods = list(self.modal.values())
        if self.mask_token is not None:  # the [MASK] token has no content: a zero modality row
            mods = [torch.cat([v, v.new_zeros(1, v.size(1))]) for v in mods]
        return self.fusion(ids, mods)

    def candidates(self, table: torch.Tensor) -> torch.Tensor:
        """(N + 1, D) representations that score the items (row 0 = padding, never a candidate)."""
        return (self.id_emb.weight if self.score_items == "id" else table)[: self.n_items + 1]

    def encode(self, inputs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """inputs (B, L) right-padded ids -> (B, L, D) sequence states."""
        return self.backbone(table[inputs], inputs == 0)

    @torch.no_grad()
    def scores(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """history (B, L) right-padded, lengths (B,) -> (B, N + 1) scores for the next item (column 0 = pad).
        For BERT4Rec the caller leaves room for the [MASK] appended at position `lengths`."""
        table = self.item_table()
        if self.mask_token is not None:
            history = history.clone()
            history[torch.arange(history.size(0)), lengths] = self.mask_token
            at = lengths
        else:
            at = lengths - 1
        h = gather_at(self.encode(history, table), at)  # (B, D)
        return self.backbone.score(h, self.candidates(table))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        table = self.item_table()
        h = self.encode(batch["inputs"], table)  # (B, L, D)
        where = batch["targets"] > 0
        out = {}
        items = self.candidates(table)
        if self.loss == "ce":
            out["rec"] = full_softmax_ce(h[where], items, batch["targets"][where])
        else:
            out["rec"] = sampled_bce(h[where], items, batch["targets"][where], batch["negatives"][where])
        for m, head in self.hol.items():
            v = self.modal[m][batch["items"]]  # (B, L, d)
            out[f"hol/{m}"] = head(v, batch[f"{m}.sim"], batch[f"{m}.pair_mask"])
        for m, head in self.code.items():
            v = self.modal[m][batch["items"]]
            out[f"code/{m}"] = head(v, batch[f"{m}.codes"], batch[f"{m}.pair_mask"])
        return out
