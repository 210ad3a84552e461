"""Exact full ranking in item chunks equals the full score matrix's ranks: ties counted against the target,
history exclusion, an excluded target a miss, padding never a candidate."""

from __future__ import annotations

import pytest
import torch

from trainer.metrics import MISS, candidate_scores, target_ranks
from trainer.ranking import chunked_target_ranks


def _full(h, cand, rel, seen):
    return target_ranks(candidate_scores(h @ cand.T, seen), rel)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1000])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("keep_bytes", [0, 2**20])  # blocks recomputed, or kept from the first pass
def test_chunked_ranks_equal_full_matrix_with_ties(chunk, exclude, keep_bytes):
    g = torch.Generator().manual_seed(chunk)
    B, N, D = 9, 50, 4
    # integer-valued vectors: many exact ties between items
    h = torch.randint(-2, 3, (B, D), generator=g).float()
    cand = torch.randint(-2, 3, (N + 1, D), generator=g).float()
    rel = torch.randint(1, N + 1, (B, 2), generator=g)
    rel[0, 1] = 0  # padding in the relevant list
    seen = torch.randint(0, N + 1, (B, 6), generator=g)
    seen[1, 0] = rel[1, 0]  # a target in the history: excluded -> a miss
    seen = seen if exclude else None
    got = chunked_target_ranks(h, cand, rel, seen, chunk, keep_bytes)
    assert torch.equal(got, _full(h, cand, rel, seen))
    if exclude:
        assert got[1, 0] == MISS
    assert got[0, 1] == -1


def test_padding_column_is_never_a_candidate():
    h = torch.ones(1, 2)
    cand = torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 0.5]])  # row 0 (padding) would outscore all
    assert chunked_target_ranks(h, cand, torch.tensor([[1]]), None, 1).item() == 0
    assert chunked_target_ranks(h, cand, torch.tensor([[2]]), None, 2).item() == 1
