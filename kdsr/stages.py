"""Stage name -> its config schema, as "module:ClassName" strings imported lazily (no heavy imports at
startup). The config test loads every configs/<stage>/*.yaml with the schema registered here, so a stage
that ships configs must register its schema."""
from __future__ import annotations

import importlib

SCHEMAS: dict[str, str] = {
    "prepare": "kdsr.prepare.config:PrepareConfig",
}


def schema_for(stage: str) -> type:
    if stage not in SCHEMAS:
        raise KeyError(f"no config schema registered for stage {stage!r} (known: {', '.join(sorted(SCHEMAS))}); add it to kdsr/stages.py")
    module, _, name = SCHEMAS[stage].partition(":")
    return getattr(importlib.import_module(module), name)
