"""Bring your own features: an existing matrix plus its item order -> the same Zarr layout as `encode`.

Sources: `.npy`, a raw little-endian float32 matrix (MISSRec's `.feat1CLS` / `.feat3CLS`, needs `dim`),
or a Parquet column of vectors. With a prepared dataset the rows are reordered to its items; items the
source lacks become masked rows, source rows the dataset lacks are dropped, and both are counted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.config import ImportConfig
from feature_store.store import FeatureStore, StoreError, check_output
from kdsr.errors import KdsrError
from kdsr.files import file_sha256

log = logging.getLogger(__name__)


class FeatureImportError(KdsrError, ValueError):
    """A source matrix or ID file that cannot be read as configured; the message names the file."""


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix == ".npy":
        return "npy"
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix.startswith(".feat") or path.suffix in (".f32", ".bin"):
        return "raw_float32"
    raise FeatureImportError(f"{path}: cannot tell the format from the suffix; set format: npy | raw_float32 | parquet")


def load_matrix(cfg: ImportConfig) -> tuple[np.ndarray, list[str] | None]:
    """(float32 matrix [R, D], row IDs when the source carries them)."""
    path = Path(cfg.source)
    if not path.is_file():
        raise FeatureImportError(f"{path}: source feature file not found")
    fmt = detect_format(path, cfg.format)
    try:
        if fmt == "npy":
            matrix, ids = np.load(path, allow_pickle=False), None
        elif fmt == "raw_float32":
            matrix, ids = _load_raw_float32(path, cfg.dim), None
        else:
            matrix, ids = _load_parquet(path, cfg)
        matrix = np.asarray(matrix, np.float32)
    except FeatureImportError:
        raise
    except Exception as e:  # numpy and polars raise several types for a corrupt or non-numeric file
        raise FeatureImportError(f"{path}: cannot read as {fmt}: {e}") from None
    if matrix.ndim != 2:
        raise FeatureImportError(f"{path}: expected a 2-D matrix, got shape {matrix.shape}")
    return matrix, ids


def _load_raw_float32(path: Path, dim: int | None) -> np.ndarray:
    """A headerless little-endian float32 matrix (MISSRec's .feat1CLS / .feat3CLS) of rows of `dim`."""
    if dim is None:
        raise FeatureImportError(f"{path}: a raw float32 matrix needs `dim` (e.g. 512 for CLIP ViT-B/32)")
    flat = np.fromfile(path, dtype="<f4")
    if flat.size % dim:
        raise FeatureImportError(f"{path}: {flat.size} floats is not a whole number of rows of dim {dim}")
    return flat.reshape(-1, dim)


def _load_parquet(path: Path, cfg: ImportConfig) -> tuple[np.ndarray, list[str] | None]:
    """One vector per row from `column`, and the row IDs from `id_column` when set."""
    import polars as pl

    if not cfg.column:
        raise FeatureImportError(f"{path}: parquet import needs `column` (the vector column)")
    df = pl.read_parquet(path)
    for c in (cfg.column, cfg.id_column):
        if c and c not in df.columns:
            raise FeatureImportError(f"{path}: no column {c!r} (columns: {', '.join(df.columns)})")
    vecs = df[cfg.column].to_list()
    lengths = {len(v) if v is not None else -1 for v in vecs}
    if len(lengths) != 1 or -1 in lengths:
        bad = next(i for i, v in enumerate(vecs) if v is None or len(v) != len(vecs[0] or []))
        raise FeatureImportError(
            f"{path}: column {cfg.column!r} row {bad} is null or has a different length than row 0"
        )
    ids = df[cfg.id_column].cast(pl.Utf8).to_list() if cfg.id_column else None
    return np.asarray(vecs, dtype=np.float32), ids


def read_ids(path: str | Path, n_rows: int) -> list[str]:
    """Row IDs from `ID<TAB>row` lines (RecBole .item2index) or one ID per line (row = line number)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureImportError(f"{path}: item ID file not found")
    ids: list[str | None] = [None] * n_rows
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 1:
            key, row = parts[0].strip(), ln - 1
        else:
            try:
                key, row = parts[0], int(parts[1])
            except ValueError:
                raise FeatureImportError(f"{path}:{ln}: expected `ID<TAB>row`, got {line!r}") from None
        if not 0 <= row < n_rows:
            raise FeatureImportError(f"{path}:{ln}: row {row} is outside the matrix's {n_rows} rows")
        if ids[row] is not None:
            raise FeatureImportError(f"{path}:{ln}: row {row} already belongs to item {ids[row]!r}")
        ids[row] = key
    missing = [r for r, k in enumerate(ids) if k is None]
    if missing:
        raise FeatureImportError(f"{path}: {len(missing)} matrix rows have no item ID (first: row {missing[0]})")
    return ids  # type: ignore[return-value]


def run_import(cfg: ImportConfig) -> dict[str, Any]:
    """Write the source matrix as a feature store (rows in the dataset's item order when one is given)."""
    t0 = time.perf_counter()
    matrix, ids = load_matrix(cfg)
    ids = source_ids(cfg, ids, matrix.shape[0])
    if cfg.dataset:
        from kdsr.dataset import PreparedDataset

        target = PreparedDataset.open(cfg.dataset).item_original_ids()
    else:
        target = list(ids)
    out, mask, errors, summary = align_rows(matrix, ids, target)
    output, inputs = cfg.output, [cfg.source, cfg.ids, cfg.dataset]
    check_output(output.path, inputs)  # first: overwrite would not help with a folder that is not a store
    if not output.overwrite and Path(output.path).exists():
        raise StoreError(f"{output.path}: exists; set output.overwrite=true to replace it")
    store = FeatureStore.create(
        output.path,
        target,
        matrix.shape[1],
        dtype=output.dtype,
        shard_size=output.shard_size,
        attrs=store_attrs(cfg, summary),
        overwrite=output.overwrite,
        inputs=inputs,
    )
    for shard in range(store.n_shards):
        a, b = store.shard_rows(shard)
        store.write_shard(shard, out[a:b], mask[a:b], errors[a:b])
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "import %s -> %s: %d items, %d imported, %d not in source, %d non-finite, %d source rows not in the dataset",
        cfg.source,
        output.path,
        summary["items"],
        summary["imported"],
        summary["missing_in_source"],
        summary["non_finite"],
        summary["source_rows_not_in_dataset"],
    )
    return {**summary, "output": str(output.path)}


def source_ids(cfg: ImportConfig, ids: list[str] | None, n_rows: int) -> list[str]:
    """The item ID of every source row: carried by the source, else read from `ids`; distinct, one per row."""
    if ids is None:
        if not cfg.ids:
            raise FeatureImportError(
                f"{cfg.source}: the rows' item order is unknown; set `ids` (an item2index or ID-per-line file)"
            )
        ids = read_ids(cfg.ids, n_rows)
    if len(ids) != n_rows:
        raise FeatureImportError(f"{cfg.source}: {n_rows} rows but {len(ids)} item IDs")
    dup = len(ids) - len(set(ids))
    if dup:
        raise FeatureImportError(f"{cfg.source}: {dup} duplicate item IDs in the source rows")
    return ids


def align_rows(
    matrix: np.ndarray, ids: list[str], target: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """(rows in `target` order, mask, reason per row, counts): items the source lacks and non-finite rows are
    masked with their reason; source rows not in `target` are dropped and counted."""
    row_of = {k: r for r, k in enumerate(ids)}
    rows = np.asarray([row_of.get(k, -1) for k in target])
    found = rows >= 0
    out = np.zeros((len(target), matrix.shape[1]), np.float32)
    out[found] = matrix[rows[found]]
    finite = np.isfinite(out).all(1)
    mask = found & finite
    errors = np.where(~found, "not in source features", np.where(~finite, "non-finite values in source row", ""))
    counts = {
        "items": len(target),
        "imported": int(mask.sum()),
        "missing_in_source": int((~found).sum()),
        "non_finite": int((found & ~finite).sum()),
        "source_rows_not_in_dataset": len(ids) - int(found.sum()),
    }
    return out, mask, errors, counts


def store_attrs(cfg: ImportConfig, summary: dict[str, int]) -> dict[str, Any]:
    """Provenance of an imported store: the source file and its hash, plus what the config says about it."""
    src = Path(cfg.source)
    return {
        "modality": cfg.provenance.get("modality", "imported"),
        "model": cfg.provenance.get("model", "imported"),
        "source": str(src),
        "source_hash": file_sha256(src),
        "source_format": detect_format(src, cfg.format),
        "dataset": cfg.dataset,
        "import_summary": dict(summary),
        **{f"provenance_{k}": v for k, v in cfg.provenance.items()},
    }
