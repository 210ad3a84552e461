"""The typed `kdsr prepare` config: exactly one source section, then filters, bad-input policy and split.

Defaults follow the field's standard protocol (docs/METHOD.md, "Evaluation protocol"): 5-core, items must
have text, leave-one-out. Bad input is an error unless a policy here says to skip it (then it is counted).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdsr.config import Config
from kdsr.dataset import IMAGE_COLUMN

SOURCES = ("table", "recbole_split", "amazon", "huggingface")


class Columns(Config):
    """Column names in the source tables (RecBole atomic headers without their `:type` suffix)."""

    user: str = "user_id"
    item: str = "item_id"
    # None: the table has no time column; the record order is the chronological order.
    timestamp: str | None = "timestamp"
    # Only read when filter.rating_threshold is set.
    rating: str | None = None
    # True: user and item IDs must be integers; a row that is not is an error naming it.
    integer_ids: bool = False


class TableSource(Config):
    """Generic interactions (+ items) tables: Parquet, CSV/TSV, or RecBole atomic files (.inter/.item)."""

    interactions: str
    items: str | None = None
    # auto: by suffix (.parquet/.pq, .csv, .tsv, .inter/.item = RecBole atomic with typed headers).
    format: Literal["auto", "parquet", "csv", "recbole"] = "auto"
    # CSV field separator; None means "," for .csv and a tab for .tsv.
    separator: str | None = None
    columns: Columns = Columns()
    # Item columns kept as text (they go to items.parquet); the first must be non-empty unless all are empty.
    text_fields: list[str] = ["title"]
    # Item column with the item ID in the items table; None: same name as columns.item.
    items_item_column: str | None = None
    # Items-table column with a local image path (relative to the prepared dataset folder) or http(s) URL per item (a
    # list: its first entry), written to items.parquet as `image` for image encoders; not subject to require_text.
    image_field: str | None = None


class RecboleSplitSource(Config):
    """UniSRec/RecBole benchmark split files: <name>.{train,valid,test}.inter, .text, .item2index, .user2index."""

    path: str
    # File stem, e.g. "Scientific"; None: the single *.train.inter in the folder decides.
    name: str | None = None
    text_field: str = "text"


class AmazonSource(Config):
    """Amazon review dumps as downloaded: 2014/2018 reviews + metadata JSON lines, 2023 JSONL (gz or not)."""

    version: Literal["2014", "2018", "2023"]
    # Paths to the files; None: <download_dir>/<version>/<official file name for category>.
    reviews: str | None = None
    meta: str | None = None
    category: str | None = None
    download_dir: str = "data/amazon"  # `~` is the user's home
    # Where to download from; None: the official URL of `category` (the names above follow these URLs).
    reviews_url: str | None = None
    meta_url: str | None = None
    # Published SHA-256 of the downloaded files ({reviews: ..., meta: ...}); a file without one is pinned on its
    # first download (<file>.sha256 beside it) and checked against that ever after.
    sha256: dict[Literal["reviews", "meta"], str] = {}
    text_fields: list[str] = ["title"]
    # Metadata field with the item's images, written to items.parquet as `image` (one URL; not subject to
    # require_text): 2023 `images` (first image's hi_res, else large), 2018 `imageURLHighRes`/`image`, 2014 `imUrl`.
    image_field: str | None = None


class HFDatasetRef(Config):
    """A Hugging Face dataset: a hub id (users with internet) or a local `save_to_disk` folder."""

    path: str
    name: str | None = None
    # Which split of a DatasetDict; None: the only one there is.
    split: str | None = None
    revision: str | None = None


class HuggingFaceSource(Config):
    interactions: HFDatasetRef
    items: HFDatasetRef | None = None
    columns: Columns = Columns()
    text_fields: list[str] = ["title"]
    items_item_column: str | None = None


class FilterConfig(Config):
    # Keep interactions with rating >= this (needs a rating column); None keeps all.
    rating_threshold: float | None = None
    # Iterative k-core on users and items (the field's 5-core); 0 or 1 disables it.
    kcore: int = Field(5, ge=0)
    # Drop items whose text fields are all empty, with their interactions (counted): encoders need text.
    require_text: bool = True


class PolicyConfig(Config):
    """What to do with bad input. `error` (default) stops with the file and row; the others count it."""

    # Duplicate rows: identical (user, item, timestamp) interactions, or an item ID twice in the items table.
    duplicates: Literal["error", "drop"] = "error"
    # Interactions whose item is not in the items table.
    unknown_items: Literal["error", "drop"] = "error"
    # Rows that cannot be used: malformed JSON lines, missing user/item/timestamp values.
    bad_rows: Literal["error", "skip"] = "error"


class SplitConfig(Config):
    # leave_one_out: last = test, second to last = valid (the standard). ratio: last test_ratio of each
    # user's interactions (the public KDSR code's protocol). temporal: one global cut in time.
    protocol: Literal["leave_one_out", "ratio", "temporal"] = "leave_one_out"
    # ratio: share of each user's interactions (floor, at least 1); temporal: share of all interactions.
    test_ratio: float = Field(0.2, gt=0, lt=1)
    # A validation part so model selection never looks at test; 0 disables it (ratio/temporal only).
    valid_ratio: float = Field(0.1, ge=0, lt=1)
    # temporal only: explicit cut points (same unit as the timestamps); they override the ratios.
    valid_start: int | None = None
    test_start: int | None = None


class PrepareConfig(Config):
    name: str
    output_dir: str
    table: TableSource | None = None
    recbole_split: RecboleSplitSource | None = None
    amazon: AmazonSource | None = None
    huggingface: HuggingFaceSource | None = None
    # When the table source's files are missing (no KDSR_DATA_DIR, no ../shared/data): the same data from its
    # public Amazon dumps, downloaded into fallback.download_dir once (KDSR_DATA_MIRROR: another base URL).
    fallback: AmazonSource | None = None
    filter: FilterConfig = FilterConfig()
    policy: PolicyConfig = PolicyConfig()
    split: SplitConfig = SplitConfig()

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        given = [s for s in SOURCES if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one source section is needed ({', '.join(SOURCES)}); got {given or 'none'}")
        if self.split.valid_ratio + self.split.test_ratio >= 1:
            raise ValueError("split.valid_ratio + split.test_ratio must be < 1")
        s = self.split
        if s.valid_start is not None and s.test_start is not None and s.valid_start > s.test_start:
            raise ValueError("split.valid_start must be <= split.test_start")
        if self.recbole_split is not None and s.protocol != "leave_one_out":
            raise ValueError(
                "recbole_split keeps the files' own leave-one-out split: split.protocol must be leave_one_out"
            )
        image_field = getattr(self.source, "image_field", None)
        if image_field and IMAGE_COLUMN in getattr(self.source, "text_fields", []):
            raise ValueError(
                f"{self.source_kind}.text_fields has {IMAGE_COLUMN!r}, the column image_field is written to; "
                "rename or drop it"
            )
        for key in ("amazon", "fallback"):
            src = getattr(self, key)
            if src is not None and src.reviews is None and src.category is None and src.reviews_url is None:
                raise ValueError(f"{key}: set reviews (a path), reviews_url or category (files under download_dir)")
        if self.fallback is not None and self.table is None:
            raise ValueError("fallback: only for a `table` source (the prepared Parquet files it stands in for)")
        if self.filter.rating_threshold is not None and self.source_kind in ("table", "huggingface"):
            if self.source.columns.rating is None:
                raise ValueError(f"filter.rating_threshold needs {self.source_kind}.columns.rating")
        return self

    @property
    def source_kind(self) -> str:
        return next(s for s in SOURCES if getattr(self, s) is not None)

    @property
    def source(self):
        return getattr(self, self.source_kind)
