"""Encode a prepared dataset's items into a Zarr feature store with Ray actors, shard by shard.

The driver reads the item table (polars), renders the inputs, plans the actors and hands each actor whole
shards (one Zarr chunk of rows each). An actor loads the model once, embeds a shard (length-sorted
batches) and writes it itself, then marks it done; writes are idempotent, so Ray's task retries and actor
restarts are harmless, and a rerun after a crash encodes only the shards not marked done.

Actors are used directly rather than Ray Data: measured here, Ray Data's fixed start-up (6-8 s) was a large
share of a 12k-item job, and with the driver doing the reading there are no read tasks that the actors could
starve of CPUs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.config import EncodeConfig, EncoderConfig, RayConfig
from feature_store.models import ResolvedModel, resolve_model
from feature_store.planner import Plan, plan_cpu, plan_gpu
from feature_store.store import FeatureStore, StoreError, check_output, fingerprint
from kdsr.dataset import PreparedDataset
from kdsr.progress import Progress

log = logging.getLogger(__name__)

# Provenance keys a resumed run must share with the store it continues.
RESUME_KEYS = (
    "modality",
    "model",
    "revision",
    "weights_hash",
    "pooling",
    "normalize",
    "precision",
    "quantization",
    "max_length",
    "template",
    "image_column",
    "item_table_fingerprint",
    "item_fingerprint",
    "dtype",
    "shard_size",
)
INFLIGHT_PER_ACTOR = 2  # one shard running, one queued: the actor never waits for the driver


class ShardEncoder:
    """Ray actor: one loaded model, embeds whole shards and writes them to the store."""

    def __init__(
        self,
        enc: dict,
        revision: str | None,
        store_path: str,
        base_dir: str,
        device: str,
        threads: int,
        max_memory: dict | None,
    ):
        import torch
        import transformers

        from feature_store.models import load_model

        torch.set_num_threads(threads)
        transformers.utils.logging.disable_progress_bar()
        self.cfg = EncoderConfig(**enc)
        resolved = resolve_model(self.cfg.model, revision, with_hash=False)
        model, prep = load_model(self.cfg, resolved, device=device, max_memory=max_memory)
        if self.cfg.modality == "image":
            from feature_store.vision import ImageEmbedder

            self.embedder = ImageEmbedder(model, prep, self.cfg, device=device, base_dir=base_dir)
        else:
            from feature_store.text import TextEmbedder

            self.embedder = TextEmbedder(model, prep, self.cfg, device=device)
        self.store_path = store_path
        self.store: FeatureStore | None = None

    def dim(self) -> int:
        return self.embedder.dim

    def niceness(self) -> int:
        return os.nice(0)

    def encode(self, shard: int, inputs: list[str | None], reasons: list[str]) -> dict[str, Any]:
        """Embed one shard's inputs (None = known to be unusable, reason given) and write the shard."""
        t0 = time.perf_counter()
        if self.store is None:
            self.store = FeatureStore.open(self.store_path, mode="r+")
        n = len(inputs)
        valid = [i for i, x in enumerate(inputs) if x is not None]
        emb = np.zeros((n, self.embedder.dim), np.float32)
        mask = np.zeros(n, bool)
        reasons = list(reasons)
        if self.cfg.modality == "image":
            e, m, why = self.embedder.embed([inputs[i] for i in valid])
            emb[valid], mask[valid] = e, m
            for j, i in enumerate(valid):
                reasons[i] = why[j]
        elif valid:
            emb[valid] = self.embedder.embed([inputs[i] for i in valid])
            mask[valid] = True
        mask_nonfinite(emb, mask, reasons)
        self.store.write_shard(shard, emb, mask, reasons)
        return {"shard": shard, "items": n, "errors": int(n - mask.sum()), "seconds": time.perf_counter() - t0}


def mask_nonfinite(emb: np.ndarray, mask: np.ndarray, reasons: list[str]) -> int:
    """A model's NaN / inf rows (an fp16 overflow, a broken input) masked in place, with the reason; returns how
    many. Left in, one such row would poison every cosine the dissection and the teacher compute with it."""
    bad = np.flatnonzero(mask & ~np.isfinite(emb).all(1))
    for i in bad:
        mask[i], emb[i], reasons[i] = False, 0.0, "non-finite embedding (NaN or inf) from the model"
    return len(bad)


