"""Ranking metrics against rankings computed by hand, ties included (counted against the target)."""

import math

import pytest
import torch

from trainer.metrics import candidate_scores, ranking_metrics, target_ranks

KS = [1, 2, 5]


def metrics(scores, relevant, seen=None, ks=KS, sampled=None, gen=None):
    s = candidate_scores(
        torch.tensor(scores, dtype=torch.float),
        None if seen is None else torch.tensor(seen),
        torch.tensor(relevant),
        sampled,
        gen,
    )
    ranks = target_ranks(s, torch.tensor(relevant))
    return ranks, {k: v.tolist() for k, v in ranking_metrics(ranks, ks).items()}


def test_single_target_hand_computed():
    # columns: pad, item1..item5. User 0: target 3 has score 0.7; items 1 (0.9) and 4 (0.8) are above -> rank 2.
    # User 1: target 5 is the best -> rank 0. The padding column (score 99) never counts.
    ranks, m = metrics([[99, 0.9, 0.1, 0.7, 0.8, 0.2], [99, 0.1, 0.2, 0.3, 0.4, 0.5]], [[3], [5]])
    assert ranks.tolist() == [[2], [0]]
    assert m["hr@1"] == [0.0, 1.0] and m["hr@2"] == [0.0, 1.0] and m["hr@5"] == [1.0, 1.0]
    assert m["ndcg@5"] == pytest.approx([1 / math.log2(4), 1.0])
    assert m["mrr@5"] == pytest.approx([1 / 3, 1.0])
    assert m["ndcg@2"] == [0.0, 1.0] and m["mrr@2"] == [0.0, 1.0]


def test_ties_count_against_the_target():
    # Target 2 ties with items 1 and 4 at 0.5; item 3 is above: pessimistic rank = 1 + 2 = 3.
    ranks, m = metrics([[0, 0.5, 0.5, 0.9, 0.5, 0.1]], [[2]])
    assert ranks.tolist() == [[3]]
    assert m["hr@2"] == [0.0] and m["ndcg@5"] == pytest.approx([1 / math.log2(5)])
    # A constant model earns nothing at K < N: every other item ties and ranks above.
    ranks, m = metrics([[0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], [[4]])
    assert ranks.tolist() == [[6]] and m["hr@5"] == [0.0]


def test_multiple_relevant_items_recall_and_ndcg():
    # Relevant {1, 3}; scores rank item 1 first (rank 0) and item 3 third (items 1, 2 above it: rank 2).
    ranks, m = metrics([[0, 0.9, 0.8, 0.7, 0.1]], [[1, 3]])
    assert ranks.tolist() == [[0, 2]]
    assert m["hr@1"] == [1.0]  # 1 hit / min(1, 2)
    assert m["hr@2"] == [0.5]  # 1 hit / 2
    assert m["hr@5"] == [1.0]
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@5"] == pytest.approx([(1 + 1 / math.log2(4)) / idcg])
    assert m["mrr@5"] == [1.0]
    # padding in the relevant list (0) is ignored
    ranks, m2 = metrics([[0, 0.9, 0.8, 0.7, 0.1]], [[1, 3, 0]])
    assert ranks.tolist() == [[0, 2, -1]] and m2 == m


def test_exclude_history_removes_seen_items_and_a_seen_target():
    scores = [[0, 0.9, 0.8, 0.7, 0.1], [0, 0.9, 0.8, 0.7, 0.1]]
    ranks, _ = metrics(scores, [[3], [1]], seen=[[1, 2], [1, 0]])
    # user 0: items 1, 2 excluded -> target 3 first; user 1: its target was seen -> excluded, a miss
    assert ranks[0].tolist() == [0] and ranks[1].item() >= 4
    _, m = metrics(scores, [[3], [1]], seen=[[1, 2], [1, 0]], ks=[5, 10])
    assert m["hr@5"] == [1.0, 0.0]
    assert m["hr@10"] == [1.0, 0.0] and m["ndcg@10"][1] == 0.0  # a miss even when K exceeds the catalog


def test_sampled_mode_ranks_against_negatives_only():
    # 20 items, target 20 scores lowest but one; with 3 negatives drawn from items 1..19 its rank is at most 3
    scores = [[0.0] + [1.0 + i for i in range(19)] + [0.5]]
    gen = torch.Generator().manual_seed(0)
    ranks, _ = metrics(scores, [[20]], sampled=3, gen=gen)
    assert ranks.item() == 3  # every sampled negative scores above the target
    full, _ = metrics(scores, [[20]])
    assert full.item() == 19
