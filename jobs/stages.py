"""The stages the `kdsr` command knows: name, one-line summary, entry-point module and config schema.

One registry for the CLI's dispatch, its help text, the config reference (docs/CONFIG.md) and the test that
loads every shipped config. Schemas and modules are named as strings and imported on use, so `kdsr --help`
does not import torch or Ray.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    module: str  # jobs.<module>, whose main(argv) -> exit code runs the stage
    schema: str | None  # "module:Class" of the config it reads; None: it reads a run's saved config


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "prepare",
            "turn interactions + item tables into a clean, split, ID-mapped dataset",
            "jobs.prepare",
            "prepare.config:PrepareConfig",
        ),
        Stage(
            "import",
            "import an existing feature matrix (.npy, .feat1CLS, Parquet column) into a feature store",
            "jobs.import_features",
            "feature_store.config:ImportConfig",
        ),
        Stage(
            "encode",
            "embed an item catalog with Hugging Face encoders on Ray into a Zarr feature store",
            "jobs.encode",
            "feature_store.config:EncodeConfig",
        ),
        Stage(
            "dissect",
            "reduce features, cluster dimensions into facets, fit the correlation-type codebook",
            "jobs.dissect",
            "dissect.config:DissectConfig",
        ),
        Stage(
            "train",
            "train a sequential recommender with correlation distillation (Accelerate)",
            "jobs.train",
            "trainer.config:TrainConfig",
        ),
        Stage(
            "sweep",
            "many trainings on Ray Tune: each arm's configuration chosen on validation, its test read once",
            "jobs.sweep",
            "trainer.sweep:SweepConfig",
        ),
        Stage("evaluate", "re-evaluate a saved run with full ranking", "jobs.evaluate", None),
        Stage(
            "recommend",
            "top-K items per user from a trained run, in original IDs, as Parquet part files",
            "jobs.recommend",
            "trainer.use_config:RecommendConfig",
        ),
        Stage(
            "export",
            "a trained run's item tables (scoring, ID, modality) as Zarr feature stores",
            "jobs.export",
            "trainer.use_config:ExportConfig",
        ),
        Stage(
            "serve",
            "a trained run as an HTTP endpoint on Ray Serve (POST /recommend, GET /health)",
            "jobs.serve",
            "trainer.use_config:ServeConfig",
        ),
        Stage(
            "pipeline",
            "prepare -> encode -> dissect -> train (several variants) -> report, cached stage by stage",
            "jobs.pipeline",
            "jobs.pipeline:PipelineConfig",
        ),
    )
}

# Stages with a config schema of their own, i.e. a configs/<stage>/ folder of YAML files.
SCHEMAS: dict[str, str] = {name: s.schema for name, s in STAGES.items() if s.schema}


def schema_for(stage: str) -> type:
    if stage not in SCHEMAS:
        known = ", ".join(sorted(SCHEMAS))
        raise KeyError(f"no config schema registered for stage {stage!r} (known: {known}); add it to jobs/stages.py")
    module, _, name = SCHEMAS[stage].partition(":")
    return getattr(importlib.import_module(module), name)


def entry_point(stage: str):
    """The stage's `main(argv) -> int`."""
    return importlib.import_module(STAGES[stage].module).main