# ---- driver side ---------------------------------------------------------------------------------
def init_ray(ray_cfg: RayConfig) -> bool:
    """Join a cluster (address, or RAY_ADDRESS as set by `ray job submit`), else start an embedded local
    Ray with its dashboard (if any) on 127.0.0.1. Returns whether we started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, log_to_driver=True)
    if ray_cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=ray_cfg.address, **quiet)
        return True
    ray.init(
        num_cpus=ray_cfg.num_cpus,
        include_dashboard=ray_cfg.include_dashboard,
        dashboard_host=ray_cfg.dashboard_host,
        **quiet,
    )
    return True


def make_plan(cfg: EncodeConfig, resolved) -> Plan:
    import ray

    res = cfg.resources
    total = ray.cluster_resources()
    n_gpus = int(total.get("GPU", 0))
    device = res.device if res.device != "auto" else ("cuda" if n_gpus > 0 else "cpu")
    if device == "cpu":
        return plan_cpu(total.get("CPU", 1), res.num_actors, res.torch_threads, res.cpus_per_actor)
    if n_gpus == 0:
        raise StoreError("resources.device is cuda but the Ray cluster has no GPUs")
    from feature_store.models import count_parameters

    mem = res.gpu_memory_gib or ray.get(ray.remote(num_gpus=1)(_gpu_memory_gib).remote())
    return plan_gpu(
        count_parameters(resolved, cfg.encoder),
        cfg.encoder.precision,
        cfg.encoder.quantization,
        mem,
        n_gpus,
        res.headroom,
        res.gpus_per_actor,
        res.num_actors,
    )


def _gpu_memory_gib() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / (1 << 30)


def build_inputs(cfg: EncodeConfig, ds: PreparedDataset) -> tuple[list[str], list[str | None], list[str]]:
    """(item IDs, one input per item or None, reason per item) in store row order."""
    items = ds.items.sort("item")
    ids = ds.item_original_ids()
    if cfg.limit:
        items, ids = items.head(cfg.limit), ids[: cfg.limit]
    enc = cfg.encoder
    if enc.modality == "text":
        from feature_store.text import render_texts

        texts = render_texts(items, enc.template, source=str(ds.path / "items.parquet"))
        inputs: list[str | None] = [t if t.strip() else None for t in texts]
        reasons = ["" if t is not None else "empty text" for t in inputs]
    else:
        if enc.image_column not in items.columns:
            raise StoreError(
                f"{ds.path / 'items.parquet'}: no image column {enc.image_column!r} "
                f"(columns: {', '.join(items.columns)})"
            )
        inputs = [None if v is None or not str(v).strip() else str(v) for v in items[enc.image_column].to_list()]
        reasons = ["" if v is not None else "no image" for v in inputs]
    return ids, inputs, reasons


def provenance(cfg: EncodeConfig, resolved, inputs: list[str | None], ids: list[str]) -> dict[str, Any]:
    enc = cfg.encoder
    return {
        "modality": enc.modality,
        **resolved.provenance(),
        "pooling": enc.pooling,
        "normalize": enc.normalize,
        "precision": enc.precision,
        "quantization": enc.quantization,
        "max_length": enc.max_length if enc.modality == "text" else None,
        "template": enc.template if enc.modality == "text" else None,
        "image_column": enc.image_column if enc.modality == "image" else None,
        "dataset": str(cfg.dataset),
        # what was encoded, row by row: catches an item table edited in place under the same IDs
        "item_table_fingerprint": fingerprint([f"{i}\t{x}" for i, x in zip(ids, inputs)]),
    }


class ResumeMismatchError(StoreError):
    """The store at output.path was made with other settings than the config asks for."""


def open_existing(cfg: EncodeConfig, ids: list[str], prov: dict[str, Any]) -> FeatureStore | None:
    """The store at output.path to resume, checked against this run's settings; None when there is none
    (or output.overwrite is set). A local path holding something else is an error, never overwritten."""
    out = cfg.output
    check_output(out.path, [cfg.dataset])  # before Ray starts: never into an input, nor over what is not ours
    remote = "://" in out.path
    if out.overwrite or not (remote or Path(out.path).exists()):
        return None
    try:
        store = FeatureStore.open(out.path, mode="r+")
    except StoreError:
        if remote:  # "absent" and "not a store" look alike remotely; create (mode w-) refuses existing data
            return None
        raise
    check_resumable(
        store, {**prov, "item_fingerprint": fingerprint(ids), "dtype": out.dtype, "shard_size": out.shard_size}
    )
    return store


def check_resumable(store: FeatureStore, expected: dict[str, Any]) -> None:
    """Refuse a resume with other settings. A first run from the hub records the commit it resolved to but no
    weights hash (the actors download the weights); a resume that finds the same commit in the cache and can
    hash it now is the same model, so the hash it recorded as unknown is filled in, not held against it."""
    have = store.attrs
    same_commit = have.get("revision") is not None and have.get("revision") == expected.get("revision")
    if same_commit and have.get("weights_hash") is None and expected.get("weights_hash") is not None:
        store.update_attrs(weights_hash=expected["weights_hash"])
        have = store.attrs
    diff = [k for k in RESUME_KEYS if k in expected and have.get(k) != expected[k]]
    if "revision" in diff:
        was, now = have.get("revision"), expected.get("revision")
        raise ResumeMismatchError(
            f"{store.path}: the model's revision resolved to {now!r} now, but the finished shards were encoded at "
            f"{was!r} (a moving revision such as `main` moved on the hub?); set encoder.revision={was} to finish "
            "with the same weights, or output.overwrite=true to re-encode at the new one"
        )
    if diff:
        lines = "; ".join(f"{k}: store {have.get(k)!r}, config {expected[k]!r}" for k in diff)
        raise ResumeMismatchError(
            f"{store.path}: existing store was made with different settings ({lines}); "
            "set output.overwrite=true to re-encode, or choose another output.path"
        )


@dataclass
class Work:
    """What one encode run embeds, all settled before any Ray actor starts."""

    ds: PreparedDataset
    ids: list[str]  # item IDs in store row order
    inputs: list[str | None]  # one text or image reference per item; None: known to be unusable
    reasons: list[str]  # why an input is None ("" otherwise)
    resolved: ResolvedModel
    provenance: dict[str, Any]


def run_encode(cfg: EncodeConfig) -> dict[str, Any]:
    """Encode (or resume) and return the run summary, also appended to the store's `encode_runs` attr."""
    t_start = time.perf_counter()
    ds = PreparedDataset.open(cfg.dataset)
    ids, inputs, reasons = build_inputs(cfg, ds)
    if not ids:  # before Ray starts and the model loads
        raise StoreError(f"{ds.path / 'items.parquet'}: no items to encode (an empty catalog)")
    resolved = resolve_model(cfg.encoder.model, cfg.encoder.revision)
    work = Work(ds, ids, inputs, reasons, resolved, provenance(cfg, resolved, inputs, ids))
    store = open_existing(cfg, ids, work.provenance)
    if store is not None and store.is_complete():  # nothing to do for a finished store: no Ray at all
        log.info("%s: complete, nothing to encode", cfg.output.path)
        nothing = {"items": 0, "errors": 0, "seconds": time.perf_counter() - t_start, "items_per_s": 0.0, "shards": []}
        return {**nothing, "output": str(cfg.output.path)}
    store, plan, results, t_ready = encode_with_ray(cfg, work, store, t_start)
    summary = run_summary(results, plan, t_start, t_ready)
    store.update_attrs(encode_runs=list(store.attrs.get("encode_runs", [])) + [summary])
    log.info(
        "encode done: %d items, %d errors, %.1f s, %.0f items/s end to end (%.0f items/s after a %.1f s start-up)",
        summary["items"],
        summary["errors"],
        summary["seconds"],
        summary["items_per_s"],
        summary["steady_items_per_s"],
        summary["startup_s"],
    )
    return {**summary, "output": str(cfg.output.path)}


