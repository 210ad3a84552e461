"""`kdsr encode CONFIG [key=value ...]`: embed a prepared dataset's items into a Zarr feature store.

    kdsr encode configs/encode/beauty-minilm.yaml                      # embedded local Ray
    kdsr encode configs/encode/beauty-minilm.yaml ray.address=auto     # join a running cluster
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.encode configs/encode/llm-8bit.yaml

Under `ray job submit` the job joins that cluster by itself (RAY_ADDRESS is set for it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from kdsr.config import save_config
from kdsr.entry import run_stage


def main(argv: list[str] | None = None) -> int:
    from feature_store.config import EncodeConfig
    from feature_store.encode import run_encode
    from feature_store.models import ModelError
    from feature_store.planner import PlanError
    from feature_store.store import StoreError
    from feature_store.text import TemplateError
    from kdsr.dataset import DatasetError

    def keep_config(cfg: EncodeConfig) -> None:
        if "://" not in cfg.output.path:
            save_config(cfg, Path(cfg.output.path), name="encode-config.yaml")

    return run_stage(
        "encode",
        __doc__,
        argv,
        EncodeConfig,
        run_encode,
        (StoreError, ModelError, DatasetError, TemplateError, PlanError),
        after=keep_config,
    )


if __name__ == "__main__":
    sys.exit(main())
