"""The three split protocols. Input: interactions sorted by (user, position) with `position` 0..n-1 per
user. Output: the same rows with `split`, minus users that cannot be split (counted), plus a dict of
details for stats.json."""

from __future__ import annotations

import polars as pl

from prepare.config import SplitConfig


def split(df: pl.DataFrame, cfg: SplitConfig) -> tuple[pl.DataFrame, dict[str, int], dict]:
    if cfg.protocol == "leave_one_out":
        return leave_one_out(df)
    if cfg.protocol == "ratio":
        return ratio(df, cfg.test_ratio, cfg.valid_ratio)
    return temporal(df, cfg)


def _drop_short(df: pl.DataFrame, min_len: int, reason: str) -> tuple[pl.DataFrame, dict[str, int]]:
    n = pl.len().over("user")
    short = df.filter(n < min_len)
    return df.filter(n >= min_len), {
        f"users.{reason}": short["user"].n_unique(),
        f"interactions.{reason}": short.height,
    }


def leave_one_out(df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int], dict]:
    """Last interaction = test, second to last = valid, the rest train. Users with < 3 are dropped."""
    df, dropped = _drop_short(df, 3, "too_short_for_split")
    n = pl.len().over("user")
    out = df.with_columns(
        pl.when(pl.col("position") == n - 1)
        .then(pl.lit("test"))
        .when(pl.col("position") == n - 2)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    return (
        out,
        dropped,
        {"rule": "per user: last = test, second to last = valid, rest = train; users with < 3 interactions dropped"},
    )


def ratio(df: pl.DataFrame, test_ratio: float, valid_ratio: float) -> tuple[pl.DataFrame, dict[str, int], dict]:
    """Per user: the last floor(n * test_ratio) interactions (at least 1) are test, the floor(n * valid_ratio)
    (at least 1 when valid_ratio > 0) before them valid, the rest train (at least 1, else the user is dropped).
    floor matches the public KDSR code (`int(len * ratio)`); the 'at least 1' makes every user testable."""
    n = pl.len().over("user")
    n_test = pl.max_horizontal((n * test_ratio).floor().cast(pl.Int64), pl.lit(1))
    n_valid = pl.max_horizontal((n * valid_ratio).floor().cast(pl.Int64), pl.lit(1)) if valid_ratio > 0 else pl.lit(0)
    df = df.with_columns(n_test.alias("_t"), n_valid.alias("_v"), n.alias("_n"))
    short = pl.col("_n") - pl.col("_t") - pl.col("_v") < 1
    dropped_rows = df.filter(short)
    df = df.filter(~short)
    out = df.with_columns(
        pl.when(pl.col("position") >= pl.col("_n") - pl.col("_t"))
        .then(pl.lit("test"))
        .when(pl.col("position") >= pl.col("_n") - pl.col("_t") - pl.col("_v"))
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("split")
    ).drop("_t", "_v", "_n")
    dropped = {
        "users.too_short_for_split": dropped_rows["user"].n_unique(),
        "interactions.too_short_for_split": dropped_rows.height,
    }
    info = {
        "test_ratio": test_ratio,
        "valid_ratio": valid_ratio,
        "rule": "per user: test = last max(1, floor(n*test_ratio)); valid = the max(1, floor(n*valid_ratio)) before "
        "(0 if valid_ratio = 0); train = the rest, which must be >= 1 or the user is dropped",
    }
    return out, dropped, info


def temporal(df: pl.DataFrame, cfg: SplitConfig) -> tuple[pl.DataFrame, dict[str, int], dict]:
    """One global cut in time: timestamp >= test_start is test, >= valid_start valid, earlier train.
    Without explicit cuts they are the timestamps at the (1 - test_ratio) and (1 - test_ratio - valid_ratio)
    quantiles of all interactions; equal timestamps always fall on the same side, so shares can exceed
    the ratios slightly. Nothing is dropped: users may have no train part (cold start) and are counted."""
    ts = df["timestamp"].sort()
    n = ts.len()

    def cut(share: float):
        k = n - int(n * share)
        return ts[min(k, n - 1)] if n else 0

    test_start = cfg.test_start if cfg.test_start is not None else cut(cfg.test_ratio)
    valid_start = (
        cfg.valid_start
        if cfg.valid_start is not None
        else (cut(cfg.test_ratio + cfg.valid_ratio) if cfg.valid_ratio > 0 else test_start)
    )
    out = df.with_columns(
        pl.when(pl.col("timestamp") >= test_start)
        .then(pl.lit("test"))
        .when(pl.col("timestamp") >= valid_start)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    per_user = out.group_by("user").agg(
        (pl.col("split") == "train").any().alias("has_train"), (pl.col("split") == "test").any().alias("has_test")
    )
    info = {
        "valid_start": valid_start,
        "test_start": test_start,
        "users_without_train": int((~per_user["has_train"]).sum()),
        "users_with_test": int(per_user["has_test"].sum()),
        "rule": "global: timestamp >= test_start = test, >= valid_start = valid, else train",
    }
    return out, {}, info
