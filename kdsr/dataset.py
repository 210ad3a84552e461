"""A prepared dataset folder: the contract between `prepare` and every later stage.

    <dir>/items.parquet         item (int32, 1..N, contiguous, ascending), original_id (str), then the
                                text fields kept from the source (title, description, brand, ...), and
                                `image` (str: local path, relative to <dir>, or http(s) URL; null = none)
                                when the source sets image_field; filter.require_text ignores `image`
    <dir>/users.parquet         user (int32, 1..U), original_id (str)
    <dir>/interactions.parquet  user, item (int32), timestamp (int64), position (int32, 0-based order in the
                                user's history), split ("train" | "valid" | "test"); sorted by user, position
    <dir>/stats.json            counts, sequence-length stats, rows dropped by reason, split protocol
    <dir>/config.yaml           the resolved prepare config

Index 0 is reserved for padding in both ID spaces; the feature store's row r is item r + 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

from kdsr.errors import KdsrError

SPLITS = ("train", "valid", "test")
IMAGE_COLUMN = "image"  # items.parquet column written from a source's image_field


class DatasetError(KdsrError, ValueError):
    """A prepared dataset folder that is missing or malformed."""


@dataclass
class PreparedDataset:
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> PreparedDataset:
        path = Path(path)
        missing = [
            f
            for f in ("items.parquet", "users.parquet", "interactions.parquet", "stats.json")
            if not (path / f).exists()
        ]
        if missing:
            raise DatasetError(
                f"{path}: not a prepared dataset (missing {', '.join(missing)}); run `kdsr prepare` first"
            )
        return cls(path)

    @cached_property
    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "items.parquet")

    @cached_property
    def users(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "users.parquet")

    @cached_property
    def interactions(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "interactions.parquet")

    @cached_property
    def stats(self) -> dict:
        return json.loads((self.path / "stats.json").read_text())

    @property
    def name(self) -> str:
        return self.stats.get("name", self.path.name)

    @property
    def n_items(self) -> int:
        """Number of real items (the ID space is 0..n_items with 0 = padding)."""
        return self.items.height

    @property
    def n_users(self) -> int:
        return self.users.height

    def item_original_ids(self) -> list[str]:
        """Original item IDs in item order: what a feature store's `item_ids` must equal."""
        return self.items.sort("item")["original_id"].cast(pl.Utf8).to_list()

    def text_fields(self) -> list[str]:
        image = self.stats.get("image_column")  # set by prepare when the items have an image column
        return [c for c in self.items.columns if c not in ("item", "original_id", image)]

    def sequences(self, splits: tuple[str, ...] = SPLITS) -> pl.DataFrame:
        """One row per user: `item`, the list of item IDs in chronological order, keeping only rows whose
        split is in `splits` (e.g. ("train",) for training, all three for the full history)."""
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use {SPLITS}")
        return (
            self.interactions.filter(pl.col("split").is_in(list(splits)))
            .sort("user", "position")
            .group_by("user", maintain_order=True)
            .agg("item")
        )
