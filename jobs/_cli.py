"""What every stage entry point does around its work: help, config loading, clean errors, a JSON summary."""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable

from kdsr.config import ConfigError, load_config


def run_stage(name: str, doc: str, argv: list[str] | None, schema: type, run: Callable[[Any], dict],
              errors: tuple[type[BaseException], ...], after: Callable[[Any], None] | None = None) -> int:
    """`kdsr <name> CONFIG [key=value ...]`: exit 2 on a bad config, 1 on a known failure of the stage
    (message on stderr, no traceback), 0 with the stage's summary printed as one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(schema, argv[0], argv[1:])
    except ConfigError as e:
        print(f"kdsr {name}: {e}", file=sys.stderr)
        return 2
    try:
        summary = run(cfg)
    except errors as e:
        print(f"kdsr {name}: error: {e}", file=sys.stderr)
        return 1
    if after is not None:
        after(cfg)
    print(json.dumps(summary))
    return 0
