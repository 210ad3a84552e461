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
import time

from kdsr.config import ConfigError, load_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kdsr prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML under configs/prepare/")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument(
        "--download", metavar="CATEGORY", help="fetch this Amazon category's official dumps first (amazon source)"
    )
    args = parser.parse_args(argv)

    from prepare.amazon import DownloadError, download
    from prepare.config import PrepareConfig
    from prepare.readers import InputError
    from prepare.run import prepare

    overrides = list(args.overrides)
    if args.download:
        overrides += [f"amazon.category={args.download}", "amazon.reviews=null", "amazon.meta=null"]
    start = time.perf_counter()
    try:
        if args.download and not _has_amazon_section(args.config):
            raise ConfigError(f"{args.config}: --download needs an `amazon:` source section")
        cfg = load_config(PrepareConfig, args.config, overrides)
        if args.download:
            for kind, path in download(cfg.amazon).items():
                print(f"{kind}: {path}")
        out = prepare(cfg)
    except (ConfigError, InputError, DownloadError) as e:
        print(f"kdsr prepare: {e}", file=sys.stderr)
        return 1
    print(summary(out, time.perf_counter() - start))
    return 0


def _has_amazon_section(path: str) -> bool:
    """Peek at the YAML (an unreadable file is left for load_config to report)."""
    import yaml

    try:
        raw = yaml.safe_load(open(path))
    except (OSError, yaml.YAMLError):
        return True
    return isinstance(raw, dict) and "amazon" in raw


def summary(out, seconds: float) -> str:
    from kdsr.dataset import PreparedDataset

    s = PreparedDataset.open(out).stats
    lines = [
        f"{s['name']}: {s['n_users']:,} users, {s['n_items']:,} items, {s['n_interactions']:,} interactions "
        f"(protocol {s['protocol']}, sequence length mean {s['seq_len']['mean']:.1f}, max {s['seq_len']['max']})",
        "split: " + ", ".join(f"{k} {v:,}" for k, v in s["split"].items()),
    ]
    dropped = {k: v for k, v in s["dropped"].items() if v}
    lines.append("dropped: " + (", ".join(f"{k} {v:,}" for k, v in dropped.items()) if dropped else "nothing"))
    lines.append(f"wrote {out} in {seconds:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
