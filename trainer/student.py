"""The student: ID embeddings, per-modality item tables V^m (initialised from the stored features), their
fusion into the item representation a backbone consumes, and the distillation heads that supervise V^m.

Fused rows are the backbone's input and, by default, the output embeddings that score the candidates, so the
features shape the ranking; `model.score_items: id` scores with the ID embeddings alone instead.

Two ways through a training step:
- `optim.loss: ce` (exact full softmax): the fused table of all N items is built every step, O(N) per step.
- `bce` / `sampled_softmax`: only the rows the step needs are looked up and fused (the batch's items, its
  targets, its negatives), so the step's cost does not grow with N. With `sparse` lookups the big tables get
  sparse gradients (rows touched by the step only), which `trainer/optim.py` updates with a lazy Adam.
Evaluation builds the candidate table once per pass, in row chunks (`candidate_table`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from trainer.backbones import build_backbone
from trainer.losses import CodeLoss, HolisticLoss, full_softmax_ce, sampled_bce, sampled_softmax_ce

TABLES = "modality_tables"  # the V^m tables' attribute, so the prefix of their keys in a saved state dict


class DistillHeads(NamedTuple):
    """Which distillation terms supervise one modality's table V^m."""

    holistic: bool
    code: bool


def distill_heads(cfg) -> dict[str, DistillHeads]:
    """{modality: heads} of a TrainConfig's distilled modalities: those with a term of weight > 0, none when
    distillation is off. Exactly these modalities need a teacher."""
    if not cfg.distill.enabled:
        return {}
    heads = {m.name: DistillHeads(holistic=m.weight_hol > 0, code=m.weight_code > 0) for m in cfg.modalities}
    return {m: h for m, h in heads.items() if h.holistic or h.code}


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
        if ids.dim() != 2:  # (..., D) rows of any shape: fuse them flat
            flat = self.forward(ids.reshape(-1, ids.size(-1)), [v.reshape(-1, v.size(-1)) for v in mods])
            return flat.reshape(*ids.shape[:-1], flat.size(-1))
        if self.mode == "concat":
            return self.proj(torch.cat([ids, *mods], dim=-1))
        states = [ids] + [p(v) for p, v in zip(self.projs, mods)]
        if self.mode == "sum":
            return torch.stack(states).sum(0)
        s = torch.stack(states, dim=1)  # (R, 1 + M, D)
        a = self.gate(s).softmax(dim=1)  # (R, 1 + M, 1)
        return (a * s).sum(1)  # (R, D)


def loss_heads(heads: dict, distill, n_codes: dict[str, int], width) -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """(holistic, code) loss heads of the distilled modalities, on a table of `width(modality)` dims."""
    holistic = {
        m: HolisticLoss(width(m), distill.proj_dim, distill.tau, distill.holistic, distill.holistic_mean)
        for m, h in heads.items()
        if h.holistic
    }
    code = {m: CodeLoss(width(m), n_codes[m]) for m, h in heads.items() if h.code}
    return nn.ModuleDict(holistic), nn.ModuleDict(code)


