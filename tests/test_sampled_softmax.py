"""Sampled softmax: equal to the full softmax (loss and gradients) when every item is a candidate, the logQ
correction exact for a known proposal, accidental hits masked, negatives replayed by (seed, step)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import full_softmax_ce, sampled_softmax_ce
from trainer.sampling import NegativeSampler


def _problem(P=7, N=12, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(P, D, generator=g, requires_grad=True)
    items = torch.randn(N + 1, D, generator=g, requires_grad=True)
    targets = torch.randint(1, N + 1, (P,), generator=g)
    return h, items, targets


def test_every_item_as_negative_without_correction_is_the_full_softmax():
    h, items, targets = _problem()
    N = items.shape[0] - 1
    ids = torch.arange(1, N + 1)
    zeros_p, zeros_c = torch.zeros(len(targets)), torch.zeros(N)
    sampled = sampled_softmax_ce(h, items[targets], items[ids], targets, ids, zeros_p, zeros_c)
    g_h, g_items = torch.autograd.grad(sampled, (h, items))
    full = full_softmax_ce(h, items, targets)
    f_h, f_items = torch.autograd.grad(full, (h, items))
    assert float(sampled) == pytest.approx(float(full), rel=1e-6)
    assert torch.allclose(g_h, f_h, atol=1e-6) and torch.allclose(g_items, f_items, atol=1e-6)


def test_uniform_correction_is_a_constant_shift_so_the_loss_is_unchanged():
    h, items, targets = _problem(seed=1)
    N = items.shape[0] - 1
    sampler = NegativeSampler(torch.zeros(N + 1), n_negatives=N, alpha=0.0)
    ids = torch.arange(1, N + 1)
    log_q = sampler.log_q(ids, len(targets))
    assert torch.allclose(log_q, torch.zeros(N))  # S q_j = N * (1 / N) = 1 for every item
    loss = sampled_softmax_ce(h, items[targets], items[ids], targets, ids, sampler.log_q(targets, 7), log_q)
    assert float(loss) == pytest.approx(float(full_softmax_ce(h, items, targets)), rel=1e-6)


def test_correction_for_a_popularity_proposal_is_log_expected_count():
    counts = torch.tensor([0, 3, 0, 1, 8])  # item 0 = padding
    s = NegativeSampler(counts, n_negatives=10, alpha=1.0)
    q = torch.tensor([4, 1, 2, 9], dtype=torch.float64) / 16  # (count + 1)^1, normalised over items 1..4
    ids = torch.tensor([1, 2, 3, 4])
    assert torch.allclose(s.log_q(ids, 0).double(), torch.log(10 * q), atol=1e-6)
    s_half = NegativeSampler(counts, n_negatives=10, alpha=0.5)
    q_half = torch.tensor([2, 1, math.sqrt(2), 3], dtype=torch.float64)
    q_half = q_half / q_half.sum()
    assert torch.allclose(s_half.log_q(ids, 0).double(), torch.log(10 * q_half), atol=1e-6)
    # in-batch candidates add P f_j, f the targets' frequency: 3/12 for item 1, 0 for item 2
    s_mix = NegativeSampler(counts, n_negatives=10, alpha=1.0, in_batch=True)
    expected = 10 * q + 5 * torch.tensor([3, 0, 1, 8], dtype=torch.float64) / 12
    assert torch.allclose(s_mix.log_q(ids, 5).double(), torch.log(expected), atol=1e-6)
    # the draw follows q: item 4 (q = 9/16) is drawn about 9/16 of the time, the padding never
    drawn = torch.cat([s.draw(step, torch.tensor([1])).ids for step in range(400)])
    assert drawn.min() >= 1 and drawn.max() <= 4
    assert (drawn == 4).float().mean() == pytest.approx(9 / 16, abs=0.03)


def test_accidental_hits_are_masked():
    h, items, targets = _problem(P=3, seed=2)
    ids = torch.stack([targets[0], targets[0], targets[1]])  # position 0's target drawn twice as a negative
    zeros = torch.zeros(3)
    loss = sampled_softmax_ce(h, items[targets], items[ids], targets, ids, torch.zeros(3), zeros)
    pos = (h * items[targets]).sum(-1)
    neg = h @ items[ids].T
    mask = ids[None, :] == targets[:, None]
    logits = torch.cat([pos[:, None], neg.masked_fill(mask, float("-inf"))], 1)
    manual = -torch.log_softmax(logits, 1)[:, 0].mean()
    assert float(loss) == pytest.approx(float(manual), rel=1e-6)
    # position 0 sees only item ids[2] as a negative
    p0 = -torch.log_softmax(torch.stack([pos[0], neg[0, 2]]), 0)[0]
    assert float(-torch.log_softmax(logits[0], 0)[0]) == pytest.approx(float(p0), rel=1e-6)


def test_draws_replay_by_step_and_differ_across_steps():
    s = NegativeSampler(torch.ones(101), n_negatives=32, alpha=0.0, seed=3)
    t = torch.tensor([5, 6])
    assert torch.equal(s.draw(17, t).ids, s.draw(17, t).ids)
    assert not torch.equal(s.draw(17, t).ids, s.draw(18, t).ids)
    assert not torch.equal(s.draw(17, t).ids, NegativeSampler(torch.ones(101), 32, seed=4).draw(17, t).ids)


def test_bad_sampler_settings_are_refused():
    with pytest.raises(ValueError, match="n_negatives"):
        NegativeSampler(torch.ones(5), n_negatives=0)
    with pytest.raises(ValueError, match="exponent"):
        NegativeSampler(torch.ones(5), n_negatives=2, alpha=-0.5)
