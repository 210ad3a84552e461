"""Stage name -> its config schema, as "module:ClassName" strings imported lazily (no heavy imports at
startup). The config test loads every configs/<stage>/*.yaml with the schema registered here, so a stage
that ships configs must register its schema."""

from __future__ import annotations

import importlib

SCHEMAS: dict[str, str] = {
    "prepare": "prepare.config:PrepareConfig",
    "import": "feature_store.config:ImportConfig",
    "encode": "feature_store.config:EncodeConfig",
    "dissect": "dissect.config:DissectConfig",
    "train": "trainer.config:TrainConfig",
    "pipeline": "jobs.pipeline:PipelineConfig",
}


def schema_for(stage: str) -> type:
    if stage not in SCHEMAS:
        raise KeyError(
            f"no config schema registered for stage {stage!r} (known: {', '.join(sorted(SCHEMAS))}); add it to jobs/stages.py"
        )
    module, _, name = SCHEMAS[stage].partition(":")
    return getattr(importlib.import_module(module), name)