class Student(nn.Module):
    """Everything trainable. forward(batch) -> unweighted loss terms {"rec", "hol/<m>", "code/<m>"} (plus
    "hol/id<-<m>", "code/id<-<m>" on the ID embeddings under distill.onto_id).

    features: {modality: (N + 1, d_m) float tensor, row 0 = zeros} to initialise V^m.
    heads: {modality: DistillHeads}; n_codes: {modality: K}.
    """

    def __init__(
        self,
        n_items: int,
        cfg,
        features: dict[str, torch.Tensor],
        heads: dict[str, DistillHeads] | None = None,
        n_codes=None,
        distill=None,
        loss: str = "ce",
        sparse: bool = False,
    ):
        super().__init__()
        self.n_items, self.loss, self.score_items = n_items, loss, cfg.score_items
        if sparse and loss == "ce":
            raise ValueError("sparse table gradients need a loss that looks up rows (bce or sampled_softmax), not ce")
        self.sparse = sparse  # row lookups give sparse gradients to the big tables
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
        self.modality_tables = nn.ParameterDict({m: nn.Parameter(x.float().clone()) for m, x in features.items()})
        self.fusion = Fusion(cfg.fusion, cfg.hidden, [x.shape[1] for x in features.values()]) if features else None
        heads, n_codes = heads or {}, n_codes or {}
        self.holistic_heads, self.code_heads = loss_heads(heads, distill, n_codes, lambda m: features[m].shape[1])
        # distill.onto_id: heads of the same terms on the ID embeddings, one per distilled modality
        onto_id = heads if distill is not None and distill.onto_id else {}
        self.id_holistic_heads, self.id_code_heads = loss_heads(onto_id, distill, n_codes, lambda m: cfg.hidden)

    def modality_parameters(self) -> list[nn.Parameter]:
        """The V^m tables: the slow parameter group of the asynchronous step."""
        return list(self.modality_tables.values())

    @staticmethod
    def saved_modality_tables(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{modality: V^m} from a saved state dict (best/model.safetensors), without building the model."""
        prefix = f"{TABLES}."
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    def table_parameters(self) -> list[nn.Parameter]:
        """The (N + 1)-row tables: ID embeddings and every V^m (the ones with sparse gradients when `sparse`)."""
        return [self.id_emb.weight, *self.modality_tables.values()]

    def modality_rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """V^m rows of `ids` (any shape, values 0..N) -> (..., d_m)."""
        return F.embedding(ids, self.modality_tables[name], sparse=self.sparse)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Fused representations of `ids` (any shape; 0 = padding, N + 1 = BERT4Rec's [MASK]) -> (..., D)."""
        id_rows = F.embedding(ids, self.id_emb.weight, sparse=self.sparse)
        if self.fusion is None:
            return id_rows
        content = ids.clamp(max=self.n_items)  # the [MASK] token has no content: a zero modality row
        mods = [self.modality_rows(m, content) for m in self.modality_tables]
        if self.mask_token is not None:
            keep = (ids <= self.n_items).unsqueeze(-1)
            mods = [v * keep for v in mods]
        return self.fusion(id_rows, mods)

    def candidate_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The representations that score `ids` as candidates (fused, or the ID rows alone)."""
        if self.score_items == "id":
            return F.embedding(ids, self.id_emb.weight, sparse=self.sparse)
        return self.rows(ids)

    def item_table(self) -> torch.Tensor:
        """Fused representations of every item id the backbone may see: (N + 1 [+ 1 mask], D)."""
        ids = self.id_emb.weight
        if self.fusion is None:
            return ids
        mods = list(self.modality_tables.values())
        if self.mask_token is not None:  # the [MASK] token has no content: a zero modality row
            mods = [torch.cat([v, v.new_zeros(1, v.size(1))]) for v in mods]
        return self.fusion(ids, mods)

    def candidates(self, table: torch.Tensor) -> torch.Tensor:
        """(N + 1, D) representations that score the items (row 0 = padding, never a candidate)."""
        return (self.id_emb.weight if self.score_items == "id" else table)[: self.n_items + 1]

    @torch.no_grad()
    def candidate_table(self, chunk: int = 65536) -> torch.Tensor:
        """(N + 1, D) candidate representations for an evaluation pass, fused `chunk` rows at a time (the gate's
        activations for all N rows at once would be several GB at a million items)."""
        if self.score_items == "id" or self.fusion is None:
            return self.id_emb.weight[: self.n_items + 1]
        ids = torch.arange(self.n_items + 1, device=self.id_emb.weight.device)
        return torch.cat([self.rows(ids[s : s + chunk]) for s in range(0, len(ids), chunk)])

    def encode(self, inputs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """inputs (B, L) right-padded ids -> (B, L, D) sequence states; rows from `table` when given (ce),
        else looked up and fused for these ids only."""
        x = table[inputs] if table is not None else self.rows(inputs)
        return self.backbone(x, inputs == 0)

    @torch.no_grad()
    def user_states(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """history (B, L) right-padded, lengths (B,) -> (B, D) states that score the next item. For BERT4Rec
        the caller leaves room for the [MASK] appended at position `lengths`."""
        if self.mask_token is not None:
            history = history.clone()
            history[torch.arange(history.size(0)), lengths] = self.mask_token
            at = lengths
        else:
            at = lengths - 1
        return self.backbone.states_at(self.rows(history), history == 0, at)

    @torch.no_grad()
    def scores(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N + 1) scores for the next item (column 0 = pad), fusing the candidate table on every call: a
        convenience for small catalogs and tests; evaluation fuses it once per pass and ranks in item chunks."""
        return self.backbone.score(self.user_states(history, lengths), self.candidate_table())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        where = batch["targets"] > 0
        targets = batch["targets"][where]  # (P,)
        out = {}
        if self.loss == "ce":  # exact: the whole fused table, every step
            table = self.item_table()
            h = self.encode(batch["inputs"], table)[where]  # (P, D)
            out["rec"] = full_softmax_ce(h, self.candidates(table), targets)
        else:  # only the rows this step needs
            h = self.encode(batch["inputs"])[where]
            if self.loss == "bce":
                negatives = batch["negatives"][where]  # (P, n)
                out["rec"] = sampled_bce(h, self.candidate_rows(targets), self.candidate_rows(negatives))
            else:
                out["rec"] = sampled_softmax_ce(
                    h,
                    self.candidate_rows(targets),
                    self.candidate_rows(batch["negative_ids"]),
                    targets,
                    batch["negative_ids"],
                    batch["target_log_q"][where],
                    batch["negative_log_q"],
                )
        for m, head in self.holistic_heads.items():
            v = self.modality_rows(m, batch["items"])  # (B, L, d)
            out[f"hol/{m}"] = head(v, batch[f"{m}.sim"], batch[f"{m}.pair_mask"])
        for m, head in self.code_heads.items():
            v = self.modality_rows(m, batch["items"])
            out[f"code/{m}"] = head(v, batch[f"{m}.codes"], batch[f"{m}.pair_mask"])
        if self.id_holistic_heads or self.id_code_heads:
            ids = F.embedding(batch["items"], self.id_emb.weight, sparse=self.sparse)  # (B, L, D)
            for m, head in self.id_holistic_heads.items():
                out[f"hol/id<-{m}"] = head(ids, batch[f"{m}.sim"], batch[f"{m}.pair_mask"])
            for m, head in self.id_code_heads.items():
                out[f"code/id<-{m}"] = head(ids, batch[f"{m}.codes"], batch[f"{m}.pair_mask"])
        return out
