"""Bad values stop where they enter, counted and named: NaN embeddings, template-only texts, odd metadata lines,
an empty catalog, and a run evaluated against inputs rebuilt since it was trained."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml

from feature_store.encode import mask_nonfinite
from feature_store.store import FeatureStore, StoreError
from feature_store.teacher import usable_rows
from feature_store.text import render_texts
from jobs.cli import main as kdsr
from prepare.amazon import read_meta
from prepare.readers import InputError


def test_nonfinite_embeddings_are_masked_with_a_reason_and_never_stored(tmp_path):
    emb = np.array([[1.0, 2.0], [np.nan, 1.0], [np.inf, 0.0], [0.5, 0.5]], np.float32)
    mask, reasons = np.array([True, True, True, False]), ["", "", "", "no text"]
    assert mask_nonfinite(emb, mask, reasons) == 2
    assert mask.tolist() == [True, False, False, False] and np.isfinite(emb).all()
    assert reasons[1] == reasons[2] == "non-finite embedding (NaN or inf) from the model" and reasons[3] == "no text"
    store = FeatureStore.create(tmp_path / "s.zarr", ["a", "b", "c", "d"], 2, shard_size=4)
    with pytest.raises(StoreError, match=r"shard 0 row 1 \(and 0 more\) holds NaN or inf"):
        store.write_shard(0, np.array([[1, 0], [np.nan, 0], [1, 1], [0, 1]], np.float32))
    # the dissection and the teacher never count a NaN row as usable (older stores may hold one)
    block = np.array([[1.0, 0.0], [np.nan, 1.0], [0.0, 0.0]])
    assert usable_rows(block, np.ones(3, bool)).tolist() == [True, False, False]


def test_a_template_with_only_empty_fields_is_no_text():
    items = pl.DataFrame({"title": ["Lip Balm", None, "  "], "brand": ["Acme", None, None]})
    assert render_texts(items, "This product: {title}") == ["This product: Lip Balm", "", ""]
    assert render_texts(items, "{title} by {brand}") == ["Lip Balm by Acme", "", ""]
    assert render_texts(items, "no fields") == ["no fields"] * 3  # a constant template stays what it says


def test_metadata_lines_that_break_the_literal_parser_are_counted_under_skip(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'A1', 'title': 'ok'}\n{[1]: 2}\n{'asin': 'A2', 'title': 'fine'}\n")  # line 2: TypeError
    items, skipped, read = read_meta(meta, "2014", ["title"], "skip")
    assert (skipped, read, items["item"].to_list()) == (1, 3, ["A1", "A2"])
    with pytest.raises(InputError, match=r"meta.json line 2: malformed metadata, not a Python dict literal"):
        read_meta(meta, "2014", ["title"], "error")


def test_an_empty_catalog_is_refused_by_prepare_and_by_encode(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    pl.DataFrame({"user_id": [1], "item_id": [7], "timestamp": [1]}).write_parquet(empty / "inter.parquet")
    pl.DataFrame({"item_id": [7], "title": ["t"]}).write_parquet(empty / "items.parquet")
    args = [f"table.interactions={empty / 'inter.parquet'}", f"table.items={empty / 'items.parquet'}"]
    cfg = tmp_path / "p.yaml"
    raw = {"name": "tiny", "output_dir": str(tmp_path / "out"), "table": {"interactions": "x"}}
    cfg.write_text(yaml.safe_dump(raw))
    assert kdsr(["prepare", str(cfg), *args]) == 1  # 5-core leaves nothing
    err = capsys.readouterr().err
    assert "no interactions left after the filters (" in err and "kcore" in err and "Traceback" not in err
    # encode: refused before Ray starts or a model loads (the model name does not even exist)
    from toydata import catalog_only

    no_items = pl.DataFrame(schema={"item": pl.Int32, "original_id": pl.Utf8, "title": pl.Utf8})
    ds = catalog_only(tmp_path / "cat", no_items)
    code = kdsr(["encode", "configs/encode/beauty-minilm.yaml", f"dataset={ds.path}", f"output.path={tmp_path / 's'}"])
    assert code == 1 and "no items to encode (an empty catalog)" in capsys.readouterr().err


def test_evaluate_and_retention_refuse_inputs_rebuilt_since_training(toy_run, rebuilt_run, capsys):
    from trainer.features import RunError
    from trainer.retention import read_run

    run = rebuilt_run
    assert kdsr(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert "inputs differ from those the run was trained on" in err and "dataset.stats_sha256" in err
    assert not (run / "evaluate.json").exists()
    with pytest.raises(RunError, match="dataset.stats_sha256"):
        read_run(run)
    assert kdsr(["evaluate", str(toy_run)]) == 0  # the unchanged run evaluates
