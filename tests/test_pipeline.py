"""`kdsr pipeline` end to end on ml-100k with the real MiniLM: every stage runs, the report holds the
measured table, and a second run skips every stage because nothing changed."""

from __future__ import annotations

import json

import pytest
import yaml

from jobs.cli import main as kdsr


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_caches(tmp_path, data_dir, capsys):
    out = tmp_path / "pipe"
    cfg = {
        "name": "ml-100k-smoke",
        "out_dir": str(out),
        "prepare": {"config": "configs/prepare/ml-100k.yaml", "overrides": [f"output_dir={tmp_path}/data"]},
        "encode": {
            "config": "configs/encode/beauty-minilm.yaml",
            "overrides": [f"output.path={tmp_path}/minilm", "encoder.template={movie_title}"],
        },
        "dissect": {
            "config": "configs/dissect/beauty-minilm.yaml",
            "overrides": ["codebook.random_pairs=20000", "codebook.cooccur_pairs=20000", "codebook.n_codes=8"],
        },
        "train": [
            {"label": "ID only", "config": "configs/train/beauty-sasrec.yaml", "overrides": [f"out_dir={out}/id"]},
            {"label": "distilled", "config": "configs/train/beauty-sasrec-kd.yaml", "overrides": [f"out_dir={out}/kd"]},
        ],
        "train_overrides": ["epochs=2", "max_steps=4", "progress=false", "model.hidden=32", "num_workers=0"],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))

    assert kdsr(["pipeline", str(path)]) == 0
    first = capsys.readouterr().err
    assert "cached" not in first
    # each stage's own lines and its summary, as `kdsr <stage>` prints them
    assert "prepare.run: ml-100k: 943 users, " in first and "prepare: done in" in first
    assert '"n_users": 943' in first and "encode: done in" in first and "train:distilled: done in" in first
    report = (out / "report.md").read_text()
    assert "| ID only |" in report and "| distilled |" in report
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["label"] for r in rows] == ["ID only", "distilled"]
    assert all(0 <= r["ndcg@10"] <= r["hr@10"] <= 1 for r in rows)  # measured, in range
    assert rows[0]["retention"] == {}  # ID only: no modality table
    row_cos, pair_r = rows[1]["retention"]["text"]  # 8 slow steps barely move V^m away from the features
    assert 0.95 < row_cos <= 1.0 + 1e-6 and 0.95 < pair_r <= 1.0 + 1e-6
    assert f"| text {pair_r:.2f} |" in report
    # the report names the winner on validation, not on test
    best = max(rows, key=lambda r: r["valid_ndcg@10"])
    assert f"On validation, **{best['label']}** won: NDCG@10 {best['valid_ndcg@10']:.4f}" in report
    assert (out / "training_curves.png").stat().st_size > 10_000
    # the distilled run read the dissection this pipeline built, not the path in the shipped config
    kd_cfg = yaml.safe_load((out / "kd" / "config.yaml").read_text())
    assert kd_cfg["modalities"][0]["features"] == str(tmp_path / "minilm.dissect.zarr")

    assert kdsr(["pipeline", str(path)]) == 0
    second = capsys.readouterr().err
    for stage in ("prepare", "encode", "dissect", "train:ID only", "train:distilled"):
        assert f"jobs.pipeline: {stage}: cached" in second
    assert 'jobs.pipeline: prepare: {"name": "ml-100k", "n_users": 943' in second

    # a new dissection re-runs what reads it, from scratch (never resuming the old checkpoint), and only that
    cfg["dissect"]["overrides"].append("seed=1")
    path.write_text(yaml.safe_dump(cfg))
    assert kdsr(["pipeline", str(path)]) == 0
    third = capsys.readouterr().err
    for stage in ("prepare", "encode", "train:ID only"):
        assert f"jobs.pipeline: {stage}: cached" in third
    for stage in ("dissect", "train:distilled"):
        assert f"jobs.pipeline: {stage}: running" in third
    assert "resumed from" not in third
