"""Training batches: the length-bucketing sampler is a deterministic permutation with aligned batches."""

import numpy as np

from trainer.data import EpochSampler


def test_bucketed_sampler_is_a_seeded_permutation_with_short_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 51, size=1000)
    s = EpochSampler(1000, seed=1, batch_size=32, lengths=lengths, chunk_batches=4)
    s.set_epoch(0)
    a = list(s)
    assert sorted(a) == list(range(1000))
    assert a == list(s)  # same (seed, epoch): same order, so a resume can skip batches exactly
    s.set_epoch(1)
    assert list(s) != a
    batches = [np.array(a[i : i + 32]) for i in range(0, 1000, 32)]
    # the short last batch (1000 % 32 = 8 samples) is the last one, so batch boundaries stay aligned
    assert len(batches[-1]) == 8
    # padding waste: batches pad to their own max length, far below padding every batch to ~50
    unbucketed = list(EpochSampler(1000, seed=1))
    assert sorted(unbucketed) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(
        len(b) * lengths[b].max() for b in (np.array(unbucketed[i : i + 32]) for i in range(0, 1000, 32))
    )
    assert padded < 0.7 * random_padded
