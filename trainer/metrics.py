"""Full-ranking metrics, computed on device, batch by batch.

Definitions (rank counted from 0; ties counted pessimistically: every other candidate scoring >= the
target ranks above it, so a constant model gets no credit):
    rank_t  = #{candidates j != t : s_j >= s_t}, for each relevant item t of a user
    HR@K    = #{t : rank_t < K} / min(K, |relevant|)     (= Recall@K; 0/1 with one target)
    NDCG@K  = sum_{t: rank_t < K} 1 / log2(rank_t + 2)  /  sum_{i < min(K, |relevant|)} 1 / log2(i + 2)
    MRR@K   = 1 / (min_t rank_t + 1) if min_t rank_t < K else 0
With one target (leave-one-out) these are the field's standard HR, NDCG = 1 / log2(rank + 2), MRR.
Candidates: all items 1..N; column 0 (padding) never is one. Options: exclude the user's history items
(a target that is also in the history is then excluded too, as RecBole does: a miss), or rank against
`sampled` random negatives drawn from the items outside history and targets (labelled `sampled<n>`).
"""

from __future__ import annotations

import torch


def candidate_scores(
    scores: torch.Tensor,
    seen: torch.Tensor | None = None,
    relevant: torch.Tensor | None = None,
    sampled: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """scores (B, N + 1) -> the same with non-candidates at -inf. seen (B, H) ids to exclude (0 = pad);
    with `sampled`, keep only the relevant items (B, T) and `sampled` negatives per user."""
    scores = scores.float().clone()
    scores[:, 0] = float("-inf")
    if seen is not None:
        scores.scatter_(1, seen, float("-inf"))
        scores[:, 0] = float("-inf")
    if sampled:
        allowed = torch.isfinite(scores)
        allowed.scatter_(1, relevant, False)
        allowed[:, 0] = False
        neg = torch.multinomial(allowed.float(), sampled, replacement=False, generator=generator)  # (B, n)
        keep = torch.zeros_like(allowed).scatter_(1, neg, True).scatter_(1, relevant, True)
        keep[:, 0] = False
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores


MISS = 1 << 40  # the rank of an excluded target


def target_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """scores (B, C), relevant (B, T) item ids with 0 = padding -> (B, T) pessimistic ranks (-1 at padding).
    A target at -inf (excluded) gets a rank past any K, a miss even in a catalog smaller than K."""
    s_t = scores.gather(1, relevant)  # (B, T)
    ranks = torch.stack([(scores >= s_t[:, t : t + 1]).sum(1) - 1 for t in range(relevant.size(1))], dim=1)
    ranks = torch.where(torch.isfinite(s_t), ranks, torch.full_like(ranks, MISS))
    return ranks.masked_fill(relevant == 0, -1)


def ranking_metrics(ranks: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """ranks (B, T) from target_ranks -> {"hr@K", "ndcg@K", "mrr@K"}: (B,) per-user values."""
    valid = ranks >= 0
    n_rel = valid.sum(1).clamp_min(1)  # (B,)
    best = torch.where(valid, ranks, torch.full_like(ranks, 1 << 30)).min(1).values
    out = {}
    for k in ks:
        hit = valid & (ranks < k)  # (B, T)
        ideal_n = torch.clamp(n_rel, max=k)
        discounts = 1.0 / torch.log2(torch.arange(k, device=ranks.device, dtype=torch.float) + 2)
        idcg = torch.cumsum(discounts, 0)[ideal_n - 1]
        dcg = torch.where(
            hit, 1.0 / torch.log2(ranks.float().clamp_min(0) + 2), torch.zeros_like(ranks, dtype=torch.float)
        ).sum(1)
        out[f"hr@{k}"] = hit.sum(1).float() / ideal_n.float()
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"mrr@{k}"] = torch.where(best < k, 1.0 / (best.float() + 1), torch.zeros_like(best, dtype=torch.float))
    return out
