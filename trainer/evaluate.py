"""Re-evaluate a saved run from its selected checkpoint (best/model.safetensors), with the run's own config.

    kdsr evaluate runs/train/beauty-sasrec-kd [eval.exclude_history=true ...]

Overrides may change only the evaluation and how it runs (ALLOWED: `eval.*`, `device`, `num_workers`,
`progress`); the result goes to RUN_DIR/evaluate.json (metrics.json, the training record, is left alone).
"""

from __future__ import annotations

import logging
from pathlib import Path

from kdsr.config import ConfigError, load_config
from kdsr.files import write_json_atomic
from trainer.config import TrainConfig
from trainer.features import compare_run_inputs
from trainer.train import TrainRecipe

log = logging.getLogger(__name__)

ALLOWED = ("eval.", "device=", "num_workers=", "progress=")


def evaluate_config(run_dir: str | Path, overrides: list[str]) -> TrainConfig:
    """The run's saved config with the allowed overrides, pointed at `run_dir` (a moved run folder works) and
    never resuming: evaluating must not touch the run's checkpoints."""
    bad = [o for o in overrides if not o.startswith(ALLOWED)]
    if bad:
        names = ", ".join(a + "*" if a.endswith(".") else a.rstrip("=") for a in ALLOWED)
        raise ConfigError(f"{run_dir}: only {names} may be overridden, got {', '.join(bad)}")
    return load_config(TrainConfig, Path(run_dir) / "config.yaml", [*overrides, f"out_dir={run_dir}", "resume=false"])


def run_evaluate(cfg: TrainConfig) -> dict:
    """Evaluate the selected checkpoint of the run in `cfg.out_dir` on valid and test; writes evaluate.json
    there and returns the same dict."""
    recipe = TrainRecipe(cfg)
    recipe.setup(write_config=False)  # opens the dataset and stores once, and takes their identity
    compare_run_inputs(Path(cfg.out_dir), recipe.state.inputs, skip="retrain, or restore the run's inputs")
    recipe.load_best()
    result = {
        "run": cfg.out_dir,
        "ranking": recipe.ranking_label,
        "exclude_history": cfg.eval.exclude_history,
        **{split: recipe.evaluate(split) for split in ("valid", "test")},
    }
    if recipe.accelerator.is_main_process:
        write_json_atomic(recipe.out / "evaluate.json", result)
    recipe.accelerator.end_training()
    log.info("test ndcg@10 %.4f hr@10 %.4f -> %s", result["test"]["ndcg@10"], result["test"]["hr@10"], recipe.out)
    return result
