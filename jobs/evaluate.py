"""`kdsr evaluate RUN_DIR [key=value ...]`: re-evaluate a saved run from its selected checkpoint
(best/model.safetensors), with the run's own config.

    kdsr evaluate runs/train/beauty-sasrec-kd [eval.exclude_history=true ...]

Overrides may change only the evaluation and how it runs (`eval.*`, `device`, `num_workers`, `progress`); the
result goes to RUN_DIR/evaluate.json (metrics.json, the training record, is left alone) and is printed.
"""

from __future__ import annotations

import sys

from kdsr.entry import run_stage


def load(argv: list[str]):
    from trainer.evaluate import evaluate_config

    return evaluate_config(argv[0], argv[1:])


def run(cfg) -> dict:
    from trainer.evaluate import run_evaluate

    return run_evaluate(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, argv, load, run)


if __name__ == "__main__":
    sys.exit(main())