def encode_with_ray(
    cfg: EncodeConfig, work: Work, store: FeatureStore | None, t_start: float
) -> tuple[FeatureStore, Plan, list[dict], float]:
    """Start Ray and the actors, create the store (or continue `store`), encode its pending shards.
    Returns (store, plan, per-shard results, time the model was ready); Ray is shut down if we started it."""
    import ray

    owns_ray = init_ray(cfg.ray)
    actors: list = []
    try:
        plan = make_plan(cfg, work.resolved)
        log.info("plan: %s%s", plan.describe(), "".join(f" [{n}]" for n in plan.notes))
        actors = start_actors(cfg, work, plan)
        store = ready_store(cfg, work, store, ray.get(actors[0].dim.remote()))
        warn_if_deprioritised(ray.get(actors[0].niceness.remote()))
        pending = store.pending_shards()
        t_ready = time.perf_counter()
        log.info(
            "encoding %d of %d shards (%d items) with %d actor(s); model ready after %.1f s",
            len(pending),
            store.n_shards,
            sum(b - a for a, b in map(store.shard_rows, pending)),
            len(actors),
            t_ready - t_start,
        )
        results = dispatch(store, pending, work.inputs, work.reasons, actors, cfg.progress_every_s)
    finally:
        for actor in actors:
            ray.kill(actor)
        if owns_ray:
            ray.shutdown()
    return store, plan, results, t_ready


