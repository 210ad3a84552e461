"""`kdsr encode CONFIG [key=value ...]`: embed a prepared dataset's items into a Zarr feature store.

    kdsr encode configs/encode/beauty-minilm.yaml                      # embedded local Ray
    kdsr encode configs/encode/beauty-minilm.yaml ray.address=auto     # join a running cluster
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.encode configs/encode/llm-8bit.yaml

Under `ray job submit` the job joins that cluster by itself (RAY_ADDRESS is set for it).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from kdsr.config import ConfigError, load_config, save_config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from feature_store.config import EncodeConfig
    from feature_store.encode import run_encode
    from feature_store.models import ModelError
    from feature_store.planner import PlanError
    from feature_store.store import StoreError
    from feature_store.text import TemplateError
    from kdsr.prepare.dataset import DatasetError

    try:
        cfg = load_config(EncodeConfig, argv[0], argv[1:])
    except ConfigError as e:
        print(f"kdsr encode: {e}", file=sys.stderr)
        return 2
    try:
        summary = run_encode(cfg)
    except (StoreError, ModelError, DatasetError, TemplateError, PlanError) as e:
        print(f"kdsr encode: error: {e}", file=sys.stderr)
        return 1
    if "://" not in cfg.output.path:
        save_config(cfg, Path(cfg.output.path), name="encode-config.yaml")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
