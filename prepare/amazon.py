"""Amazon review dumps as users download them (McAuley lab), and `--download` from the official URLs.

    2014  reviews_<Cat>.json.gz      strict JSON lines: reviewerID, asin, overall, unixReviewTime (s)
          meta_<Cat>.json.gz         Python-literal dicts (single quotes), not JSON: asin, title, description,
                                     brand, categories
    2018  <Cat>.json.gz              JSON lines: reviewerID, asin, overall, unixReviewTime (s)
          meta_<Cat>.json.gz         JSON lines: asin, title, description [list], feature [list], brand,
                                     category [list]
    2023  <Cat>.jsonl.gz             JSON lines: user_id, parent_asin, asin, rating, timestamp (ms)
          meta_<Cat>.jsonl.gz        JSON lines: parent_asin, title, description [list], features [list], store,
                                     categories

2023 items are keyed by parent_asin (product, not variant), as the 2023 benchmark does; its timestamps stay
in milliseconds. Reviews are read by polars (fast); only on a parse error are lines scanned in Python to
name the bad line. Metadata is parsed line by line (the 2014 format is not JSON).
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
import os
import urllib.parse
import urllib.request
from pathlib import Path

import polars as pl

from kdsr.dataset import IMAGE_COLUMN
from prepare.config import AmazonSource
from prepare.fetch import DownloadError, check_reachable, fetch
from prepare.readers import InputError, Raw, text_column

log = logging.getLogger(__name__)

# version -> (base URL, reviews file pattern, meta file pattern); the pages that list categories:
# 2014 https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html
# 2018 https://cseweb.ucsd.edu/~jmcauley/datasets/amazon_v2/   2023 https://amazon-reviews-2023.github.io/
URLS = {
    "2014": (
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/",
        "reviews_{}.json.gz",
        "meta_{}.json.gz",
    ),
    "2018": (
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/",
        "categoryFiles/{}.json.gz",
        "metaFiles2/meta_{}.json.gz",
    ),
    "2023": (
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/",
        "review_categories/{}.jsonl.gz",
        "meta_categories/meta_{}.jsonl.gz",
    ),
}
# version -> JSON keys of (user, item, rating, timestamp) in the reviews, and the item key in the metadata.
REVIEW_KEYS = {
    "2014": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "2018": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "2023": ("user_id", "parent_asin", "rating", "timestamp"),
}
META_KEY = {"2014": "asin", "2018": "asin", "2023": "parent_asin"}


def official_urls(version: str, category: str) -> dict[str, str]:
    base, reviews, meta = URLS[version]
    return {"reviews": base + reviews.format(category), "meta": base + meta.format(category)}


def source_urls(src: AmazonSource, mirror: str | None = None) -> dict[str, str]:
    """Where each file comes from: the config's URLs, else the official ones of its category; a mirror (a base
    URL, e.g. KDSR_DATA_MIRROR) keeps the file names and replaces the rest."""
    urls = official_urls(src.version, src.category) if src.category else {}
    urls |= {k: u for k, u in (("reviews", src.reviews_url), ("meta", src.meta_url)) if u}
    if mirror:
        urls = {k: mirror.rstrip("/") + "/" + urllib.parse.urlparse(u).path.rsplit("/", 1)[1] for k, u in urls.items()}
    return urls


def local_paths(src: AmazonSource) -> dict[str, Path]:
    """Where the config's files are: explicit paths, else download_dir/<version>/<file name of its URL>."""
    urls = source_urls(src)
    out = {}
    for kind in ("reviews", "meta"):
        given = getattr(src, kind)
        if given is not None:
            out[kind] = Path(given).expanduser()
        elif kind in urls:
            name = Path(urllib.parse.urlparse(urls[kind]).path).name
            out[kind] = Path(src.download_dir).expanduser() / src.version / name
    return out


def download(src: AmazonSource, timeout: float = 5.0, base_url: str | None = None, hint: str = "") -> dict[str, Path]:
    """Fetch the source's reviews and metadata unless present (checksummed, resumable: prepare/fetch.py).
    Fails within `timeout` s when offline, with `hint` appended to the message."""
    urls = source_urls(src, base_url)
    if not urls:
        raise DownloadError("amazon.category is not set: pass --download CATEGORY")
    paths = local_paths(src.model_copy(update={"reviews": None, "meta": None}))
    if not all(paths[kind].exists() for kind in urls):
        hint = hint or " (and the metadata file) and set amazon.reviews / amazon.meta"
        check_reachable(urls["reviews"], timeout, hint)
    for kind, url in urls.items():
        try:
            fetch(url, paths[kind], src.sha256.get(kind))
        except DownloadError as e:
            if "HTTP 404" in str(e) and src.category:
                raise DownloadError(f"{e} (is {src.category!r} a {src.version} category name?)") from None
            raise
    return paths


def read_fallback(missing: str, src: AmazonSource, bad_rows: str) -> Raw:
    """The public dumps that stand in for a missing prepared table: downloaded into src.download_dir unless
    there (KDSR_DATA_MIRROR names another base URL), then read as any Amazon source."""
    urls = source_urls(src, os.environ.get("KDSR_DATA_MIRROR"))
    log.info("%s: not found; using the same data from its public source: %s", missing, ", ".join(urls.values()))
    hint = (
        f" (and {urls['meta']}) into {Path(src.download_dir).expanduser() / src.version}, or set KDSR_DATA_DIR "
        f"to a folder holding {Path(missing).parent.name}/{Path(missing).name}"
    )
    paths = download(src, base_url=os.environ.get("KDSR_DATA_MIRROR"), hint=hint)
    return read_amazon(src.model_copy(update={k: str(v) for k, v in paths.items()}), bad_rows)


