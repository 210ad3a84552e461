"""The loss terms against brute-force loops over sequences and pairs, on the real teacher's mask layout."""

import math

import pytest
import torch
from torch.nn import functional as F

from trainer.losses import CodeLoss, HolisticLoss, full_softmax_ce, sampled_bce


def batch(B=3, L=6, d=8, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, L, d, generator=g)
    items = torch.randint(1, 9, (B, L), generator=g)
    items[0, 4:] = 0  # padding
    items[1, 1] = items[1, 3]  # a repeated item: not a pair
    items[2, 1:] = 0  # a single item: no pairs at all
    valid = items > 0
    pair_mask = valid[:, :, None] & valid[:, None, :] & (items[:, :, None] != items[:, None, :])
    sim = torch.rand(B, L, L, generator=g) * 2 - 1
    sim = (sim + sim.transpose(1, 2)) / 2
    codes = torch.randint(0, K, (B, L, L), generator=g)
    codes = torch.triu(codes) + torch.triu(codes, 1).transpose(1, 2)  # symmetric like the teacher's
    return v, sim, codes, pair_mask


def test_holistic_frobenius_matches_brute_force():
    v, sim, _, pm = batch()
    loss = HolisticLoss(8, proj_dim=4, tau=1.5)
    h = loss.w2(loss.w1(v))
    per_seq = []
    for b in range(v.size(0)):
        if not pm[b].any():
            continue  # a sequence without valid pairs adds nothing
        total = 0.0
        for i in range(v.size(1)):
            for j in range(v.size(1)):
                if pm[b, i, j]:
                    s = F.cosine_similarity(h[b, i], h[b, j], dim=0)
                    total += float((s - sim[b, i, j]).detach()) ** 2
        per_seq.append(math.sqrt(total) / 1.5)
    assert len(per_seq) == 2 and v.size(0) == 3
    # the paper's mean: over all B sequences of the batch
    assert float(loss(v, sim, pm).detach()) == pytest.approx(sum(per_seq) / 3, rel=1e-5)
    # ours, labelled: over the sequences that have a pair
    loss.mean = "sequences_with_pairs"
    assert float(loss(v, sim, pm).detach()) == pytest.approx(sum(per_seq) / 2, rel=1e-5)


def test_holistic_kl_matches_brute_force():
    v, sim, _, pm = batch(seed=1)
    loss = HolisticLoss(8, proj_dim=4, tau=1.5, kind="kl")
    s = loss.student_sim(v)
    kls = []
    for b in range(v.size(0)):
        for i in range(v.size(1)):
            js = [j for j in range(v.size(1)) if pm[b, i, j]]
            if not js:
                continue
            p = torch.softmax(sim[b, i, js] / 1.5, 0)
            logq = torch.log_softmax(s[b, i, js] / 1.5, 0)
            kls.append(float((p * (p.log() - logq)).sum()))
    assert float(loss(v, sim, pm)) == pytest.approx(sum(kls) / len(kls), rel=1e-5)


def test_code_loss_matches_brute_force_over_all_ordered_pairs():
    v, _, codes, pm = batch(seed=2)
    loss = CodeLoss(8, n_codes=5)
    ces = []
    for b, i, j in pm.nonzero().tolist():  # every ordered pair, as the definition reads
        logits = loss.mlp((v[b, i] - v[b, j]).abs())
        ces.append(float(F.cross_entropy(logits[None], codes[b, i, j][None])))
    assert float(loss(v, codes, pm)) == pytest.approx(sum(ces) / len(ces), rel=1e-5)


def test_code_loss_in_chunks_equals_one_pass_with_the_same_gradients():
    v, _, codes, pm = batch(seed=3)
    v.requires_grad_(True)
    whole, chunked = CodeLoss(8, 5), CodeLoss(8, 5, chunk=3)
    chunked.load_state_dict(whole.state_dict())
    assert int(torch.triu(pm, 1).sum()) > 3 * 2  # several chunks really run
    grads = []
    for m in (whole, chunked):
        loss = m(v, codes, pm)
        grads.append((float(loss), torch.autograd.grad(loss, [v, *m.parameters()])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_no_pairs_gives_zero_loss_and_finite_zero_gradients():
    v, sim, codes, pm = batch()
    v.requires_grad_(True)
    none = torch.zeros_like(pm)
    hol, code = HolisticLoss(8, 4), CodeLoss(8, 5)
    total = hol(v, sim, none) + code(v, codes, none)
    total.backward()
    assert float(total) == 0.0
    for p in [*hol.parameters(), *code.parameters()]:
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


def test_frobenius_gradient_is_finite_when_student_equals_teacher():
    v, _, _, pm = batch()
    hol = HolisticLoss(8, 4)
    target = hol.student_sim(v).detach()
    v.requires_grad_(True)
    hol(v, target, pm).backward()
    assert torch.isfinite(v.grad).all()


def test_full_softmax_ce_excludes_padding_and_matches_manual():
    g = torch.Generator().manual_seed(0)
    h, items = torch.randn(4, 6, generator=g), torch.randn(11, 6, generator=g)
    targets = torch.tensor([1, 5, 10, 3])
    manual = F.cross_entropy(h @ items[1:].T, targets - 1)  # softmax over items 1..N only
    assert float(full_softmax_ce(h, items, targets)) == pytest.approx(float(manual), rel=1e-6)


def test_chunked_full_softmax_ce_matches_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    h, items = torch.randn(50, 6, generator=g, requires_grad=True), torch.randn(11, 6, generator=g, requires_grad=True)
    targets = torch.randint(1, 11, (50,), generator=g)
    whole = full_softmax_ce(h, items, targets)
    gh, gi = torch.autograd.grad(whole, (h, items))
    chunked = full_softmax_ce(h, items, targets, chunk=7)  # 8 chunks, the last one short
    ch, ci = torch.autograd.grad(chunked, (h, items))
    assert float(chunked) == pytest.approx(float(whole), rel=1e-6)
    assert torch.allclose(ch, gh, atol=1e-6) and torch.allclose(ci, gi, atol=1e-6)


def test_sampled_bce_matches_manual():
    g = torch.Generator().manual_seed(0)
    h, items = torch.randn(3, 4, generator=g), torch.randn(8, 4, generator=g)
    targets, negs = torch.tensor([1, 2, 3]), torch.tensor([[4, 5], [6, 7], [1, 2]])
    pos = -F.logsigmoid((h * items[targets]).sum(-1)).mean()
    neg = -F.logsigmoid(-(h[:, None] * items[negs]).sum(-1)).mean()
    assert float(sampled_bce(h, items[targets], items[negs])) == pytest.approx(float(pos + neg), rel=1e-6)
