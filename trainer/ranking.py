"""Exact full ranking in item chunks: the rank of each user's target among all N items without a (users x N)
score matrix. Memory is O(batch x chunk), plus a cache of the score blocks when they fit 256 MiB (then each
block is computed once, not twice). The result equals `metrics.target_ranks(candidate_scores(...))` on the full
matrix (ties counted against the target, excluded items never candidates).

    ranks = chunked_target_ranks(h, candidates, targets, seen, chunk=65536)

h (B, D) user states, candidates (N + 1, D) item representations (row 0 = padding, never a candidate),
targets (B, T) item ids (0 = padding), seen (B, H) history ids to exclude (0 = padding) or None.

`chunked_top_k` gives the K best items themselves (recommending), in the same chunks and memory bound.
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
    keep_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """(B, T) pessimistic ranks: #{j != t candidate : s_j >= s_t}; MISS for an excluded target, -1 at padding."""
    n_rows = candidates.size(0)
    # The target's score comes from the same matmul kernel as every other score (one (B, chunk) block per
    # chunk), so a target compares with itself exactly as in the full matrix. That needs the target's block
    # before the count: blocks are kept from the first pass when they fit `keep_bytes`, else recomputed.
    keep = targets.size(0) * n_rows * 4 <= keep_bytes
    kept: list[torch.Tensor] = []
    s_t = torch.full(targets.shape, float("-inf"), device=h.device)
    for start in range(0, n_rows, chunk):
        block = (h @ candidates[start : start + chunk].T).float()  # (B, c)
        inside = (targets >= start) & (targets < start + block.size(1))
        picked = block.gather(1, (targets - start).clamp(0, block.size(1) - 1))
        s_t = torch.where(inside, picked, s_t)
        if keep:
            kept.append(block)
    excluded = targets == 0
    if seen is not None:
        excluded |= (targets.unsqueeze(2) == seen.unsqueeze(1)).any(2)  # (B, T): the target is in the history
    counts = torch.zeros(targets.shape, dtype=torch.long, device=h.device)
    for i, start in enumerate(range(0, n_rows, chunk)):
        block = kept[i] if keep else (h @ candidates[start : start + chunk].T).float()
        mask_out(block, start, seen)
        # int32 sums (a chunk has < 2^31 columns) take half the time of the default int64 ones
        counts += (block.unsqueeze(1) >= s_t.unsqueeze(2)).sum(2, dtype=torch.int32)  # (B, T)
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


def chunked_top_k(
    h: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    seen: torch.Tensor | None = None,
    chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) item ids and float scores of the k best candidates, best first, ties to the lower item id (so the
    answer does not depend on the chunk size or torch's topk). Padding and `seen` items are never returned:
    when fewer than k candidates remain, the missing slots hold id 0 and score -inf."""
    best_s = torch.empty(h.size(0), 0, device=h.device)
    best_i = torch.empty(h.size(0), 0, dtype=torch.long, device=h.device)
    for start in range(0, candidates.size(0), chunk):
        block = (h @ candidates[start : start + chunk].T).float()  # the scores chunked_target_ranks ranks by
        mask_out(block, start, seen)
        s, i = _stable_top_k(block, min(k, block.size(1)))
        # best_i < start + i everywhere: a stable sort of [best, new] keeps ties in ascending id order
        both_s, both_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
        order = both_s.sort(dim=1, descending=True, stable=True).indices[:, :k]
        best_s, best_i = both_s.gather(1, order), both_i.gather(1, order)
    return torch.where(torch.isfinite(best_s), best_i, torch.zeros_like(best_i)), best_s


def _stable_top_k(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk with ties at the k-th score resolved to the lower column (topk leaves that unspecified),
    without sorting the whole block: only the columns scoring >= the k-th score are sorted."""
    kth = block.topk(k, dim=1).values[:, -1:]
    keep = block >= kth  # k columns per row, more only when the k-th score is tied
    cols = torch.arange(block.size(1), device=block.device)
    key = torch.where(keep, block.size(1) - cols, torch.zeros_like(cols))  # kept columns, lowest first
    picked = key.topk(int(keep.sum(1).max()), dim=1).indices  # unkept columns come last and score < kth
    values = block.gather(1, picked)
    order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), picked.gather(1, order)
