"""The `kdsr` command: one subcommand per stage, each the same `main(argv)` as `python -m jobs.<stage>`.

    kdsr prepare  configs/prepare/beauty.yaml   [key.sub=value ...]
    kdsr encode   configs/encode/beauty-minilm.yaml
    kdsr dissect  configs/dissect/beauty-minilm.yaml
    kdsr train    configs/train/beauty-sasrec-kd.yaml
    kdsr evaluate runs/train/beauty-sasrec-kd
    kdsr recommend runs/train/beauty-sasrec-kd [k=20 histories=users.csv ...]
    kdsr export   runs/train/beauty-sasrec-kd
    kdsr serve    runs/train/beauty-sasrec-kd [port=8000 replicas=2]
    kdsr pipeline configs/pipeline/beauty-minilm.yaml

Exit codes (every stage): 0 done, 2 bad usage or config, 1 a known failure (one line on stderr).
"""

from __future__ import annotations

import sys

from jobs.stages import STAGES, entry_point


def usage() -> str:
    width = max(map(len, STAGES))
    rows = "\n".join(f"  {name:<{width}}  {s.summary}" for name, s in STAGES.items())
    return f"usage: kdsr STAGE CONFIG [key.sub=value ...]\n\nstages:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in {"-V", "--version"}:
        from kdsr import __version__

        print(__version__)
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"kdsr: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(entry_point(stage)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