def warn_if_deprioritised(worker_nice: int) -> None:
    """Ray starts its workers at nice 15 by default: say so, since any other job on the cores then starves the
    encode, and say how to change it."""
    driver_nice = os.nice(0)
    if worker_nice > driver_nice:
        log.warning(
            "Ray runs the encode's workers at nice %d (this driver at %d): other work on these cores goes first "
            "and can slow the encode to a crawl (progress lines keep coming: slow, not hung). To run them at normal "
            "priority, set RAY_worker_niceness=0 in the environment of `kdsr encode` (embedded Ray) or of "
            "`ray start` (a cluster).",
            worker_nice,
            driver_nice,
        )


def start_actors(cfg: EncodeConfig, work: Work, plan: Plan) -> list:
    """The plan's actors, each loading the model once (retried and restarted by Ray on failure)."""
    import ray

    actor_cls = ray.remote(max_restarts=3, max_task_retries=3)(ShardEncoder)
    opts = {"num_cpus": plan.cpus_per_actor, "num_gpus": plan.gpus_per_actor}
    return [
        actor_cls.options(**opts).remote(
            cfg.encoder.model_dump(),
            work.resolved.revision,
            str(cfg.output.path),
            str(work.ds.path),
            plan.device,
            plan.torch_threads,
            plan.max_memory,
        )
        for _ in range(plan.num_actors)
    ]


def ready_store(cfg: EncodeConfig, work: Work, store: FeatureStore | None, dim: int) -> FeatureStore:
    """The store to write: the one being resumed, else a new one of the model's width."""
    out = cfg.output
    if store is None:
        store = FeatureStore.create(
            out.path,
            work.ids,
            dim,
            dtype=out.dtype,
            shard_size=out.shard_size,
            attrs=work.provenance,
            overwrite=out.overwrite,
            inputs=[cfg.dataset],
        )
    if store.dim != dim:
        raise StoreError(f"{out.path}: store has {store.dim} dims, the model gives {dim}")
    return store


def run_summary(results: list[dict], plan: Plan, t_start: float, t_ready: float) -> dict[str, Any]:
    """Throughput end to end and after start-up (model loading), recorded in the store per run."""
    t_end = time.perf_counter()
    items = sum(r["items"] for r in results)
    return {
        "items": items,
        "errors": sum(r["errors"] for r in results),
        "seconds": round(t_end - t_start, 3),
        "items_per_s": round(items / max(t_end - t_start, 1e-9), 1),
        "startup_s": round(t_ready - t_start, 3),
        "steady_items_per_s": round(items / max(t_end - t_ready, 1e-9), 1),
        "shards": sorted(r["shard"] for r in results),
        "plan": plan.describe(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def dispatch(store: FeatureStore, pending: list[int], inputs, reasons, actors, every_s: float) -> list[dict]:
    """Keep INFLIGHT_PER_ACTOR shards queued on each actor; collect results as they finish."""
    import ray

    queue = deque(pending)
    inflight: dict[Any, Any] = {}
    load = {i: 0 for i in range(len(actors))}
    progress = Progress(
        sum(b - a for a, b in map(store.shard_rows, pending)), "encode", "items", bar=False, every_s=every_s, logger=log
    )
    results, errors = [], 0
    while queue or inflight:
        for i, actor in enumerate(actors):
            while queue and load[i] < INFLIGHT_PER_ACTOR:
                s = queue.popleft()
                a, b = store.shard_rows(s)
                inflight[actor.encode.remote(s, inputs[a:b], reasons[a:b])] = (s, i)
                load[i] += 1
        # a timeout, so a line comes every every_s even while no shard finishes (a starved encode is not a hung one)
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=every_s)
        if not done:
            progress.update(0, errors=errors)
        for ref in done:
            s, i = inflight.pop(ref)
            load[i] -= 1
            try:
                r = ray.get(ref)
            except Exception as e:
                raise RuntimeError(f"shard {s} (rows {store.shard_rows(s)}) failed: {e}") from e
            results.append(r)
            errors += r["errors"]
            progress.update(r["items"], errors=errors)
    progress.close()
    return results
