"""One logging setup for every stage: `HH:MM:SS stage.module: message` on stderr, INFO by default.

Modules log through `logging.getLogger(__name__)`; entry points call `setup_logging()` once. Under
`accelerate launch` only the main process logs at INFO (the others at WARNING), so N ranks do not print
every line N times."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (pytest's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int | str | None = None) -> None:
    """Idempotent: a second call (the pipeline running stages in-process) changes nothing."""
    root = logging.getLogger()
    if getattr(root, "_kdsr_configured", False):
        return
    if level is None:
        level = os.environ.get("KDSR_LOG_LEVEL", "INFO")
        if int(os.environ.get("RANK", "0") or 0) != 0:
            level = "WARNING"
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "numcodecs", "asyncio", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._kdsr_configured = True  # type: ignore[attr-defined]
