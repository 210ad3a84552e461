"""Loss terms: the next-item losses and the two correlation-distillation terms, as standalone modules.

Shapes: B sequences of length L; V (B, L, d) the student's modality rows for the sequence items; teacher
targets T (B, L, L) similarities, codes (B, L, L) correlation types, pair_mask (B, L, L) True for the pairs of
distinct valid items. Nothing here is N x N: every term costs O(B L^2 d) at most.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


def _ce_sum(h: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = h @ items.T  # (P, N + 1)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def full_softmax_ce(h: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """h (P, D) states, items (N + 1, D) all item representations (row 0 = padding), targets (P,) in 1..N.
    Cross-entropy over all N items; the padding row is never a candidate. Positions are processed `chunk`
    at a time with activation checkpointing, so the (P, N) logits never exist at once: a batch of long
    histories (P ~ 12k on Beauty) would otherwise need GBs of host memory."""
    if h.size(0) <= chunk:
        return _ce_sum(h, items, targets) / max(1, h.size(0))
    total = sum(
        checkpoint(_ce_sum, h[i : i + chunk], items, targets[i : i + chunk], use_reentrant=False)
        for i in range(0, h.size(0), chunk)
    )
    return total / h.size(0)


def sampled_bce(h: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """h (P, D) states, positives (P, D) target rows, negatives (P, n, D) rows of n sampled negatives per
    position: BCE of the positive against its negatives (uniform negatives, no correction)."""
    pos = (h * positives).sum(-1)  # (P,)
    neg = torch.einsum("pd,pnd->pn", h, negatives)  # (P, n)
    return F.binary_cross_entropy_with_logits(
        pos.float(), torch.ones_like(pos, dtype=torch.float)
    ) + F.binary_cross_entropy_with_logits(neg.float(), torch.zeros_like(neg, dtype=torch.float))


def sampled_softmax_ce(
    h: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    candidate_ids: torch.Tensor,
    target_log_q: torch.Tensor,
    candidate_log_q: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of each position's target against C candidates shared by the whole batch.

    h (P, D) states; positives (P, D) target rows; candidates (C, D) rows of candidate_ids (C,); targets (P,);
    target_log_q (P,), candidate_log_q (C,) the logQ corrections (`trainer/sampling.py`; zeros: none). A
    candidate equal to the position's own target (an accidental hit) is masked: the target is the positive.
    Mean over positions. With candidate_ids = 1..N and no correction this is the full softmax exactly."""
    pos = (h * positives).sum(-1).float() - target_log_q  # (P,)
    neg = (h @ candidates.T).float() - candidate_log_q  # (P, C)
    neg = neg.masked_fill(candidate_ids.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)  # (P, 1 + C): the positive is column 0
    return F.cross_entropy(logits, torch.zeros_like(targets))


class HolisticLoss(nn.Module):
    """Holistic correlation: h' = W2(W1 V), S_ij = cos(h'_i, h'_j).

    frobenius: ||M * (S - T)||_F / tau, averaged over the batch's B sequences (mean="batch": the paper's 1/B, a
        sequence without a pair adds 0) or over the sequences with a pair (mean="sequences_with_pairs", ours).
    kl: per anchor item i with a valid pair, KL(softmax_j(T_ij / tau) || softmax_j(S_ij / tau)) over the
        valid j, averaged over anchors (an option, not the paper's loss).
    forward(v (B, L, d), sim (B, L, L), pair_mask (B, L, L)) -> scalar.
    """

    def __init__(self, dim: int, proj_dim: int = 128, tau: float = 1.5, kind: str = "frobenius", mean: str = "batch"):
        super().__init__()
        if kind not in ("frobenius", "kl"):
            raise ValueError(f"holistic loss kind must be frobenius or kl, got {kind!r}")
        if mean not in ("batch", "sequences_with_pairs"):
            raise ValueError(f"holistic mean must be batch or sequences_with_pairs, got {mean!r}")
        self.mean = mean
        self.w1 = nn.Linear(dim, proj_dim)
        self.w2 = nn.Linear(proj_dim, proj_dim)
        self.tau, self.kind = tau, kind

    def student_sim(self, v: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.w2(self.w1(v)).float(), dim=-1)  # (B, L, p)
        return h @ h.transpose(1, 2)  # (B, L, L)

    def forward(self, v: torch.Tensor, sim: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        s = self.student_sim(v)
        m = pair_mask.float()
        if self.kind == "frobenius":
            sq = (m * (s - sim.float()) ** 2).sum((1, 2))  # (B,)
            has = pair_mask.flatten(1).any(1)
            # clamp: the gradient of sqrt at an exact 0 is infinite
            norms = sq[has].clamp_min(1e-12).sqrt()
            count = has.sum().clamp_min(1) if self.mean == "sequences_with_pairs" else sq.shape[0]
            return norms.sum() / (self.tau * count) + 0 * s.sum()
        neg = torch.finfo(torch.float).min
        logq = (s / self.tau).masked_fill(~pair_mask, neg).log_softmax(-1)
        p = (sim.float() / self.tau).masked_fill(~pair_mask, neg).softmax(-1)
        kl = (m * p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1)  # (B, L)
        anchors = pair_mask.any(-1)
        return kl[anchors].sum() / anchors.sum().clamp_min(1) + 0 * s.sum()


class CodeLoss(nn.Module):
    """Dissected correlation: logits_ij = MLP(|V_i - V_j|) (d -> d -> ReLU -> K), cross-entropy against the
    teacher's correlation type code(i, j), averaged over the masked pairs. |V_i - V_j| and the codes are
    symmetric, so each unordered pair is taken once (i < j): the same mean at half the cost. Pairs go
    through the MLP `chunk` at a time under activation checkpointing: a batch of 256 full-length histories
    has ~300k pairs, whose d-wide activations would otherwise hold ~0.6 GB until the backward.
    forward(v (B, L, d), codes (B, L, L) long, pair_mask (B, L, L)) -> scalar.
    """

    def __init__(self, dim: int, n_codes: int, chunk: int = 32768):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, n_codes))
        self.chunk = chunk

    def _ce_sum(
        self, v: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        logits = self.mlp((v[b, i] - v[b, j]).abs())  # (P, K)
        return F.cross_entropy(logits.float(), codes, reduction="sum")

    def forward(self, v: torch.Tensor, codes: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        b, i, j = torch.triu(pair_mask, diagonal=1).nonzero(as_tuple=True)  # gather only real pairs
        n = b.numel()
        if n == 0:
            return self.mlp(v[:0, 0]).sum() * 0.0  # keeps the MLP in the graph (DDP) with a zero gradient
        target = codes[b, i, j]
        if n <= self.chunk:
            return self._ce_sum(v, b, i, j, target) / n
        total = sum(
            checkpoint(
                self._ce_sum,
                v,
                b[k : k + self.chunk],
                i[k : k + self.chunk],
                j[k : k + self.chunk],
                target[k : k + self.chunk],
                use_reentrant=False,
            )
            for k in range(0, n, self.chunk)
        )
        return total / n
