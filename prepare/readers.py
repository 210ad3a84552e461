"""Readers for generic tables (Parquet, CSV/TSV, RecBole atomic files) into one raw shape.

Every reader returns a `Raw`: interactions with original IDs and the source row number (`record`), an
optional items table with its text fields, and where it all came from, so later errors can name the
file and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kdsr.dataset import IMAGE_COLUMN
from kdsr.errors import KdsrError
from prepare.config import Columns, TableSource


class InputError(KdsrError, ValueError):
    """Bad input data; the message names the file and the row or column."""


@dataclass
class Raw:
    interactions: pl.DataFrame  # user, item (original IDs), timestamp, [rating], record, [split]
    items: pl.DataFrame | None  # item (original ID) + text fields [+ image], or None when the source has no items table
    text_fields: list[str]
    source: dict[str, str]  # format and paths, for stats.json
    inter_file: str
    items_file: str | None = None
    line_offset: int | None = 2  # record + this = line number in a text file; None: say "row"
    dropped: dict[str, int] = field(default_factory=dict)  # rows skipped while reading, by reason
    read: dict[str, int] = field(default_factory=dict)  # rows read, before anything was dropped
    given_split: bool = False  # interactions carry the source's own split column
    item_order: list | None = None  # original item IDs in the order IDs are given; None: sorted
    user_order: list | None = None
    notes: list[str] = field(default_factory=list)
    timestamp_unit: str = "s"
    has_image: bool = False  # items carry an IMAGE_COLUMN (the source's image_field)

    def where(self, record: int, file: str | None = None) -> str:
        file = file or self.inter_file
        if self.line_offset is None:
            return f"{file} row {record}"
        return f"{file} line {record + self.line_offset}"


def read_table_source(src: TableSource) -> Raw:
    fmt = src.format if src.format != "auto" else _format_of(src.interactions)
    inter = _read(src.interactions, fmt, src.separator)
    items = None
    if src.items is not None:
        items = _read(src.items, src.format if src.format != "auto" else _format_of(src.items), src.separator)
    raw = from_frames(
        inter,
        items,
        src.columns,
        src.text_fields,
        src.interactions,
        src.items,
        items_item_column=src.items_item_column,
        line_offset=None if fmt == "parquet" else 2,
        image_field=src.image_field,
    )
    raw.source = {"format": fmt, "interactions": src.interactions, **({"items": src.items} if src.items else {})}
    return raw


def _format_of(path: str) -> str:
    suffix = Path(path.removesuffix(".gz")).suffix.lower()
    formats = {
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
        ".tsv": "csv",
        ".inter": "recbole",
        ".item": "recbole",
    }
    if suffix not in formats:
        raise InputError(f"{path}: cannot tell the format from the suffix {suffix!r}; set format: parquet|csv|recbole")
    return formats[suffix]


def _read(path: str, fmt: str, separator: str | None) -> pl.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if fmt == "parquet":
            return pl.read_parquet(p)
        if fmt == "recbole":
            return read_atomic(p)
        sep = separator or ("\t" if p.name.removesuffix(".gz").endswith(".tsv") else ",")
        # Everything as text first: IDs keep leading zeros, and a bad number is reported with its row below.
        return pl.read_csv(p, separator=sep, infer_schema=False)
    except InputError:
        raise
    except Exception as e:  # polars raises several types for unreadable files; all mean the same here
        raise InputError(f"{path}: cannot read as {fmt}: {e}") from None


def read_atomic(path: Path) -> pl.DataFrame:
    """A RecBole atomic file: tab-separated, header `name:type`. `float` columns become Float64 (a value
    that is not a number is an error naming the line); token and *_seq columns stay text."""
    df = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    renames, floats = {}, []
    for col in df.columns:
        name, sep, kind = col.partition(":")
        if not sep or kind not in {"token", "token_seq", "float", "float_seq"}:
            raise InputError(f"{path}: header field {col!r} is not of the form name:token|token_seq|float|float_seq")
        renames[col] = name
        if kind == "float":
            floats.append(name)
    df = df.rename(renames)
    for name in floats:
        _check_numeric(df, name, str(path), 2)
        df = df.with_columns(pl.col(name).cast(pl.Float64))
    return df


def _check_numeric(df: pl.DataFrame, col: str, file: str, line_offset: int | None, integer: bool = False) -> None:
    """Fail on the first value of a text column that is not a number (or not an integer)."""
    if df.schema[col] != pl.Utf8:
        if integer and not df.schema[col].is_integer():
            raise InputError(f"{file}: column {col!r} must hold integers, has type {df.schema[col]}")
        return
    target = pl.Int64 if integer else pl.Float64
    bad = df.with_row_index("_row").filter(pl.col(col).is_not_null() & pl.col(col).cast(target, strict=False).is_null())
    if bad.height:
        row, value = bad["_row"][0], bad[col][0]
        where = f"row {row}" if line_offset is None else f"line {row + line_offset}"
        kind = "an integer" if integer else "a number"
        raise InputError(f"{file} {where}: column {col!r} value {value!r} is not {kind} ({bad.height} such rows)")


def _require(df: pl.DataFrame, cols: list[str], file: str, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(
            f"{file}: missing {what} column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(df.columns)})"
        )


def from_frames(
    inter: pl.DataFrame,
    items: pl.DataFrame | None,
    cols: Columns,
    text_fields: list[str],
    inter_file: str,
    items_file: str | None,
    items_item_column: str | None = None,
    line_offset: int | None = 2,
    image_field: str | None = None,
) -> Raw:
    """Select and type the configured columns of already-loaded frames (shared by tables and datasets)."""
    wanted = [cols.user, cols.item] + [c for c in (cols.timestamp, cols.rating) if c]
    _require(inter, wanted, inter_file, "interactions")
    inter = inter.select(wanted).with_row_index("record").with_columns(pl.col("record").cast(pl.Int64))
    for c in (cols.timestamp, cols.rating):
        if c:
            _check_numeric(inter, c, inter_file, line_offset)
    if cols.integer_ids:
        for c in (cols.user, cols.item):
            _check_numeric(inter, c, inter_file, line_offset, integer=True)
    out = inter.select(
        pl.col(cols.user).alias("user"),
        pl.col(cols.item).alias("item"),
        (
            pl.col(cols.timestamp).cast(pl.Float64)
            if _is_float(inter, cols.timestamp)
            else pl.col(cols.timestamp).cast(pl.Int64)
        ).alias("timestamp")
        if cols.timestamp
        else pl.col("record").alias("timestamp"),
        *([pl.col(cols.rating).cast(pl.Float64).alias("rating")] if cols.rating else []),
        "record",
    )
    if cols.integer_ids:
        out = out.with_columns(pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64))
    raw = Raw(
        out,
        None,
        list(text_fields),
        {},
        inter_file,
        items_file,
        line_offset=line_offset,
        read={"interactions": inter.height},
    )
    if not cols.timestamp:
        raw.notes.append("no timestamp column: the record order is used as the timestamp")
    if image_field and items is None:
        raise InputError(f"{inter_file}: image_field {image_field!r} needs an items table")
    if items is not None:
        key = items_item_column or cols.item
        _require(items, [key, *text_fields, *([image_field] if image_field else [])], items_file or "<items>", "items")
        image = [image_column(items, image_field)] if image_field else []
        items = items.select(pl.col(key).alias("item"), *[text_column(items, f) for f in text_fields], *image)
        raw.has_image = bool(image_field)
        if cols.integer_ids:
            _check_numeric(items.rename({"item": key}), key, items_file or "<items>", line_offset, integer=True)
            items = items.with_columns(pl.col("item").cast(pl.Int64))
        # The same ID type on both sides, else the join would silently find nothing.
        if items.schema["item"] != out.schema["item"]:
            items = items.with_columns(pl.col("item").cast(pl.Utf8))
            raw.interactions = raw.interactions.with_columns(pl.col("item").cast(pl.Utf8))
        raw.items = items
        raw.read["items"] = items.height
    return raw


def _is_float(df: pl.DataFrame, col: str | None) -> bool:
    return col is not None and (
        df.schema[col].is_float() or df.schema[col] == pl.Utf8 and df[col].str.contains(r"[.eE]").any()
    )


def text_column(df: pl.DataFrame, name: str) -> pl.Expr:
    """A text field as stripped text, lists joined by spaces, empty -> null."""
    dtype = df.schema[name]
    expr = pl.col(name)
    if isinstance(dtype, pl.List):
        expr = expr.cast(pl.List(pl.Utf8)).list.join(" ")
    elif dtype != pl.Utf8:
        expr = expr.cast(pl.Utf8)
    expr = expr.str.strip_chars()
    return pl.when(expr.str.len_chars() > 0).then(expr).otherwise(None).alias(name)


def image_column(df: pl.DataFrame, name: str) -> pl.Expr:
    """An image field as IMAGE_COLUMN: one stripped path or URL (a list gives its first entry), empty -> null."""
    expr = pl.col(name)
    if isinstance(df.schema[name], pl.List):
        expr = expr.list.first()
    expr = expr.cast(pl.Utf8).str.strip_chars()
    return pl.when(expr.str.len_chars() > 0).then(expr).otherwise(None).alias(IMAGE_COLUMN)
