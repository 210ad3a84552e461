"""Feature store -> Hugging Face `datasets.Dataset`, for downstream users who want features without Zarr.

Rows stream from the store a chunk at a time into an Arrow file (no full copy in memory); the store's
provenance goes into the dataset's description so it travels with the export.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from feature_store.store import FeatureStore, StoreError


def to_hf_dataset(store: FeatureStore, cache_dir: str | Path | None = None, keep_in_memory: bool = False):
    """Columns: item_id (str), embedding (float32[D]), mask (bool: False = no usable feature).
    Only a complete store exports (unwritten shards would read as zeros that look like features)."""
    import datasets

    if not store.is_complete():
        raise StoreError(
            f"{store.path}: {len(store.pending_shards())} shards are not written yet; "
            "finish (resume) the encode before exporting"
        )
    ids, mask = store.item_ids(), store.mask()

    def rows():
        for start, block in store.iter_blocks():
            block = np.asarray(block, np.float32)
            for r in range(block.shape[0]):
                yield {"item_id": str(ids[start + r]), "embedding": block[r], "mask": bool(mask[start + r])}

    features = datasets.Features(
        {
            "item_id": datasets.Value("string"),
            "embedding": datasets.List(datasets.Value("float32"), length=store.dim),
            "mask": datasets.Value("bool"),
        }
    )
    attrs = store.attrs
    info_attrs = {k: v for k, v in attrs.items() if k != "encode_runs"}
    # the fingerprint names the cache entry: it covers all attrs (creation time, provenance, encode_runs),
    # so a re-encoded, resumed or overwritten store gets a new cache entry instead of a stale one
    state = hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    ds = datasets.Dataset.from_generator(
        rows,
        features=features,
        cache_dir=str(cache_dir) if cache_dir else None,
        keep_in_memory=keep_in_memory,
        fingerprint=f"kdsr-{attrs.get('item_fingerprint')}-{store.dim}-{state}",
    )
    ds.info.description = "kdsr feature store export; provenance: " + json.dumps(info_attrs, default=str)
    return ds


def export_store(path: str | Path, out_dir: str | Path) -> Path:
    """`save_to_disk` the store at `path` into `out_dir` (load back with `datasets.load_from_disk`)."""
    ds = to_hf_dataset(FeatureStore.open(path))
    ds.save_to_disk(str(out_dir))
    return Path(out_dir)
