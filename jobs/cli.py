"""The `kdsr` command: one subcommand per stage, each the same `main(argv)` as `python -m jobs.<stage>`.

kdsr prepare  configs/prepare/beauty.yaml   [key.sub=value ...]
kdsr encode   configs/encode/beauty-minilm.yaml
kdsr dissect  configs/dissect/beauty-minilm.yaml
kdsr train    configs/train/beauty-sasrec-kd.yaml
kdsr evaluate runs/train/beauty-sasrec-kd
kdsr pipeline configs/pipeline/beauty-minilm.yaml
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "prepare": "turn interactions + item tables into a clean, split, ID-mapped dataset",
    "import": "import an existing feature matrix (.npy, .feat1CLS, Parquet column) into a feature store",
    "encode": "embed an item catalog with Hugging Face encoders on Ray into a Zarr feature store",
    "dissect": "reduce features, cluster dimensions into facets, fit the correlation-type codebook",
    "train": "train a sequential recommender with correlation distillation (Accelerate)",
    "evaluate": "re-evaluate a saved run with full ranking",
    "pipeline": "prepare -> encode -> dissect -> train -> evaluate, cached stage by stage, with a report",
}


def usage() -> str:
    width = max(map(len, STAGES))
    rows = "\n".join(f"  {name:<{width}}  {doc}" for name, doc in STAGES.items())
    return f"usage: kdsr STAGE CONFIG [key.sub=value ...]\n\nstages:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from kdsr import __version__

        print(__version__)
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"kdsr: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{stage.replace('import', 'import_features')}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
