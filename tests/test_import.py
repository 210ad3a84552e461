"""Bring-your-own features: the real MISSRec CLIP matrices of Scientific-mm, plus .npy and Parquet sources."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from feature_store.config import ImportConfig, OutputConfig
from feature_store.importer import FeatureImportError, run_import
from feature_store.store import FeatureStore, StoreError
from jobs import import_features
from toydata import catalog_only


def _write_dataset(path, ids: list[str]):
    items = pl.DataFrame({"item": pl.Series(range(1, len(ids) + 1), dtype=pl.Int32), "original_id": ids})
    return catalog_only(path, items)


@pytest.fixture(scope="module")
def sci(data_dir):
    mm = data_dir / "scientific-mm"
    index = dict(line.split("\t") for line in (mm / "Scientific.item2index").read_text().splitlines())
    raw = np.fromfile(mm / "Scientific.feat3CLS", dtype="<f4").reshape(-1, 512)
    return mm, {k: int(v) for k, v in index.items()}, raw


def test_scientific_mm_clip_image_import_reorders_to_the_dataset(tmp_path, sci):
    mm, index, raw = sci
    assert raw.shape == (1585, 512) and len(index) == 1585
    # a dataset whose item order (sorted ASINs) differs from the matrix rows (item2index order)
    ds = _write_dataset(tmp_path / "sci", sorted(index))
    summary = import_features.main(
        [
            "configs/import/scientific-mm-clip-image.yaml",
            f"dataset={ds.path}",
            f"output.path={tmp_path / 'store'}",
            f"source={mm / 'Scientific.feat3CLS'}",
            f"ids={mm / 'Scientific.item2index'}",
        ]
    )
    assert summary == 0
    store = FeatureStore.open(tmp_path / "store")
    store.check_items(ds.item_original_ids())  # the trainer's check passes
    order = [index[a] for a in ds.item_original_ids()]
    np.testing.assert_array_equal(store.read_all(), raw[order])
    assert store.mask().all() and store.attrs["import_summary"]["imported"] == 1585
    assert (
        store.attrs["source_hash"].startswith("sha256:")
        and store.attrs["provenance_model"] == "openai/clip-vit-base-patch32"
    )
    # and a dataset in another order is refused with a clear message
    other = _write_dataset(tmp_path / "other", sorted(index, reverse=True))
    with pytest.raises(StoreError, match="item order differs"):
        store.check_items(other.item_original_ids())


def test_missing_and_extra_items_are_masked_and_counted(tmp_path, sci):
    mm, index, raw = sci
    keep = sorted(index)[:100] + ["NOT-AN-ASIN"]
    ds = _write_dataset(tmp_path / "sub", keep)
    cfg = ImportConfig(
        source=str(mm / "Scientific.feat1CLS"),
        dim=512,
        ids=str(mm / "Scientific.item2index"),
        dataset=str(ds.path),
        output=OutputConfig(path=str(tmp_path / "s"), dtype="float16"),
    )
    summary = run_import(cfg)
    assert summary["imported"] == 100 and summary["missing_in_source"] == 1
    assert summary["source_rows_not_in_dataset"] == 1485
    store = FeatureStore.open(tmp_path / "s")
    assert store.errors() == [(100, "not in source features")]
    text = np.fromfile(mm / "Scientific.feat1CLS", dtype="<f4").reshape(-1, 512)
    np.testing.assert_allclose(store.read_rows([3])[0], text[index[keep[3]]], rtol=1e-3, atol=1e-3)  # float16


def test_npy_and_parquet_sources(tmp_path):
    m = np.arange(12, dtype=np.float32).reshape(4, 3)
    m[2, 1] = np.nan
    np.save(tmp_path / "f.npy", m)
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\n")
    run_import(
        ImportConfig(
            source=str(tmp_path / "f.npy"), ids=str(tmp_path / "ids.txt"), output=OutputConfig(path=str(tmp_path / "n"))
        )
    )
    store = FeatureStore.open(tmp_path / "n")
    assert store.item_ids().tolist() == list("abcd") and store.errors() == [(2, "non-finite values in source row")]
    pl.DataFrame({"asin": ["x", "y"], "vec": [[1.0, 2.0], [3.0, 4.0]]}).write_parquet(tmp_path / "f.parquet")
    run_import(
        ImportConfig(
            source=str(tmp_path / "f.parquet"),
            column="vec",
            id_column="asin",
            output=OutputConfig(path=str(tmp_path / "p")),
        )
    )
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "p").read_all(), [[1, 2], [3, 4]])


def test_bad_sources_give_clear_errors(tmp_path, sci):
    mm, _, _ = sci
    out = OutputConfig(path=str(tmp_path / "x"))
    with pytest.raises(FeatureImportError, match="not a whole number of rows of dim 500"):
        run_import(
            ImportConfig(
                source=str(mm / "Scientific.feat3CLS"), dim=500, ids=str(mm / "Scientific.item2index"), output=out
            )
        )
    (tmp_path / "bad.idx").write_text("A\t0\nB\tzero\n")
    np.save(tmp_path / "f.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(FeatureImportError, match=r"bad.idx:2: expected `ID<TAB>row`"):
        run_import(ImportConfig(source=str(tmp_path / "f.npy"), ids=str(tmp_path / "bad.idx"), output=out))
    with pytest.raises(FeatureImportError, match="item order is unknown"):
        run_import(ImportConfig(source=str(tmp_path / "f.npy"), output=out))
