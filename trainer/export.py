"""Export a trained run's item tables as Zarr feature stores, so other systems (a vector index, a
downstream model, `kdsr dissect`) read what the recommender learned through the existing `FeatureStore`.

    kdsr export runs/train/beauty-sasrec-kd [tables=[scoring,text] dtype=float16 hf_dataset=true]

Tables: `scoring` (the rows that score candidates: fused, or the ID rows under model.score_items=id), `id` (the ID
embeddings) and one per modality (the trained V^m). Each store's rows follow the prepared dataset's item order
(row r = item r + 1, `item_ids` = the original IDs) and its attrs record the run, the hashes of its config and
weights, and the table. Re-running resumes the unfinished shards; a store exported from another run or
checkpoint is refused unless `overwrite`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from feature_store.store import FeatureStore, StoreError, fingerprint
from kdsr.config import ConfigError
from kdsr.files import file_sha256
from trainer.recommend import Recommender
from trainer.use_config import ExportConfig

log = logging.getLogger(__name__)

BUILT_IN = ("scoring", "id")
PINNED = (
    "kdsr_export_run",
    "config_sha256",
    "weights_sha256",
    "table",
    "dim",
    "dtype",
    "shard_size",
    "item_fingerprint",
)


def item_tables(rec: Recommender) -> dict[str, torch.Tensor]:
    """{table: (N, d) rows of items 1..N} of a loaded run (padding and BERT4Rec's [MASK] row left out)."""
    model, n = rec.model, rec.n_items
    clash = set(model.modality_tables) & set(BUILT_IN)
    if clash:
        raise ConfigError(
            f"{rec.run}: a modality is named {sorted(clash)[0]!r}, which export uses for a built-in table"
        )
    tables = {"scoring": rec.candidates()[1 : n + 1], "id": model.id_emb.weight[1 : n + 1]}
    return tables | {m: v[1 : n + 1] for m, v in model.modality_tables.items()}


def run_export(cfg: ExportConfig) -> dict:
    """The export stage: one store per table under `output` (and `output/hf` with hf_dataset)."""
    rec = Recommender.load(cfg.run, "cpu", cfg.check_inputs)
    tables = item_tables(rec)
    names = cfg.tables or list(tables)
    unknown = [t for t in names if t not in tables]
    if unknown:
        raise ConfigError(f"tables: no table {unknown[0]!r} in {cfg.run} (known: {', '.join(tables)})")
    out = Path(cfg.output or Path(cfg.run) / "export")
    ids = rec.item_ids[1:].tolist()
    common = {
        "kdsr_export_run": str(Path(cfg.run).resolve()),
        "config_sha256": file_sha256(Path(cfg.run) / "config.yaml"),
        "weights_sha256": file_sha256(Path(cfg.run) / "best" / "model.safetensors"),
        "dataset": rec.cfg.dataset,
        "item_order": "the prepared dataset's items.parquet, item 1..N: store row r = item r + 1",
        "backbone": rec.cfg.model.backbone,
        "score_items": rec.cfg.model.score_items,
        "inputs": rec.identity,
    }
    written = {}
    for name in names:
        x = tables[name].detach().float().cpu().numpy()
        attrs = common | {"table": name, "modality": name, "model": f"kdsr:{rec.cfg.model.backbone}"}
        path = out / f"{name}.zarr"
        store = open_or_create(path, ids, x.shape[1], cfg, attrs)
        for shard in store.pending_shards():
            start, stop = store.shard_rows(shard)
            store.write_shard(shard, x[start:stop])
        written[name] = {"path": str(path), "dim": x.shape[1]}
        log.info("%s: %d x %d -> %s", name, *x.shape, path)
    summary = {"output": str(out), "items": rec.n_items, "tables": written}
    if cfg.hf_dataset:
        summary["hf_dataset"] = str(write_hf_dataset(out / "hf", ids, {t: tables[t] for t in names}))
    return summary


def open_or_create(path: Path, ids: list[str], dim: int, cfg: ExportConfig, attrs: dict) -> FeatureStore:
    """The store at `path` to continue when it is this export's (same run, config, weights, table, shape),
    else a new one; another export's store is refused unless `overwrite`."""
    if path.exists() and not cfg.overwrite:
        store = FeatureStore.open(path, mode="r+")
        shape = {"dim": dim, "dtype": cfg.dtype, "shard_size": min(cfg.shard_size, len(ids))}
        want = attrs | shape | {"item_fingerprint": fingerprint(ids)}
        differ = [k for k in PINNED if store.attrs.get(k) != want.get(k)]
        if differ:
            raise StoreError(
                f"{path}: exported from another run, checkpoint or setting (differs in {', '.join(differ)}); "
                "set overwrite=true or choose another output"
            )
        return store
    return FeatureStore.create(
        path, ids, dim, dtype=cfg.dtype, shard_size=min(cfg.shard_size, len(ids)), attrs=attrs, overwrite=True
    )


def write_hf_dataset(path: Path, ids: list[str], tables: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face `datasets` folder (save_to_disk): columns item (1..N), item_id, one float list per
    table. Written beside the target and renamed into place."""
    import datasets

    columns = {"item": np.arange(1, len(ids) + 1, dtype=np.int32), "item_id": ids}
    columns |= {t: list(x.detach().float().cpu().numpy()) for t, x in tables.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path
