"""Writes that a later run trusts: to a temporary name beside the target, then renamed into place, so a kill
leaves either the old file or the new one, never a truncated one; the file hash that provenance records; and
the check that an output a stage replaces is not one of its inputs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def sha256_hex(path: str | Path) -> str:
    """The file's full SHA-256, hex, read in 4 MiB blocks (files of any size)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """ "sha256:" + the first 16 hex digits of the file's sha256: provenance that pins a file's bytes."""
    return "sha256:" + sha256_hex(path)[:16]


def input_overlap(output: str | Path, inputs: Iterable[str | Path | None]) -> tuple[str, str] | None:
    """(input, how) for the first input that `output` is, contains or sits inside, else None: a stage that
    replaces `output` removes the whole folder, so it must never hold (or be held by) what the stage reads.
    Local paths are compared resolved (symlinks, `..`); URLs as strings."""
    out = _comparable(output)
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        other = _comparable(inp)
        if type(other) is not type(out):  # a local path and a URL never overlap
            continue
        if out == other:
            return str(inp), "is"
        if _inside(other, out):
            return str(inp), "contains"
        if _inside(out, other):
            return str(inp), "sits inside"
    return None


def _comparable(path: str | Path) -> Path | str:
    text = str(path)
    if "://" in text:
        return text.rstrip("/")
    return Path(text).expanduser().resolve()


def _inside(a: Path | str, b: Path | str) -> bool:
    """True when `a` is strictly below `b`."""
    if isinstance(a, Path):
        return a != b and a.is_relative_to(b)
    return a.startswith(b + "/")
