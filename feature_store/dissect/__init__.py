"""Dissection: reduce features, cut their dims into facets, fit the correlation-type codebook; and the
Teacher that turns a dissection store into per-batch targets for the trainer.

Exports resolve lazily: the trainer imports only `teacher` (torch), not the fitting code's sklearn and scipy,
which would add ~150 MB to every training process.
"""
from importlib import import_module

_EXPORTS = {"DissectConfig": ".config", "default_output": ".run", "dissect": ".run", "Teacher": ".teacher",
            "TeacherTargets": ".teacher"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
