"""Exact full ranking in item chunks: the rank of each user's target among all N items without a (users x N)
score matrix. Memory is O(batch x chunk); the result equals `metrics.target_ranks(candidate_scores(...))`
on the full matrix (ties counted against the target, excluded items never candidates).

    ranks = chunked_target_ranks(h, candidates, targets, seen, chunk=65536)

h (B, D) user states, candidates (N + 1, D) item representations (row 0 = padding, never a candidate),
targets (B, T) item ids (0 = padding), seen (B, H) history ids to exclude (0 = padding) or None.
"""

from __future__ import annotations

import torch

from trainer.metrics import MISS


def chunked_target_ranks(
    h: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    seen: torch.Tensor | None = None,
    chunk: int = 65536,
) -> torch.Tensor:
    """(B, T) pessimistic ranks: #{j != t candidate : s_j >= s_t}; MISS for an excluded target, -1 at padding."""
    n_rows = candidates.size(0)
    # The target's score comes from the same matmul kernel as every other score (one (B, chunk) block per
    # chunk), so a target compares with itself exactly as in the full matrix.
    s_t = torch.full(targets.shape, float("-inf"), device=h.device)
    for start in range(0, n_rows, chunk):
        block = (h @ candidates[start : start + chunk].T).float()  # (B, c)
        inside = (targets >= start) & (targets < start + block.size(1))
        picked = block.gather(1, (targets - start).clamp(0, block.size(1) - 1))
        s_t = torch.where(inside, picked, s_t)
    excluded = targets == 0
    if seen is not None:
        excluded |= (targets.unsqueeze(2) == seen.unsqueeze(1)).any(2)  # (B, T): the target is in the history
    counts = torch.zeros(targets.shape, dtype=torch.long, device=h.device)
    for start in range(0, n_rows, chunk):
        block = (h @ candidates[start : start + chunk].T).float()
        mask_out(block, start, seen)
        counts += (block.unsqueeze(1) >= s_t.unsqueeze(2)).sum(2)  # (B, T)
    ranks = counts - 1  # the target counted itself
    ranks = torch.where(excluded, torch.full_like(ranks, MISS), ranks)
    return ranks.masked_fill(targets == 0, -1)


def mask_out(block: torch.Tensor, start: int, seen: torch.Tensor | None) -> None:
    """-inf in place for the padding column and, with `seen`, each user's history items inside this chunk."""
    if start == 0:
        block[:, 0] = float("-inf")
    if seen is None:
        return
    local = seen - start
    ok = (seen > 0) & (local >= 0) & (local < block.size(1))
    rows = torch.arange(block.size(0), device=block.device).unsqueeze(1).expand_as(seen)
    block[rows[ok], local[ok]] = float("-inf")
