"""`kdsr encode CONFIG [key=value ...]`: embed a prepared dataset's items into a Zarr feature store.

    kdsr encode configs/encode/beauty-minilm.yaml                      # embedded local Ray
    kdsr encode configs/encode/beauty-minilm.yaml ray.address=auto     # join a running cluster
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.encode configs/encode/llm-8bit.yaml

Under `ray job submit` the job joins that cluster by itself (RAY_ADDRESS is set for it).
"""

from __future__ import annotations

import sys

from feature_store.config import EncodeConfig
from kdsr.entry import config_loader, run_stage


def run(cfg: EncodeConfig) -> dict:
    from feature_store.encode import run_encode

    return run_encode(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("encode", __doc__, argv, config_loader(EncodeConfig), run)


if __name__ == "__main__":
    sys.exit(main())