def read_amazon(src: AmazonSource, bad_rows: str = "error") -> Raw:
    paths = local_paths(src)
    for kind, path in paths.items():
        if not path.is_file():
            hint = f"; run `kdsr prepare CONFIG --download {src.category}`" if src.category else ""
            raise InputError(f"{path}: {kind} file not found{hint}")
    user, item, rating, ts = REVIEW_KEYS[src.version]
    schema = {user: pl.Utf8, item: pl.Utf8, rating: pl.Float64, ts: pl.Int64}
    reviews, skipped = read_json_lines(paths["reviews"], schema, bad_rows)
    inter = reviews.select(
        pl.col(user).alias("user"),
        pl.col(item).alias("item"),
        pl.col(ts).alias("timestamp"),
        pl.col(rating).alias("rating"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("record"),
    )
    raw = Raw(
        inter,
        None,
        list(src.text_fields),
        {"format": f"amazon-{src.version}", **{k: str(v) for k, v in paths.items()}},
        inter_file=str(paths["reviews"]),
        items_file=str(paths.get("meta")),
        line_offset=1,
        read={"interactions": inter.height + skipped},
        timestamp_unit="ms" if src.version == "2023" else "s",
    )
    if skipped:
        raw.dropped["interactions.malformed_line"] = skipped
        raw.notes.append("record = index among the well-formed lines (malformed ones skipped)")
    if src.image_field and "meta" not in paths:
        raise InputError(
            f"amazon.image_field {src.image_field!r} needs the metadata file: set amazon.meta or amazon.category"
        )
    if "meta" in paths:
        items, meta_skipped, meta_read = read_meta(
            paths["meta"], src.version, src.text_fields, bad_rows, src.image_field
        )
        raw.items, raw.has_image = items, src.image_field is not None
        raw.read["items"] = meta_read
        if meta_skipped:
            raw.dropped["items.malformed_line"] = meta_skipped
    return raw


def _lines(path: Path):
    """Yield (line number, bytes) of a plain or gzipped file, streaming (dumps can be tens of GB)."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            yield from enumerate(f, 1)
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None


def read_json_lines(path: Path, schema: dict, bad_rows: str) -> tuple[pl.DataFrame, int]:
    """JSON lines with the given fields (others ignored). Returns (frame, number of malformed lines skipped).
    polars reads the file (gz included); only when it fails are the lines scanned to name the bad one."""
    try:
        return pl.read_ndjson(path, schema=schema), 0
    except Exception as first_error:
        good, bad = io.BytesIO(), []
        for n, line in _lines(path):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    raise ValueError("not a JSON object")
                good.write(line.rstrip(b"\r\n") + b"\n")
            except ValueError as e:
                bad.append((n, e))
                if bad_rows == "error":
                    break
        if not bad:
            raise InputError(f"{path}: cannot read JSON lines: {first_error}") from None
        if bad_rows == "error":
            n, e = bad[0]
            raise InputError(
                f"{path} line {n}: malformed JSON ({e}); policy.bad_rows: skip counts such lines instead"
            ) from None
        good.seek(0)
        return pl.read_ndjson(good, schema=schema), len(bad)


def read_meta(
    path: Path, version: str, text_fields: list[str], bad_rows: str, image_field: str | None = None
) -> tuple[pl.DataFrame, int, int]:
    """Item key + text fields [+ image URL] from a metadata file.
    Returns (items, malformed lines skipped, lines read)."""
    key = META_KEY[version]
    parse = _literal if version == "2014" else json.loads
    rows: dict[str, list] = {"item": [], **{f: [] for f in text_fields}}
    images: list[str | None] = []
    skipped, read = 0, 0
    for n, raw_line in _lines(path):
        line = raw_line.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        read += 1
        try:
            rec = parse(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:  # literal_eval raises all
            if bad_rows == "error":
                what = "a Python dict literal" if version == "2014" else "JSON"
                raise InputError(
                    f"{path} line {n}: malformed metadata, not {what} ({e}); policy.bad_rows: skip counts such lines"
                ) from None
            skipped += 1
            continue
        rows["item"].append(None if rec.get(key) is None else str(rec.get(key)))
        for f in text_fields:
            rows[f].append(_flatten(rec.get(f)))
        if image_field:
            images.append(_image_url(rec.get(image_field)))
    df = pl.DataFrame(rows, schema={"item": pl.Utf8, **{f: pl.Utf8 for f in text_fields}})
    no_key = df.with_row_index("_r").filter(pl.col("item").is_null())
    if no_key.height:
        raise InputError(
            f"{path}: {no_key.height} metadata records have no {key!r} (first at record {no_key['_r'][0]})"
        )
    image = [pl.Series(IMAGE_COLUMN, images, pl.Utf8)] if image_field else []
    return df.select("item", *[text_column(df, f) for f in text_fields], *image), skipped, read


def _literal(line: str):
    """The 2014 metadata is `repr` of Python dicts: parse it safely (never `eval`)."""
    return ast.literal_eval(line)


def _image_url(value) -> str | None:
    """One URL from a metadata image field: the first of a list; of a 2023 image dict its hi_res, else large."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("hi_res") or value.get("large")
    return (value.strip() or None) if isinstance(value, str) else None


def _flatten(value) -> str | None:
    """Text from a metadata value: lists (possibly nested, like 2014 `categories`) joined by spaces."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [_flatten(v) for v in value]
        return " ".join(p for p in parts if p) or None
    if isinstance(value, dict):
        return None  # structured fields (images, details) are not text
    return str(value)
