"""`kdsr prepare CONFIG [key.sub=value ...] [--download CATEGORY]`: build a prepared dataset folder.

    kdsr prepare configs/prepare/beauty.yaml
    kdsr prepare configs/prepare/ml-100k.yaml split.protocol=ratio output_dir=runs/data/ml-100k-ratio
    kdsr prepare configs/prepare/amazon-2023-all-beauty.yaml --download All_Beauty
    python -m jobs.prepare configs/prepare/scientific.yaml       (the same)

`--download CATEGORY` needs an `amazon:` source: it fetches the official review and metadata dumps of that
category into amazon.download_dir (unless present) and prepares them; offline it fails within seconds.
"""

from __future__ import annotations

import argparse
import sys

from kdsr.config import ConfigError, load_config
from kdsr.entry import run_stage


def load(argv: list[str]):
    from prepare.config import PrepareConfig

    parser = argparse.ArgumentParser(
        prog="kdsr prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML under configs/prepare/")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--download", metavar="CATEGORY", help="fetch this Amazon category's official dumps first")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.download:
        if not _has_amazon_section(args.config):
            raise ConfigError(f"{args.config}: --download needs an `amazon:` source section")
        overrides += [f"amazon.category={args.download}", "amazon.reviews=null", "amazon.meta=null"]
    cfg = load_config(PrepareConfig, args.config, overrides)
    return cfg, bool(args.download)


def run(loaded) -> dict:
    from prepare.amazon import download
    from prepare.run import run_prepare

    cfg, fetch = loaded
    if fetch:
        download(cfg.amazon)
    return run_prepare(cfg)


def _has_amazon_section(path: str) -> bool:
    """Peek at the YAML (an unreadable file is left for load_config to report)."""
    import yaml

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return True
    return isinstance(raw, dict) and "amazon" in raw


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", __doc__, argv, load, run)


if __name__ == "__main__":
    sys.exit(main())
