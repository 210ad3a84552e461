"""Negatives for the sampled softmax: one set of ids per step, shared by every position of the batch, drawn
with replacement from q_j proportional to (count_j + 1)^alpha over the training targets (alpha = 0: uniform,
alpha = 1: popularity), optionally joined by the batch's own targets (in-batch negatives).

The draw costs O(S log N) (binary search in a cumulative table built once), never O(N) per step, and it
comes from a generator seeded by (seed, step), so a resumed run replays the same negatives.

logQ correction: each candidate column j is shifted by log E[#j in the candidate set] = log(S q_j + P f_j),
with S negatives, P in-batch positions and f_j the targets' empirical frequency (Yi et al., RecSys 2019;
Yang et al., WWW 2020, mixed negative sampling). The positive's logit gets the same shift, as in TensorFlow's
`sampled_softmax_loss`; with every item as a candidate and a uniform q the shift is a constant and the loss
equals the full softmax.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Negatives(NamedTuple):
    ids: torch.Tensor  # (C,) long item ids, 1..N: S sampled then (optionally) the batch's P targets
    log_q: torch.Tensor  # (C,) float: log expected count of each id in the candidate set


class NegativeSampler:
    """counts: (N + 1,) training-target counts per item id (index 0 = padding, never drawn)."""

    def __init__(
        self,
        counts: torch.Tensor,
        n_negatives: int,
        alpha: float = 0.0,
        in_batch: bool = False,
        correct: bool = True,
        seed: int = 0,
    ):
        if n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
        if alpha < 0:
            raise ValueError(f"popularity exponent must be >= 0, got {alpha}")
        counts = counts.double().clone()
        counts[0] = 0
        weights = (counts + 1).pow(alpha)
        weights[0] = 0
        self.q = weights / weights.sum()  # (N + 1,) proposal, float64
        self.cdf = torch.cumsum(self.q, 0)
        self.cdf[-1] = 1.0
        total = counts.sum()
        self.freq = counts / total if total > 0 else torch.zeros_like(counts)  # in-batch proposal
        self.n_negatives, self.in_batch, self.correct, self.seed = n_negatives, in_batch, correct, seed

    def log_q(self, ids: torch.Tensor, n_positions: int) -> torch.Tensor:
        """log E[#id in the candidate set] for each of `ids` (any shape), float32 on ids' device."""
        if not self.correct:
            return torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        flat = ids.reshape(-1).cpu()
        expected = self.n_negatives * self.q[flat]
        if self.in_batch:
            expected = expected + n_positions * self.freq[flat]
        return expected.clamp_min(1e-30).log().float().reshape(ids.shape).to(ids.device)

    def draw(self, step: int, targets: torch.Tensor) -> Negatives:
        """The candidates of one optimizer step; targets (P,) are the batch's valid targets."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        u = torch.rand(self.n_negatives, dtype=torch.float64, generator=gen)
        ids = torch.searchsorted(self.cdf, u, right=True).clamp_(1, len(self.cdf) - 1)
        ids = ids.to(targets.device)
        if self.in_batch:
            ids = torch.cat([ids, targets])
        return Negatives(ids, self.log_q(ids, targets.numel()))
