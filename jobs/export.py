"""`kdsr export RUN_DIR [key=value ...]`: a trained run's item tables as Zarr feature stores.

    kdsr export runs/train/beauty-sasrec-kd                        # -> RUN_DIR/export/{scoring,id,<modality>}.zarr
    kdsr export runs/train/beauty-sasrec-kd tables=[scoring] dtype=float16 hf_dataset=true

Each store is a `feature_store.store.FeatureStore` in the prepared dataset's item order (row r = item r + 1)
with provenance (run, config hash, weights hash, table). Re-running resumes; keys: docs/CONFIG.md, `export`.
"""

from __future__ import annotations

import sys

from kdsr.entry import run_dir_loader, run_stage
from trainer.use_config import ExportConfig


def run(cfg: ExportConfig) -> dict:
    from trainer.export import run_export

    return run_export(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("export", __doc__, argv, run_dir_loader(ExportConfig), run)


if __name__ == "__main__":
    sys.exit(main())
