"""What `kdsr prepare` may remove: its output folder is replaced on every run, so before anything is deleted
the folder (and its `<output_dir>.tmp` build folder) must hold only what prepare writes, and must not be,
contain or sit inside the source files the run reads."""

from __future__ import annotations

import json
from pathlib import Path

from kdsr.errors import KdsrError
from kdsr.files import input_overlap
from prepare.config import PrepareConfig

# Every file a prepared dataset folder holds, as `write` leaves it.
DATASET_FILES = {"items.parquet", "users.parquet", "interactions.parquet", "stats.json", "config.yaml"}


class OutputError(KdsrError, ValueError):
    """output_dir (or its build folder) holds something `kdsr prepare` did not write, or the inputs."""


def source_paths(cfg: PrepareConfig) -> list[str | None]:
    """The files and folders the configured source reads (a Hugging Face hub id is harmless here)."""
    src, kind = cfg.source, cfg.source_kind
    paths: list[str | None] = []
    if kind == "table":
        paths = [src.interactions, src.items]
    elif kind == "recbole_split":
        paths = [src.path]
    elif kind == "huggingface":
        paths = [src.interactions.path, src.items.path if src.items else None]
    for amazon in (cfg.amazon, getattr(cfg, "fallback", None)):  # the dumps, given or under download_dir
        if amazon is not None:
            from prepare.amazon import local_paths

            paths += [str(p) for p in local_paths(amazon).values()]
    return paths


def check_replaceable(cfg: PrepareConfig, out: Path, tmp: Path) -> None:
    """Refuse before writing anything when replacing `out` or clearing `tmp` could remove what we did not write."""
    for path in (out, tmp):
        overlap = input_overlap(path, source_paths(cfg))
        if overlap:
            raise OutputError(
                f"{path}: output_dir {overlap[1]} the source {overlap[0]}; a run replaces that folder, so set "
                "output_dir outside the source files"
            )
    if out.exists() and not is_prepared_dataset(out):
        raise OutputError(
            f"{out}: exists and is not a dataset `kdsr prepare` wrote (holds {_listing(out)}); it is never "
            "removed: set output_dir to a new folder, or move what is there"
        )
    if tmp.exists() and not _only_ours(tmp):
        raise OutputError(
            f"{tmp}: is not the build folder of output_dir {out} (holds {_listing(tmp)}); it is never removed: "
            "move it, or set output_dir to another folder"
        )


def is_prepared_dataset(path: Path) -> bool:
    """An empty folder, or one holding only the files `write` writes, with a stats.json it wrote."""
    if not _only_ours(path):
        return False
    names = {p.name for p in path.iterdir()}
    if not names:
        return True
    try:
        stats = json.loads((path / "stats.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and {"n_items", "n_interactions", "dropped"} <= stats.keys()


def _only_ours(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    return all(_ours(p.name) and p.is_file() and not p.is_symlink() for p in path.iterdir())


def _ours(name: str) -> bool:
    """One of the dataset files, or the temporary name an atomic write of one leaves behind when killed."""
    if name in DATASET_FILES:
        return True
    stem, _, pid = name.partition(".tmp-")
    return stem.startswith(".") and stem[1:] in DATASET_FILES and pid.isdigit()


def _listing(path: Path, n: int = 5) -> str:
    if path.is_symlink():
        return "a symbolic link"
    if not path.is_dir():
        return "a file, not a folder"
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
