"""trainer/retention.py: the modality-forgetting measure reads 1.0 for an untouched table, falls with drift,
and ignores content-less rows."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.retention import next_item_knn, table_retention


def test_untouched_or_rescaled_table_kept_everything():
    x = torch.randn(500, 16)
    assert table_retention(x, x) == pytest.approx((1.0, 1.0), abs=1e-5)
    assert table_retention(x, 3.0 * x) == pytest.approx((1.0, 1.0), abs=1e-5)  # cosines ignore the scale


def test_drift_lowers_both_measures_and_noise_keeps_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=g)
    small = table_retention(x, x + 0.3 * torch.randn(2000, 16, generator=g))
    large = table_retention(x, x + 1.5 * torch.randn(2000, 16, generator=g))
    unrelated = table_retention(x, torch.randn(2000, 16, generator=g))
    assert 1.0 > small[0] > large[0] > unrelated[0] and 1.0 > small[1] > large[1] > unrelated[1]
    assert abs(unrelated[0]) < 0.05 and abs(unrelated[1]) < 0.05


def test_content_less_rows_are_left_out():
    x = torch.randn(300, 8)
    trained = x.clone()
    x[:100] = 0.0  # masked items start at zero; whatever they learn says nothing about forgetting
    trained[:100] = torch.randn(100, 8)
    assert table_retention(x, trained) == pytest.approx((1.0, 1.0), abs=1e-5)


def test_next_item_knn_scores_a_table_by_its_nearest_neighbours():
    # items 1..6 on a circle in 2-d: each item's nearest unseen neighbour is the next one along
    angle = torch.arange(6, dtype=torch.float) * (torch.pi / 3.5)
    table = torch.cat([torch.zeros(1, 2), torch.stack([angle.cos(), angle.sin()], 1)])
    assert next_item_knn(table, [[1, 2], [2, 3], [4, 5]], [[3], [4], [6]]) == pytest.approx(1.0)
    # scored in blocks of one user (7 scores per user): the same mean
    assert next_item_knn(table, [[1, 2], [2, 3], [4, 5]], [[3], [4], [6]], max_scores=7) == pytest.approx(1.0)
    assert next_item_knn(table, [[1, 2], [4, 5], [2, 3]], [[2], [6], [4]], max_scores=7) == pytest.approx(2 / 3)
    assert next_item_knn(table, [[1, 2]], [[2]]) == 0.0  # a target in the history is excluded: a miss


def test_next_item_knn_counts_ties_against_the_target_and_skips_content_less_rows():
    # last item 1 = (1, 0); item 4 is closer than the target 2; item 3 ties with it (cos 0 both); item 5 has
    # no content (zero row, score 0: a tie too). Rank 3 -> NDCG 1 / log2(5)
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    assert next_item_knn(table, [[1]], [[2]]) == pytest.approx(1 / math.log2(5))
