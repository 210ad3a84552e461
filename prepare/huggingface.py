"""A Hugging Face `datasets` source: a hub id (e.g. McAuley-Lab/Amazon-Reviews-2023 for users with internet)
or a local `save_to_disk` folder. Tables are converted to polars and go through the generic column reader."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prepare.config import HFDatasetRef, HuggingFaceSource
from prepare.readers import InputError, Raw, from_frames


def load_frame(ref: HFDatasetRef) -> pl.DataFrame:
    import datasets

    try:
        if Path(ref.path).exists():
            ds = datasets.load_from_disk(ref.path)
        else:
            ds = datasets.load_dataset(ref.path, ref.name, revision=ref.revision)
    except Exception as e:
        raise InputError(f"{ref.path}: cannot load Hugging Face dataset: {type(e).__name__}: {e}") from None
    if isinstance(ds, (datasets.DatasetDict, dict)):
        if ref.split is None:
            if len(ds) != 1:
                raise InputError(f"{ref.path}: has splits {', '.join(ds)}; set split")
            ds = next(iter(ds.values()))
        elif ref.split not in ds:
            raise InputError(f"{ref.path}: no split {ref.split!r} (has {', '.join(ds)})")
        else:
            ds = ds[ref.split]
    return ds.to_polars()


def read_huggingface(src: HuggingFaceSource) -> Raw:
    items = load_frame(src.items) if src.items else None
    raw = from_frames(
        load_frame(src.interactions),
        items,
        src.columns,
        src.text_fields,
        src.interactions.path,
        src.items.path if src.items else None,
        items_item_column=src.items_item_column,
        line_offset=None,
    )
    raw.source = {
        "format": "huggingface",
        "interactions": src.interactions.path,
        **({"items": src.items.path} if src.items else {}),
    }
    return raw
