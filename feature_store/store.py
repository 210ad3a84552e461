"""The Zarr feature store: one group per (dataset, modality, encoder), written shard by shard.

Layout of a store at `path` (a local directory by default; `s3://...`-style URLs go through fsspec):

    embeddings   [N, D] float16 | float32   row r = the r-th item of the prepared dataset (kdsr index r + 1)
    item_ids     [N] str                    the items' original IDs, in row order (checked by readers)
    mask         [N] bool                   False: no usable feature (no content, unreadable image, ...)
    errors       [N] str                    why a row is masked ("" when valid)
    shards_done  [S] bool                   shard s covers rows [s * shard_size, (s + 1) * shard_size)
    attrs                                   provenance: model, revision/hash, pooling, precision, ...

A shard is exactly one Zarr chunk of rows, so concurrent writers never touch the same chunk, and
rewriting a shard writes the same bytes: Ray's retries and restarts are harmless. `shards_done[s]` is set
only after the shard's rows are written, so a restart skips finished shards and redoes half-written ones.
There is no padding row: the trainer prepends its own zero row 0.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import zarr

from kdsr import __version__
from kdsr.errors import KdsrError
from kdsr.files import input_overlap

FLOAT16_MAX = float(np.finfo(np.float16).max)
# Written with the group itself by every `FeatureStore.create`: they mark a store this project wrote, the only
# thing an overwrite may remove.
OWN_ATTRS = ("kdsr_version", "item_fingerprint")
ZARR_METADATA = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata"}


class StoreError(KdsrError, ValueError):
    """A store that is missing, malformed, or does not match what the caller expects."""


def fingerprint(values: Sequence[str] | np.ndarray) -> str:
    """Order-sensitive hash of item IDs, recorded in provenance and compared on open."""
    h = hashlib.sha256()
    for v in values:
        h.update(str(v).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _is_url(path: str) -> bool:
    return "://" in path


def check_output(path: str | Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an output path whose replacement could lose data: Zarr's overwrite deletes the whole path first,
    so it must hold nothing but a store this project wrote, and must not be, contain or sit inside an input."""
    overlap = input_overlap(path, inputs)
    if overlap:
        inp, how = overlap
        raise StoreError(f"{path}: the output {how} the input {inp}; choose an output path outside the inputs")
    why = _not_a_store(str(path))
    if why:
        raise StoreError(
            f"{path}: exists and is not a kdsr feature store ({why}); it is never removed or written into: "
            "choose another output path"
        )


def _not_a_store(path: str) -> str | None:
    """Why what is at `path` is not a kdsr store that may be replaced; None when nothing (or an empty folder)
    is there or it is one: a Zarr group with kdsr's attributes and nothing beside its own arrays."""
    if _is_url(path):
        import fsspec

        fs, root = fsspec.core.url_to_fs(path)
        try:
            names = {PurePosixPath(p.rstrip("/")).name for p in fs.ls(root, detail=False)}
        except FileNotFoundError:
            return None
    else:
        if not os.path.lexists(path):
            return None
        if Path(path).is_symlink():
            return "a symbolic link"
        if not Path(path).is_dir():
            return "a file"
        names = set(os.listdir(path))
    if not names:
        return None
    try:
        group = zarr.open_group(path, mode="r")
    except Exception:  # zarr raises several types for "not a group"
        return f"no Zarr group; holds {_some(names)}"
    missing = [k for k in OWN_ATTRS if k not in group.attrs]
    if missing:
        return f"a Zarr group without kdsr's attributes {', '.join(missing)}"
    with warnings.catch_warnings():  # zarr warns about each foreign entry while listing the members
        warnings.simplefilter("ignore")
        members = set(group.keys())
    foreign = names - ZARR_METADATA - members
    if foreign:
        return f"it also holds {_some(foreign)}"
    return None


def _some(names: set[str], n: int = 5) -> str:
    shown = sorted(names)[:n]
    return ", ".join(shown) + (f" and {len(names) - n} more" if len(names) > n else "")


