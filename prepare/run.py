"""`run_prepare(cfg) -> summary`: read the source, filter, order, split, map IDs, write the dataset folder.

Every interaction read is either in interactions.parquet or counted in stats.json `dropped` under a
reason, and likewise every item: read - dropped = kept, and the run checks that before writing.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from pathlib import Path

import polars as pl

from kdsr.config import save_config
from kdsr.dataset import IMAGE_COLUMN, SPLITS
from prepare import filters
from prepare.config import PrepareConfig
from prepare.readers import InputError, Raw
from prepare.split import split

log = logging.getLogger(__name__)

# Interaction drops every run reports, even at 0, in the order the filters run.
INTERACTION_DROPS = (
    "interactions.missing_value",
    "interactions.duplicate",
    "interactions.unknown_item",
    "interactions.rating_below_threshold",
    "interactions.item_without_text",
    "interactions.kcore",
)


def read_source(cfg: PrepareConfig) -> Raw:
    kind = cfg.source_kind
    if cfg.fallback is not None and not Path(cfg.table.interactions).exists():
        from prepare.amazon import read_fallback

        return read_fallback(cfg.table.interactions, cfg.fallback, cfg.policy.bad_rows)
    if kind == "table":
        from prepare.readers import read_table_source

        return read_table_source(cfg.table)
    if kind == "recbole_split":
        from prepare.recbole_split import read_recbole_split

        return read_recbole_split(cfg.recbole_split)
    if kind == "amazon":
        from prepare.amazon import read_amazon

        return read_amazon(cfg.amazon, cfg.policy.bad_rows)
    from prepare.huggingface import read_huggingface

    return read_huggingface(cfg.huggingface)


def run_prepare(cfg: PrepareConfig) -> dict:
    """Build the dataset folder at cfg.output_dir; log and return its one-line summary."""
    from prepare.output import check_replaceable

    out = Path(cfg.output_dir)
    check_replaceable(cfg, out, out.with_name(out.name + ".tmp"))  # before reading: a refusal costs nothing
    raw = read_source(cfg)
    inter, extra = process(raw, cfg)
    if inter.height == 0:
        lost = ", ".join(f"{k} {v:,}" for k, v in extra["dropped"].items() if v) or "the source is empty"
        raise InputError(f"{raw.inter_file}: no interactions left after the filters ({lost}); nothing to prepare")
    out, stats = write(cfg, raw, inter, extra)
    for line in summary_lines(stats):
        log.info("%s", line)
    keys = ("name", "n_users", "n_items", "n_interactions")
    return {**{k: stats[k] for k in keys}, "output": str(out)}


def summary_lines(stats: dict) -> list[str]:
    """What a person reads after a run: sizes and protocol, rows per split, and what was dropped."""
    seq_len = stats["seq_len"]
    dropped = {k: v for k, v in stats["dropped"].items() if v}
    return [
        f"{stats['name']}: {stats['n_users']:,} users, {stats['n_items']:,} items, "
        f"{stats['n_interactions']:,} interactions (protocol {stats['protocol']}, "
        f"sequence length mean {seq_len['mean']:.1f}, max {seq_len['max']})",
        "split: " + ", ".join(f"{k} {v:,}" for k, v in stats["split"].items()),
        "dropped: " + (", ".join(f"{k} {v:,}" for k, v in dropped.items()) if dropped else "nothing"),
    ]


def process(raw: Raw, cfg: PrepareConfig) -> tuple[pl.DataFrame, dict]:
    """Filters in a fixed order (bad rows, duplicates, unknown items, rating, text, k-core), then order and split."""
    dropped: dict[str, int] = dict.fromkeys(INTERACTION_DROPS, 0)
    dropped.update(raw.dropped)
    rounds = apply_filters(raw, cfg, dropped)
    # Stable chronological order: equal timestamps keep the order of record.
    inter = raw.interactions.sort(["user", "timestamp", "record"]).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int32).over("user").alias("position")
    )
    if raw.given_split:
        lost = {k: v for k, v in dropped.items() if k.startswith("interactions.") and v}
        if lost:
            raise InputError(
                f"{raw.inter_file}: the filters would drop rows {lost} from a given split, which must be kept "
                "exactly; relax filter.* (e.g. filter.kcore=0) or fix the files"
            )
        split_info, split_dropped = {"rule": "given by the source files (leave-one-out)"}, {}
    else:
        inter, split_dropped, split_info = split(inter, cfg.split)
    dropped.update(split_dropped)
    return inter, {"dropped": dropped, "kcore_rounds": rounds, "split_details": split_info}


def apply_filters(raw: Raw, cfg: PrepareConfig, dropped: dict[str, int]) -> int:
    """Run the filters on `raw` in place, counting each one's drops into `dropped`; returns the k-core rounds.
    The order matters: a duplicate or unknown item must be reported before k-core hides it."""
    policy, filter_cfg = cfg.policy, cfg.filter
    if filter_cfg.require_text and raw.items is None:
        raise InputError(
            f"{raw.inter_file}: filter.require_text is true but the source has no items table with text; "
            "give an items table or set filter.require_text: false"
        )
    dropped["interactions.missing_value"] += filters.drop_missing(raw, policy.bad_rows)
    if raw.items is not None:
        dropped["items.duplicate"] = filters.dedupe_items(raw, policy.duplicates)
        dropped["items.never_interacted"] = filters.drop_never_interacted(raw)
    dropped["interactions.duplicate"] = filters.dedupe_interactions(raw, policy.duplicates)
    if raw.items is not None:
        dropped["interactions.unknown_item"] = filters.drop_unknown_items(raw, policy.unknown_items)
    if filter_cfg.rating_threshold is not None:
        if "rating" not in raw.interactions.columns:
            raise InputError(f"{raw.inter_file}: filter.rating_threshold needs a rating column, the source has none")
        raw.interactions, dropped["interactions.rating_below_threshold"] = filters.rating_threshold(
            raw.interactions, filter_cfg.rating_threshold
        )
    if filter_cfg.require_text:
        dropped["items.without_text"], dropped["interactions.item_without_text"] = filters.require_text(raw)
    raw.interactions, dropped["interactions.kcore"], rounds = filters.kcore(raw.interactions, filter_cfg.kcore)
    return rounds


def _ids(originals: pl.Series, order: list | None, name: str) -> pl.DataFrame:
    """Contiguous IDs 1..N (0 = padding): in the source's own order when it has one, else sorted."""
    present = originals.unique()
    if order is not None:
        table = (
            pl.DataFrame({"original": order}).with_row_index("_o").filter(pl.col("original").is_in(present.implode()))
        )
        table = table.sort("_o").drop("_o")
    else:
        table = present.sort().to_frame("original")
    return table.with_row_index(name, offset=1).with_columns(pl.col(name).cast(pl.Int32))


