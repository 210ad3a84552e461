"""One logging setup for every stage: `HH:MM:SS stage.module: message` on stderr, INFO by default.

Modules log through `logging.getLogger(__name__)`; entry points call `setup_logging()` once. Under
`accelerate launch` only the main process logs at INFO (the others at WARNING), so N ranks do not print
every line N times."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

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
    for noisy in ("httpx", "urllib3", "filelock", "numcodecs", "asyncio", "accelerate", "tensorboardX"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._kdsr_configured = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def also_to_file(path: str | Path):
    """Every record also goes to `path` (appended: a resumed job continues its log) while the block runs, with
    the traceback of an exception that leaves the block: a job whose stderr is not kept (a Ray Tune trial's)
    keeps its own log beside its outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    except Exception:
        logging.getLogger(__name__).exception("failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
