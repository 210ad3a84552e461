"""The one shape of every stage's entry point: parse -> load the typed config -> run -> report.

    kdsr <stage> CONFIG [key.sub=value ...]      (= python -m jobs.<stage> ...)

Exit codes, the same for every stage:
    0  done; the stage's summary is printed as one JSON line on stdout
    2  bad usage or config (unknown key, wrong type, unreadable file, a refused resume): one line on stderr
    1  a known failure of the stage (`KdsrError`, a missing input file): one line on stderr
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from kdsr.config import ConfigError, apply_overrides, expand_env, load_config, validate_config
from kdsr.errors import KdsrError
from kdsr.logs import setup_logging


def config_loader(schema: type) -> Callable[[list[str]], Any]:
    """The usual `load`: argv = CONFIG [key=value ...] validated into `schema`."""

    def load(argv: list[str]) -> Any:
        return load_config(schema, argv[0], argv[1:])

    return load


def run_dir_loader(schema: type, key: str = "run") -> Callable[[list[str]], Any]:
    """`load` of the stages that use a trained run: argv = RUN_DIR [key=value ...] (the directory becomes
    `key`), or a YAML config file with that key, as for every other stage."""

    def load(argv: list[str]) -> Any:
        if not os.path.isdir(argv[0]):
            return load_config(schema, argv[0], argv[1:])
        raw = expand_env(apply_overrides({key: argv[0]}, argv[1:], schema))
        return validate_config(schema, raw, source=argv[0])

    return load


def run_stage(
    name: str,
    doc: str,
    argv: list[str] | None,
    load: Callable[[list[str]], Any],
    run: Callable[[Any], dict | None],
) -> int:
    """Run one stage with the exit-code convention above. `load` turns argv into a config (raising
    ConfigError), `run` does the work and returns a JSON-serialisable summary."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(doc, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    setup_logging()
    try:
        cfg = load(argv)
        summary = run(cfg)
    except ConfigError as e:
        print(f"kdsr {name}: {e}", file=sys.stderr)
        return 2
    except (KdsrError, FileNotFoundError) as e:
        print(f"kdsr {name}: error: {e}", file=sys.stderr)
        return 1
    if summary is not None and os.environ.get("RANK", "0") in ("", "0"):  # one summary under accelerate launch
        print(json.dumps(summary, default=str))
    return 0
