"""Test fixtures: prepared-dataset folders built without `kdsr prepare`, following kdsr/dataset.py exactly
(a tiny synthetic catalog, or a real item table with one placeholder user), and toy dissected features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from kdsr.dataset import PreparedDataset


def write_prepared(out: str | Path, interactions: pl.DataFrame, items: pl.DataFrame, name: str = "toy") -> Path:
    """interactions: user (1..U), item (1..N), timestamp, position; the last row of a user = test, the one
    before = valid (leave-one-out). items: item (1..N), original_id, and any content columns."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_in_user = pl.col("position").max().over("user")
    df = interactions.sort("user", "position").with_columns(
        pl.when(pl.col("position") == n_in_user)
        .then(pl.lit("test"))
        .when(pl.col("position") == n_in_user - 1)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("split"),
        pl.col("user").cast(pl.Int32),
        pl.col("item").cast(pl.Int32),
        pl.col("position").cast(pl.Int32),
    )
    n_users = int(df["user"].max())
    users = pl.DataFrame(
        {"user": np.arange(1, n_users + 1, dtype=np.int32), "original_id": [str(u) for u in range(1, n_users + 1)]}
    )
    df.write_parquet(out / "interactions.parquet")
    items.write_parquet(out / "items.parquet")
    users.write_parquet(out / "users.parquet")
    stats = {
        "name": name,
        "n_users": n_users,
        "n_items": items.height,
        "n_interactions": df.height,
        "split": "leave_one_out",
    }
    (out / "stats.json").write_text(json.dumps(stats))
    return out


def items_frame(item_ids: list[str], titles: list[str] | None = None) -> pl.DataFrame:
    items = pl.DataFrame({"item": np.arange(1, len(item_ids) + 1, dtype=np.int32), "original_id": item_ids})
    return items if titles is None else items.with_columns(pl.Series("title", titles))


def catalog_only(path: Path, items: pl.DataFrame) -> PreparedDataset:
    """A prepared dataset around `items` (item 1..N, original_id, content columns) with one placeholder
    interaction: enough for the stages that only read the item table (encode, import)."""
    one = pl.DataFrame({"user": [1], "item": [1], "timestamp": [0], "position": [0]})
    return PreparedDataset.open(write_prepared(path, one, items, name=Path(path).name))


def synthetic(
    out: str | Path, n_users: int = 60, n_items: int = 40, min_len: int = 5, max_len: int = 12, seed: int = 0
) -> Path:
    """Users walk through items in mostly-consecutive steps (item i is usually followed by i + 1), so a
    sequential model has something to learn in a few steps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(min_len, max_len + 1))
        it = int(rng.integers(1, n_items + 1))
        for p in range(n):
            rows.append((u, it, 1_000_000 + p, p))
            it = it % n_items + 1 if rng.random() < 0.8 else int(rng.integers(1, n_items + 1))
    df = pl.DataFrame(rows, schema=["user", "item", "timestamp", "position"], orient="row")
    return write_prepared(out, df, items_frame([f"i{k:04d}" for k in range(1, n_items + 1)]), name="synthetic")


def toy_features(
    dataset: str | Path,
    out: str | Path,
    dim: int = 16,
    n_codes: int = 6,
    n_facets: int = 4,
    seed: int = 0,
    mask_every: int = 0,
) -> Path:
    """Random features for a prepared dataset's items (neighbouring ids get similar rows, so the teacher
    carries the same signal as the toy sequences), dissected by the real `kdsr dissect` code; returns the
    dissection store. mask_every > 0 marks every k-th item as content-less."""
    from dissect.config import DissectConfig
    from dissect.run import run_dissect
    from feature_store.store import FeatureStore

    ds = PreparedDataset.open(dataset)
    ids = ds.item_original_ids()
    rng = np.random.default_rng(seed)
    t = np.arange(len(ids))[:, None] / max(1, len(ids)) * 2 * np.pi
    x = np.concatenate(
        [np.sin(t * (k + 1)) for k in range(dim // 2)] + [np.cos(t * (k + 1)) for k in range(dim - dim // 2)], 1
    )
    x = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    mask = np.ones(len(ids), bool)
    if mask_every:
        mask[::mask_every] = False
    raw = Path(out) / "raw.zarr"
    store = FeatureStore.create(raw, ids, dim, shard_size=max(len(ids), 1), overwrite=True)
    store.write_shard(0, x, mask)
    cfg = DissectConfig(
        features=str(raw),
        output=str(Path(out) / "raw.dissect.zarr"),
        dataset=str(dataset),
        seed=seed,
        overwrite=True,  # rebuilt under the same path by the tests of a changed dissection
        reduce={"method": "none"},
        facets={"mode": "chunks", "n_facets": n_facets},
        codebook={"n_codes": n_codes, "random_pairs": 2000, "cooccur_pairs": 2000, "n_init": 1},
    )
    return Path(run_dissect(cfg)["output"])
