"""Row filters of `prepare`, each vectorised in polars and each returning how many rows it removed, so
stats.json can account for every dropped row. Bad input raises unless the policy says to drop it."""

from __future__ import annotations

import polars as pl

from prepare.readers import InputError, Raw


def drop_missing(raw: Raw, policy: str) -> int:
    """Interactions without a user, item or timestamp cannot be placed: error, or skip and count."""
    bad = raw.interactions.filter(pl.any_horizontal(pl.col("user", "item", "timestamp").is_null()))
    if bad.height and policy == "error":
        row = bad.row(0, named=True)
        empty = [c for c in ("user", "item", "timestamp") if row[c] is None]
        raise InputError(
            f"{raw.where(row['record'])}: missing {', '.join(empty)} "
            f"({bad.height} such rows; policy.bad_rows: skip counts them)"
        )
    raw.interactions = raw.interactions.drop_nulls(["user", "item", "timestamp"])
    return bad.height


def dedupe_items(raw: Raw, policy: str) -> int:
    """An item ID twice in the items table is ambiguous (which text?): error, or keep the first and count."""
    items = raw.items.with_row_index("_r")
    dup = items.filter(~pl.col("item").is_first_distinct())
    if dup.height and policy == "error":
        first = dup.row(0, named=True)
        raise InputError(
            f"{raw.where(first['_r'], raw.items_file)}: duplicate item ID {first['item']!r} "
            f"({dup.height} repeated rows; policy.duplicates: drop keeps the first)"
        )
    raw.items = raw.items.unique("item", keep="first", maintain_order=True)
    return items.height - raw.items.height


def drop_never_interacted(raw: Raw) -> int:
    """Catalog items that no interaction mentions: nothing to learn from, so not part of the dataset."""
    before = raw.items.height
    raw.items = raw.items.join(raw.interactions.select("item").unique(), on="item", how="semi", maintain_order="left")
    return before - raw.items.height


def dedupe_interactions(raw: Raw, policy: str) -> int:
    """Identical (user, item, timestamp) rows: error, or keep the first and count."""
    key = ["user", "item", "timestamp"]
    df = raw.interactions
    dup = df.sort("record").filter(~pl.struct(key).is_first_distinct())
    if dup.height and policy == "error":
        first = dup.row(0, named=True)
        raise InputError(
            f"{raw.where(first['record'])}: duplicate interaction user={first['user']!r} item={first['item']!r} "
            f"timestamp={first['timestamp']!r} ({dup.height} repeated rows; policy.duplicates: drop keeps the first)"
        )
    raw.interactions = df.unique(key, keep="first", maintain_order=True)
    return df.height - raw.interactions.height


def drop_unknown_items(raw: Raw, policy: str) -> int:
    """Interactions whose item is not in the items table: error, or drop and count."""
    unknown = raw.interactions.join(raw.items.select("item"), on="item", how="anti")
    if unknown.height and policy == "error":
        row = unknown.sort("record").row(0, named=True)
        raise InputError(
            f"{raw.where(row['record'])}: item {row['item']!r} is not in the items table {raw.items_file} "
            f"({unknown.height} such interactions, {unknown['item'].n_unique()} items; "
            "policy.unknown_items: drop counts them)"
        )
    raw.interactions = raw.interactions.join(raw.items.select("item"), on="item", how="semi", maintain_order="left")
    return unknown.height


def rating_threshold(df: pl.DataFrame, threshold: float) -> tuple[pl.DataFrame, int]:
    kept = df.filter(pl.col("rating") >= threshold)
    return kept, df.height - kept.height


def require_text(raw: Raw) -> tuple[int, int]:
    """Drop items whose text fields are all empty, and their interactions. Returns (items, interactions)."""
    has_text = pl.any_horizontal(pl.col(f).is_not_null() for f in raw.text_fields)
    no_text = raw.items.filter(~has_text)
    raw.items = raw.items.filter(has_text)
    before = raw.interactions.height
    raw.interactions = raw.interactions.join(no_text.select("item"), on="item", how="anti", maintain_order="left")
    return no_text.height, before - raw.interactions.height


def kcore(df: pl.DataFrame, k: int) -> tuple[pl.DataFrame, int, int]:
    """Iterative k-core: repeat until every user and every item has >= k interactions.
    Returns (kept, interactions removed, rounds)."""
    if k <= 1:
        return df, 0, 0
    start, rounds = df.height, 0
    while True:
        kept = df.filter((pl.len().over("user") >= k) & (pl.len().over("item") >= k))
        rounds += 1
        if kept.height == df.height:
            return kept, start - kept.height, rounds
        df = kept
