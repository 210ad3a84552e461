"""UniSRec/RecBole benchmark split files (`scientific/`, `scientific-mm/`), keeping their split exactly.

The files hold histories, not interactions: `train` has every prefix of each user's training part,
newest first, each history truncated to the last L (= 50) items; `valid` and `test` have one row per user.
We rebuild each user's full sequence as (oldest training history) + (training targets, oldest first) +
valid target + test target, then check that every history in all three files equals the last L items
before its target in the rebuilt sequence. There are no timestamps: the position is the timestamp.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prepare.config import RecboleSplitSource
from prepare.readers import InputError, Raw, read_atomic


def read_recbole_split(src: RecboleSplitSource) -> Raw:
    """The split files as interactions with their given split; every history is checked against the rebuild."""
    folder = Path(src.path)
    if not folder.is_dir():
        raise InputError(f"{folder}: recbole_split folder not found")
    name = src.name or _stem(folder)
    files = {
        k: folder / f"{name}.{k}"
        for k in ("train.inter", "valid.inter", "test.inter", "text", "item2index", "user2index")
    }
    for path in files.values():
        if not path.is_file():
            raise InputError(
                f"{path}: file not found (recbole_split needs {', '.join(p.name for p in files.values())})"
            )

    item_index = _read_index(files["item2index"])
    user_index = _read_index(files["user2index"])
    text = _read_text(files["text"], src.text_field)
    items = item_index.join(text, left_on="original", right_on="item", how="left").sort("index")

    train, valid, test = (
        _read_histories(files[f"{k}.inter"], len(item_index), len(user_index)) for k in ("train", "valid", "test")
    )
    _check_one_row_per_user(valid, test, files)
    seqs = _rebuild(train, valid, test)
    _verify(seqs, train, valid, test, files)
    inter = _interactions(seqs, user_index, item_index)
    item_text = items.select(pl.col("original").alias("item"), pl.col("text").alias(src.text_field))
    raw = Raw(
        inter,
        item_text,
        [src.text_field],
        {"format": "recbole_split", **{k: str(v) for k, v in files.items()}},
        inter_file=str(files["train.inter"]),
        items_file=str(files["text"]),
        line_offset=None,
        read={"interactions": inter.height, "items": item_text.height},
        given_split=True,
        item_order=items["original"].to_list(),
        user_order=user_index.sort("index")["original"].to_list(),
        notes=[
            "split kept exactly as given by the train/valid/test files",
            "no timestamps in the source: timestamp = position in the user's rebuilt sequence",
        ],
        timestamp_unit="position",
    )
    unused = text.join(item_index, left_on="item", right_on="original", how="anti").height
    if unused:
        raw.dropped["items.not_in_item2index"] = unused
        raw.read["items"] += unused
    return raw


def _check_one_row_per_user(valid: pl.DataFrame, test: pl.DataFrame, files: dict[str, Path]) -> None:
    """valid and test hold exactly one row per user, for the same users."""
    for df, path in ((valid, files["valid.inter"]), (test, files["test.inter"])):
        dup = df.filter(pl.col("user").is_duplicated())
        if dup.height:
            raise InputError(
                f"{path} line {dup['line'][0]}: user {dup['user'][0]} has more than one row (expected one per user)"
            )
    if set(valid["user"]) != set(test["user"]):
        raise InputError(f"{files['valid.inter']} and {files['test.inter']} hold different users")


def _interactions(seqs: pl.DataFrame, user_index: pl.DataFrame, item_index: pl.DataFrame) -> pl.DataFrame:
    """One row per (user, position) of the rebuilt sequences with original IDs; the last two are valid, test."""
    inter = (
        seqs.select("user", "seq")
        .explode("seq")
        .rename({"seq": "item"})
        .with_columns(
            pl.int_range(pl.len()).over("user").cast(pl.Int64).alias("timestamp"), pl.len().over("user").alias("_n")
        )
        .with_columns(
            pl.when(pl.col("timestamp") == pl.col("_n") - 1)
            .then(pl.lit("test"))
            .when(pl.col("timestamp") == pl.col("_n") - 2)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
            .alias("split")
        )
        .drop("_n")
        .with_row_index("record")
        .with_columns(pl.col("record").cast(pl.Int64))
    )
    # Original IDs: the ASIN and the user string from the index files.
    inter = (
        inter.join(user_index.rename({"index": "user", "original": "u"}), on="user", how="left")
        .join(item_index.rename({"index": "item", "original": "i"}), on="item", how="left")
        .select(pl.col("u").alias("user"), pl.col("i").alias("item"), "timestamp", "record", "split")
        .sort("record")
    )
    return inter


def _stem(folder: Path) -> str:
    found = sorted(folder.glob("*.train.inter"))
    if len(found) != 1:
        raise InputError(f"{folder}: expected exactly one *.train.inter, found {len(found)}; set recbole_split.name")
    return found[0].name.removesuffix(".train.inter")


def _read_index(path: Path) -> pl.DataFrame:
    """`original<TAB>index` lines, indices 0..n-1 each once."""
    try:
        df = pl.read_csv(
            path,
            separator="\t",
            has_header=False,
            new_columns=["original", "index"],
            infer_schema=False,
            quote_char=None,
        )
    except Exception as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    df = df.with_row_index("line", offset=1)
    bad = df.filter(pl.col("index").cast(pl.Int64, strict=False).is_null())
    if bad.height:
        raise InputError(f"{path} line {bad['line'][0]}: index {bad['index'][0]!r} is not an integer")
    df = df.with_columns(pl.col("index").cast(pl.Int64))
    for col in ("original", "index"):
        dup = df.filter(pl.col(col).is_duplicated())
        if dup.height:
            raise InputError(f"{path} line {dup['line'][0]}: duplicate {col} {dup[col][0]!r}")
    if df["index"].min() != 0 or df["index"].max() != df.height - 1:
        raise InputError(f"{path}: indices must be 0..{df.height - 1}, found {df['index'].min()}..{df['index'].max()}")
    return df.drop("line")


def _read_text(path: Path, field: str) -> pl.DataFrame:
    df = read_atomic(path)
    for col in ("item_id", field):
        if col not in df.columns:
            raise InputError(f"{path}: missing column {col!r} (columns: {', '.join(df.columns)})")
    dup = df.with_row_index("line", offset=2).filter(pl.col("item_id").is_duplicated())
    if dup.height:
        raise InputError(f"{path} line {dup['line'][0]}: duplicate item {dup['item_id'][0]!r}")
    text = pl.col(field).str.strip_chars()
    return df.select(pl.col("item_id").alias("item"), pl.when(text.str.len_chars() > 0).then(text).alias("text"))


def _read_histories(path: Path, n_items: int, n_users: int) -> pl.DataFrame:
    """user, hist (list of item indices, oldest first), target, line (1-based line in the file)."""
    df = read_atomic(path)
    for col in ("user_id", "item_id_list", "item_id"):
        if col not in df.columns:
            raise InputError(f"{path}: missing column {col!r} (columns: {', '.join(df.columns)})")
    df = df.with_row_index("line", offset=2).select(
        "line",
        pl.col("user_id").cast(pl.Int64, strict=False).alias("user"),
        pl.col("item_id_list").str.split(" ").list.eval(pl.element().cast(pl.Int64, strict=False)).alias("hist"),
        pl.col("item_id").cast(pl.Int64, strict=False).alias("target"),
        pl.col("user_id").alias("_u"),
        pl.col("item_id_list").alias("_h"),
        pl.col("item_id").alias("_t"),
    )
    checks = [
        (pl.col("user").is_null(), "user_id", "_u", "is not an integer index"),
        (pl.col("target").is_null(), "item_id", "_t", "is not an integer index"),
        (
            pl.col("hist").list.eval(pl.element().is_null()).list.any() | pl.col("_h").is_null(),
            "item_id_list",
            "_h",
            "holds a value that is not an integer index",
        ),
        (~pl.col("user").is_between(0, n_users - 1), "user_id", "_u", f"is outside the user index 0..{n_users - 1}"),
        (
            ~pl.col("target").is_between(0, n_items - 1)
            | ~pl.col("hist").list.eval(pl.element().is_between(0, n_items - 1)).list.all(),
            "item_id",
            "_t",
            f"or its history is outside the item index 0..{n_items - 1}",
        ),
    ]
    for cond, col, raw_col, what in checks:
        bad = df.filter(cond.fill_null(True))
        if bad.height:
            raise InputError(f"{path} line {bad['line'][0]}: {col} {bad[raw_col][0]!r} {what}")
    return df.select("user", "hist", "target", "line")


def _rebuild(train: pl.DataFrame, valid: pl.DataFrame, test: pl.DataFrame) -> pl.DataFrame:
    """user -> seq (full chronological list of item indices)."""
    # Train rows are newest first within a user: reverse file order is chronological.
    chrono = train.sort("line", descending=True)
    per_user = chrono.group_by("user", maintain_order=True).agg(
        pl.col("hist").first().alias("first_hist"), pl.col("target").alias("targets")
    )
    return (
        valid.select("user", pl.col("hist").alias("valid_hist"), pl.col("target").alias("valid_target"))
        .join(test.select("user", pl.col("target").alias("test_target")), on="user")
        .join(per_user, on="user", how="left")
        .select(
            "user",
            pl.when(pl.col("targets").is_null())
            .then(pl.col("valid_hist"))
            .otherwise(pl.col("first_hist").list.concat(pl.col("targets")))
            .list.concat(pl.concat_list("valid_target", "test_target"))
            .alias("seq"),
        )
        .sort("user")
    )


def _verify(seqs: pl.DataFrame, train: pl.DataFrame, valid: pl.DataFrame, test: pl.DataFrame, files: dict) -> None:
    """Every history in the files must equal the last L items before its target in the rebuilt sequence."""
    max_len = max(int(df["hist"].list.len().max() or 0) for df in (train, valid, test))
    seqs = seqs.with_columns(pl.col("seq").list.len().alias("n"))
    first_len = (
        train.sort("line", descending=True)
        .group_by("user", maintain_order=True)
        .agg(pl.col("hist").first().list.len().alias("k"))
    )
    train_pos = (
        train.sort("line", descending=True)
        .with_columns(pl.int_range(pl.len()).over("user").alias("rank"))
        .join(first_len, on="user")
        .with_columns((pl.col("k") + pl.col("rank")).alias("pos"))
    )
    cases = (
        (train_pos, files["train.inter"], pl.col("pos")),
        (valid, files["valid.inter"], pl.col("n") - 2),
        (test, files["test.inter"], pl.col("n") - 1),
    )
    for df, path, pos in cases:
        joined = df.join(seqs, on="user").with_columns(pos.alias("_p"))
        bad = joined.filter(
            (pl.col("seq").list.get(pl.col("_p"), null_on_oob=True) != pl.col("target")).fill_null(True)
            | (pl.col("seq").list.head(pl.col("_p")).list.tail(max_len) != pl.col("hist"))
        )
        if bad.height:
            raise InputError(
                f"{path} line {bad['line'][0]}: history/target of user index {bad['user'][0]} does not match the "
                f"sequence rebuilt from the split files ({bad.height} rows disagree); "
                "the files are not a consistent split"
            )