def write(cfg: PrepareConfig, raw: Raw, inter: pl.DataFrame, extra: dict) -> tuple[Path, dict]:
    """Map IDs, check the accounting and write the folder; returns (folder, stats.json contents)."""
    interactions, items, users = id_mapped_tables(raw, inter)
    dropped = extra.pop("dropped")
    read_items = raw.read.get("items", items.height)
    if raw.items is not None:
        # Catalog items that had interactions but lost all of them to the filters (k-core, rating, split).
        dropped["items.filtered_out"] = raw.items.height - items.height
    stats = build_stats(cfg, raw, interactions, items, users, dropped, extra, read_items)
    _check_accounting(stats)

    from prepare.output import check_replaceable

    out = Path(cfg.output_dir)
    tmp = out.with_name(out.name + ".tmp")
    check_replaceable(cfg, out, tmp)  # both are removed below: only ever our own folders, never an input
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    items.write_parquet(tmp / "items.parquet")
    users.write_parquet(tmp / "users.parquet")
    interactions.write_parquet(tmp / "interactions.parquet")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    save_config(cfg, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # a half-written folder never looks like a finished dataset
    return out, stats


def id_mapped_tables(raw: Raw, inter: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(interactions, items, users) with contiguous kdsr IDs; items and users keep their original IDs beside."""
    items_ids = _ids(inter["item"], raw.item_order, "item")
    users_ids = _ids(inter["user"], raw.user_order, "user")
    interactions = (
        inter.join(
            users_ids.rename({"original": "user_o"}), left_on="user", right_on="user_o", how="left", suffix="_id"
        )
        .join(items_ids.rename({"original": "item_o"}), left_on="item", right_on="item_o", how="left", suffix="_id")
        .select(
            pl.col("user_id").alias("user"),
            pl.col("item_id").alias("item"),
            pl.col("timestamp").cast(pl.Int64),
            pl.col("position").cast(pl.Int32),
            pl.col("split").cast(pl.Utf8),
        )
        .sort(["user", "position"])
    )
    items = items_ids.select("item", pl.col("original").cast(pl.Utf8).alias("original_id"))
    if raw.items is not None:
        items = items_ids.join(raw.items, left_on="original", right_on="item", how="left").select(
            "item",
            pl.col("original").cast(pl.Utf8).alias("original_id"),
            *raw.text_fields,
            *([IMAGE_COLUMN] if raw.has_image else []),
        )
    users = users_ids.select("user", pl.col("original").cast(pl.Utf8).alias("original_id"))
    return interactions, items, users


def build_stats(cfg, raw, interactions, items, users, dropped, extra, read_items) -> dict:
    lengths = interactions.group_by("user").len()["len"].to_list() or [0]
    counts = interactions["split"].value_counts()
    per_split = {s: int(counts.filter(pl.col("split") == s)["count"].sum()) for s in SPLITS}
    return {
        "name": cfg.name,
        "protocol": "given" if raw.given_split else cfg.split.protocol,
        "n_users": users.height,
        "n_items": items.height,
        "n_interactions": interactions.height,
        "density": interactions.height / max(1, users.height * items.height),
        "seq_len": {
            "min": min(lengths),
            "max": max(lengths),
            "mean": statistics.fmean(lengths),
            "median": statistics.median(lengths),
        },
        "split": per_split,
        "split_users": {s: int(interactions.filter(pl.col("split") == s)["user"].n_unique()) for s in SPLITS},
        "dropped": dict(sorted(dropped.items())),
        "read": {"interactions": raw.read["interactions"], "items": read_items},
        "source": raw.source,
        "text_fields": raw.text_fields if raw.items is not None else [],
        "image_column": IMAGE_COLUMN if raw.items is not None and raw.has_image else None,
        "timestamp_unit": raw.timestamp_unit,
        "filter": cfg.filter.model_dump(),
        "notes": raw.notes,
        **extra,
    }


def _check_accounting(stats: dict) -> None:
    """read - dropped == kept, for interactions and items: nothing leaves without a reason."""
    for kind, kept in (("interactions", stats["n_interactions"]), ("items", stats["n_items"])):
        lost = sum(v for k, v in stats["dropped"].items() if k.startswith(kind + "."))
        if stats["read"][kind] - lost != kept:
            raise AssertionError(
                f"{kind}: read {stats['read'][kind]} - dropped {lost} != kept {kept}; a filter did not count its rows"
            )
