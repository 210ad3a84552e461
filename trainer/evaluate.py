"""Re-evaluate a saved run from its selected checkpoint (best/model.safetensors), with the run's own config.

    kdsr evaluate runs/train/beauty-sasrec-kd [eval.exclude_history=true ...]
    python -m trainer.evaluate RUN_DIR [key=value ...]

Overrides may change only the evaluation and how it runs (ALLOWED: `eval.*`, `device`, `num_workers`,
`progress`); the result goes to RUN_DIR/evaluate.json (metrics.json, the training record, is left alone) and
is printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kdsr.config import ConfigError, load_config
from trainer.config import TrainConfig
from trainer.train import TrainRecipe

ALLOWED = ("eval.", "device=", "num_workers=", "progress=")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv else 2
    run = Path(argv[0])
    bad = [o for o in argv[1:] if not o.startswith(ALLOWED)]
    if bad:
        names = ", ".join(a + "*" if a.endswith(".") else a.rstrip("=") for a in ALLOWED)
        raise ConfigError(f"kdsr evaluate: only {names} may be overridden, got {bad}")
    # stop_after/resume off: evaluating must neither resume training nor touch its checkpoints
    cfg = load_config(TrainConfig, run / "config.yaml", [*argv[1:], "resume=false", "stop_after=null"])
    recipe = TrainRecipe(cfg)
    recipe.setup(write_config=False)
    recipe.load_best()
    result = {
        "run": str(run),
        "ranking": recipe.ranking_label,
        "exclude_history": cfg.eval.exclude_history,
        **{split: recipe.evaluate(split) for split in ("valid", "test")},
    }
    if recipe.accelerator.is_main_process:
        (run / "evaluate.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    recipe.accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
