"""Where the shared real datasets live: `$KDSR_DATA_DIR`, else `../shared/data` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    env = os.environ.get("KDSR_DATA_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")
