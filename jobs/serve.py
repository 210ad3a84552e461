"""`kdsr serve RUN_DIR [key=value ...]`: a trained run as an HTTP endpoint on Ray Serve, on 127.0.0.1.

    kdsr serve runs/train/beauty-sasrec-kd [port=8000 replicas=2 max_batch_size=64 unknown_items=error]
    serve run jobs.serve:app run=runs/train/beauty-sasrec-kd     # Ray's CLI; host/port from its own options
    curl -s 127.0.0.1:8000/recommend -d '{"history": ["B00004TMFE", "B0009RF9DW"], "k": 5}'
    curl -s 127.0.0.1:8000/health

Bad requests get a 400 (body) or 422 (a field) with {"error": ..., "field": ...}. Keys: docs/CONFIG.md, `serve`.
"""

from __future__ import annotations

import sys

from kdsr.config import apply_overrides, expand_env, validate_config
from kdsr.entry import run_dir_loader, run_stage
from trainer.use_config import ServeConfig


def run(cfg: ServeConfig) -> dict:
    from trainer.serve import run_serve

    return run_serve(cfg)


def app(args: dict[str, str]):
    """The application builder for `serve run jobs.serve:app run=RUN_DIR [key=value ...]`."""
    from trainer.serve import build_app

    raw = expand_env(apply_overrides({}, [f"{k}={v}" for k, v in args.items()], ServeConfig))
    return build_app(validate_config(ServeConfig, raw, source="serve run arguments"))


def main(argv: list[str] | None = None) -> int:
    return run_stage("serve", __doc__, argv, run_dir_loader(ServeConfig), run)


if __name__ == "__main__":
    sys.exit(main())
