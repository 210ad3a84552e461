"""Training batches: the length-bucketing sampler is a deterministic permutation with aligned batches.
Evaluation cases: one per user, or one next-item case per item of the split (the released KDSR protocol)."""

import json

import numpy as np
import polars as pl

from trainer.data import EpochSampler, UserSequences


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


def _seqs(*users: tuple[list[int], list[str]]) -> UserSequences:
    return UserSequences(
        [np.array(items, np.int64) for items, _ in users], [np.array(splits) for _, splits in users], n_items=20
    )


def _as_lists(hist, rel) -> list[tuple[list[int], list[int]]]:
    return [(h.tolist(), r.tolist()) for h, r in zip(hist, rel)]


def test_eval_cases_per_item_grow_the_history_one_test_item_at_a_time():
    seqs = _seqs(
        ([1, 2, 3, 4, 5], ["train", "train", "valid", "test", "test"]),
        ([6, 7, 8], ["train", "train", "valid"]),  # no test row: skipped
        ([9, 10], ["test", "test"]),  # the first test item has no history: that case is skipped
    )
    hist, rel, skipped = seqs.eval_cases("test", per_item=True)
    assert _as_lists(hist, rel) == [([1, 2, 3], [4]), ([1, 2, 3, 4], [5]), ([9], [10])]
    assert skipped == 2
    hist, rel, skipped = seqs.eval_cases("valid", per_item=True)
    assert _as_lists(hist, rel) == [([1, 2], [3]), ([6, 7], [8])]
    assert skipped == 1
    # per_user (the default) is unchanged: one case per user, every test item relevant at once
    hist, rel, skipped = seqs.eval_cases("test")
    assert _as_lists(hist, rel) == [([1, 2, 3], [4, 5])]
    assert skipped == 2  # the user without test rows, the user whose first test item has no history


def test_training_with_per_item_cases_labels_the_released_protocol(tmp_path):
    from conftest import _train

    from prepare.split import ratio
    from toydata import synthetic

    data = synthetic(tmp_path / "data", n_users=30, n_items=30, min_len=5, max_len=12)
    inter = pl.read_parquet(data / "interactions.parquet")
    split, dropped, _ = ratio(inter.drop("split"), test_ratio=0.2, valid_ratio=0.1)  # as kdsr prepare's ratio split
    assert dropped["users.too_short_for_split"] == 0
    split.select(inter.columns).write_parquet(data / "interactions.parquet")
    n_test = split.filter(pl.col("split") == "test").height
    n_valid = split.filter(pl.col("split") == "valid").height
    assert n_test > 30  # users with >= 10 interactions have two test items

    model = {"hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 8}
    run = _train(tmp_path, data, model=model, optim={"batch_size": 16}, eval={"cases": "per_item", "ks": [5, 10]})
    m = json.loads((run / "metrics.json").read_text())
    assert m["counts"]["users"] == 30
    assert m["counts"]["eval_cases"] == {"valid": n_valid, "test": n_test}
    assert "eval_users" not in m["counts"]  # cases are not users here
    assert m["counts"]["eval_rows_gathered"] == {"valid": n_valid, "test": n_test}
    assert m["counts"]["eval_users_skipped"] == {"valid": 0, "test": 0}
    assert "the released KDSR protocol" in m["protocol"]["ranking"]
    assert m["protocol"]["ranking"].startswith("full ranking over all items, one next-item case per item")
