"""The feature store's reader/writer contract as the encoder and trainer use it."""

from __future__ import annotations

import numpy as np
import pytest

from feature_store.store import FeatureStore, StoreError

IDS = [f"B{i:04d}" for i in range(10)]


def _filled(path, dtype="float32"):
    store = FeatureStore.create(path, IDS, 3, dtype=dtype, shard_size=4, attrs={"model": "m"})
    rng = np.random.default_rng(0)
    data = rng.normal(size=(10, 3)).astype(np.float32)
    for s in store.pending_shards():
        a, b = store.shard_rows(s)
        mask = np.ones(b - a, bool)
        errors = [""] * (b - a)
        if s == 1:
            mask[1], errors[1] = False, "unreadable image x.jpg"
        store.write_shard(s, data[a:b], mask, errors)
    data[5] = 0  # the masked row is stored as zeros
    return store, data


def test_roundtrip_rows_mask_errors_and_provenance(tmp_path):
    store, data = _filled(tmp_path / "s")
    again = FeatureStore.open(tmp_path / "s")
    assert again.is_complete() and again.pending_shards() == []
    assert again.item_ids().tolist() == IDS
    np.testing.assert_array_equal(again.read_all(), data)
    np.testing.assert_array_equal(again.read_rows([7, 0, 7, 3]), data[[7, 0, 7, 3]])  # any order, duplicates
    assert again.mask().tolist() == [True] * 5 + [False] + [True] * 4
    assert again.errors() == [(5, "unreadable image x.jpg")]
    assert again.attrs["model"] == "m" and again.attrs["shard_size"] == 4 and "created" in again.attrs
    with pytest.raises(StoreError, match="out of range"):
        again.read_rows([10])


def test_rewriting_a_shard_is_idempotent_and_resume_sees_pending(tmp_path):
    store = FeatureStore.create(tmp_path / "s", IDS, 2, shard_size=4)
    assert store.pending_shards() == [0, 1, 2]
    store.write_shard(1, np.full((4, 2), 3.0))
    first = store.read_all().copy()
    store.write_shard(1, np.full((4, 2), 3.0))  # a Ray retry of the same shard
    np.testing.assert_array_equal(store.read_all(), first)
    assert store.pending_shards() == [0, 2] and not store.is_complete()
    with pytest.raises(StoreError, match="expects"):
        store.write_shard(2, np.zeros((4, 2)))  # the last shard has 2 rows


def test_check_items_refuses_other_order_count_or_incomplete(tmp_path):
    store, _ = _filled(tmp_path / "s")
    store.check_items(IDS)
    with pytest.raises(StoreError, match="order differs .* first at row 0"):
        store.check_items(IDS[::-1])
    with pytest.raises(StoreError, match="has 10 items but the prepared dataset has 9"):
        store.check_items(IDS[:9])
    partial = FeatureStore.create(tmp_path / "p", IDS, 2, shard_size=4)
    with pytest.raises(StoreError, match="not written yet"):
        partial.check_items(IDS)


def test_float16_overflow_is_refused(tmp_path):
    store = FeatureStore.create(tmp_path / "s", IDS[:4], 2, dtype="float16", shard_size=4)
    with pytest.raises(StoreError, match="float16"):
        store.write_shard(0, np.array([[1e5, 0]] * 4))
    store.write_shard(0, np.array([[0.5, -0.25]] * 4))
    assert store.read_all().tolist() == [[0.5, -0.25]] * 4


def test_url_store_through_fsspec():
    store, data = _filled("memory://kdsr-test/beauty/text/m")
    np.testing.assert_array_equal(FeatureStore.open("memory://kdsr-test/beauty/text/m").read_rows([9]), data[[9]])


def test_open_errors_name_the_path(tmp_path):
    with pytest.raises(StoreError, match="no feature store here"):
        FeatureStore.open(tmp_path / "nope")