@dataclass
class FeatureStore:
    path: str
    group: zarr.Group

    # ---- create / open ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        item_ids: Sequence[str] | np.ndarray,
        dim: int,
        *,
        dtype: str = "float32",
        shard_size: int = 1024,
        attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
        inputs: Iterable[str | Path | None] = (),
    ) -> FeatureStore:
        """A new, empty store of len(item_ids) x dim; shards are then written with `write_shard`. `overwrite`
        replaces only a store this project wrote, and never one that is, contains or sits inside `inputs`
        (the files and folders the caller reads)."""
        if dtype not in ("float16", "float32"):
            raise StoreError(f"{path}: dtype must be float16 or float32, got {dtype!r}")
        n = len(item_ids)
        if n == 0 or dim <= 0 or shard_size <= 0:
            raise StoreError(f"{path}: cannot create a store of {n} items x {dim} dims, shard size {shard_size}")
        check_output(path, inputs)
        meta = {
            "kdsr_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_items": n,
            "dim": dim,
            "dtype": dtype,
            "shard_size": shard_size,
            "item_fingerprint": fingerprint(item_ids),
        }
        meta.update(attrs or {})
        try:  # the attributes go in with the group, so even a half-created store is recognisably ours
            group = zarr.open_group(str(path), mode="w" if overwrite else "w-", attributes=meta)
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
            raise StoreError(f"{path}: something is already there; set overwrite to replace it") from None
        group.create_array("embeddings", shape=(n, dim), chunks=(shard_size, dim), dtype=dtype, fill_value=0)
        ids = group.create_array("item_ids", shape=(n,), chunks=(n,), dtype=str)
        ids[:] = np.asarray([str(i) for i in item_ids])
        group.create_array("mask", shape=(n,), chunks=(shard_size,), dtype=bool, fill_value=False)
        group.create_array("errors", shape=(n,), chunks=(shard_size,), dtype=str)
        n_shards = -(-n // shard_size)
        group.create_array("shards_done", shape=(n_shards,), chunks=(1,), dtype=bool, fill_value=False)
        return cls(str(path), group)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> FeatureStore:
        path = str(path)
        if not _is_url(path) and not Path(path).exists():
            raise StoreError(f"{path}: no feature store here (run `kdsr encode` or `kdsr import` first)")
        try:
            group = zarr.open_group(path, mode=mode)
        except Exception as e:  # zarr raises several types for "not a group"
            raise StoreError(f"{path}: not a Zarr feature store ({e})") from None
        missing = [k for k in ("embeddings", "item_ids", "mask", "shards_done") if k not in group]
        if missing:
            raise StoreError(f"{path}: not a kdsr feature store, missing arrays: {', '.join(missing)}")
        return cls(path, group)

    # ---- shape and provenance --------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def embeddings(self) -> zarr.Array:
        return self.group["embeddings"]

    @property
    def n_items(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def shard_size(self) -> int:
        return int(self.embeddings.chunks[0])

    @property
    def n_shards(self) -> int:
        return int(self.group["shards_done"].shape[0])

    def shard_rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_items)

    def item_ids(self) -> np.ndarray:
        return np.asarray(self.group["item_ids"][:]).astype(object).astype(str)  # numpy 2 StringDType -> U

    def update_attrs(self, **kv: Any) -> None:
        self.group.attrs.update(kv)

    # ---- writing ---------------------------------------------------------------------------------
    def pending_shards(self) -> list[int]:
        return [int(s) for s in np.flatnonzero(~self.group["shards_done"][:])]

    def is_complete(self) -> bool:
        return bool(self.group["shards_done"][:].all())

    def write_shard(
        self,
        shard: int,
        embeddings: np.ndarray,
        mask: np.ndarray | None = None,
        errors: Sequence[str] | None = None,
    ) -> None:
        """Write all rows of one shard, then mark it done. Safe to repeat (same chunks, same bytes)."""
        start, stop = self.shard_rows(shard)
        emb = np.asarray(embeddings)
        if emb.shape != (stop - start, self.dim):
            raise StoreError(f"{self.path}: shard {shard} expects {(stop - start, self.dim)}, got {emb.shape}")
        mask = np.ones(stop - start, bool) if mask is None else np.asarray(mask, bool)
        bad = np.flatnonzero(mask & ~np.isfinite(emb).all(1))
        if bad.size:  # a NaN row would pass every later check (NaN > max is false) and poison the cosines
            raise StoreError(
                f"{self.path}: shard {shard} row {start + bad[0]} (and {bad.size - 1} more) holds NaN or inf; "
                "mask such rows (mask=False) with a reason"
            )
        if self.embeddings.dtype == np.float16:
            overflow = np.abs(emb[mask]).max(initial=0.0) > FLOAT16_MAX
            if overflow:
                raise StoreError(
                    f"{self.path}: shard {shard} has values beyond float16's range ({FLOAT16_MAX:.0f}); "
                    "use dtype float32 or L2-normalise the embeddings"
                )
        emb = np.where(mask[:, None], emb, 0).astype(self.embeddings.dtype)
        self.embeddings[start:stop] = emb
        self.group["mask"][start:stop] = mask
        errs = np.asarray(["" for _ in range(stop - start)] if errors is None else [str(e) for e in errors])
        self.group["errors"][start:stop] = errs
        self.group["shards_done"][shard] = True

    # ---- reading ---------------------------------------------------------------------------------
    def mask(self) -> np.ndarray:
        return np.asarray(self.group["mask"][:], bool)

    def errors(self) -> list[tuple[int, str]]:
        """(row, reason) of every masked row that recorded a reason."""
        errs = np.asarray(self.group["errors"][:]).astype(object).astype(str)
        return [(int(r), str(errs[r])) for r in np.flatnonzero(errs != "")]

    def read_rows(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows by index, in the order given (duplicates allowed); reads each touched chunk once."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), self.embeddings.dtype)
        if rows.min() < 0 or rows.max() >= self.n_items:
            raise StoreError(f"{self.path}: row index out of range [0, {self.n_items})")
        uniq, inverse = np.unique(rows, return_inverse=True)
        return np.asarray(self.embeddings.oindex[uniq])[inverse]

    def read_all(self, dtype: str = "float32") -> np.ndarray:
        return np.asarray(self.embeddings[:], dtype=dtype)

    # ---- checks ----------------------------------------------------------------------------------
    def check_items(self, expected_ids: Sequence[str] | np.ndarray, source: str = "the prepared dataset") -> None:
        """Refuse a store whose item order or count differs from the dataset the caller trains on."""
        expected = np.asarray([str(i) for i in expected_ids])
        have = self.item_ids()
        if len(have) != len(expected):
            raise StoreError(
                f"{self.path}: store has {len(have)} items but {source} has {len(expected)}; "
                "re-encode (or re-import) the features for this dataset"
            )
        diff = np.flatnonzero(have != expected)
        if diff.size:
            r = int(diff[0])
            raise StoreError(
                f"{self.path}: item order differs from {source} at {diff.size} rows, first at row {r} "
                f"(store {have[r]!r}, dataset {expected[r]!r}); re-encode for this dataset"
            )
        if not self.is_complete():
            raise StoreError(f"{self.path}: {len(self.pending_shards())} shards are not written yet; resume the encode")
