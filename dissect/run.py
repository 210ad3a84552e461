"""`dissect(cfg)`: features store -> dissection store (reduced features + facets + correlation-type codebook).

The output is itself a FeatureStore (same item_ids and mask, embeddings = reduced float32 features), so the
trainer reads one store, plus `facets` [d], `centroids` [K, F], `dim_affinity` [d, d] and provenance in
attrs["dissect"]. Only the reduced N x d matrix is held in memory (512 MB at 1M x 128).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from feature_store.store import FeatureStore, StoreError
from kdsr.config import config_to_dict
from kdsr.dataset import PreparedDataset

from .codebook import CodebookError, assign_codes, cooccur_pairs, facet_similarity, fit_codebook, uniform_pairs
from .config import DissectConfig
from .facets import assign_facets, chunk_facets, facet_quality, facet_sizes
from .reduce import fit_reduction, write_reduced

Log = Callable[[str], None]


def default_output(features: str) -> str:
    return DissectConfig(features=features).resolved_output()


def train_sequences(ds: PreparedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [U+1], store rows) of every user's training items in chronological order."""
    df = ds.interactions.filter(pl.col("split") == "train").sort(["user", "position"])
    counts = df.group_by("user", maintain_order=True).len()["len"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, df["item"].to_numpy().astype(np.int64) - 1


def dissect(cfg: DissectConfig, log: Log = print) -> Path:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    src = FeatureStore.open(cfg.features)
    if not src.is_complete():
        raise StoreError(
            f"{cfg.features}: {len(src.pending_shards())} shards are not written yet; finish the encode first"
        )
    ds = None
    if cfg.dataset:
        ds = PreparedDataset.open(cfg.dataset)
        src.check_items(ds.item_original_ids(), source=f"dataset {cfg.dataset}")
    out = cfg.resolved_output()
    if Path(out).resolve() == Path(cfg.features).resolve():
        raise StoreError(f"{out}: the dissection output must not be the input store")
    if Path(out).exists() and not cfg.overwrite:
        raise StoreError(f"{out}: already exists; set overwrite=true to replace it")
    N, D, d = src.n_items, src.dim, (src.dim if cfg.reduce.method == "none" else cfg.reduce.dim)
    need_gb = N * d * 4 / 2**30
    if need_gb > cfg.max_memory_gb:
        raise StoreError(
            f"{cfg.features}: {N:,} x {d} reduced features need {need_gb:.1f} GiB > max_memory_gb={cfg.max_memory_gb}; reduce to fewer dims"
        )
    # fail fast on F / d before any long pass
    facet_sizes(d, cfg.facets.n_facets)
    max_pairs = cfg.codebook.random_pairs + (cfg.codebook.cooccur_pairs if cfg.dataset else 0)
    if cfg.codebook.n_codes > max_pairs:
        raise CodebookError(
            f"codebook.n_codes={cfg.codebook.n_codes} is larger than the {max_pairs} pairs to sample; sample more pairs or use fewer codes"
        )
    if cfg.facets.mode == "chunks":
        chunk_facets(d, cfg.facets.n_facets)
    log(f"dissect {cfg.features}: {N:,} items x {D} dims -> {out}")

    mask = src.mask()
    t = time.perf_counter()
    red = fit_reduction(src, mask, cfg.reduce, cfg.seed, log)
    timings["reduce_fit"] = time.perf_counter() - t
    dst = FeatureStore.create(
        out,
        src.item_ids(),
        red.dim,
        dtype="float32",
        shard_size=src.shard_size,
        overwrite=cfg.overwrite,
        attrs={"source_store": str(cfg.features), "source_fingerprint": src.attrs.get("item_fingerprint")},
    )
    t = time.perf_counter()
    counts = write_reduced(src, dst, red, cfg.reduce.block_rows, log)
    timings["reduce_write"] = time.perf_counter() - t

    x = dst.read_all("float32")
    usable = dst.mask()
    rows = np.flatnonzero(usable)
    log(
        f"reduced to {red.dim} dims ({red.method}); {len(rows):,} usable rows, {counts['masked_rows']} masked, {counts['zero_rows']} all-zero"
    )
    if len(rows) < 2:
        raise StoreError(f"{cfg.features}: need at least 2 usable items, found {len(rows)}")
    rng = np.random.default_rng(cfg.seed)

    t = time.perf_counter()
    fc = cfg.facets
    sample = np.sort(rng.choice(rows, size=min(fc.sample_items, len(rows)), replace=False))
    facets, affinity = assign_facets(x[sample], fc.mode, fc.n_facets, fc.statistic, cfg.seed)
    quality = {fc.mode: facet_quality(affinity, facets)}
    if fc.mode != "chunks" and d % fc.n_facets == 0:
        quality["chunks"] = facet_quality(affinity, chunk_facets(d, fc.n_facets))
    timings["facets"] = time.perf_counter() - t
    log(
        f"facets ({fc.mode}, {fc.statistic}): sizes {np.bincount(facets).tolist()}; mean affinity within/across {quality[fc.mode]['within']:.3f}/{quality[fc.mode]['across']:.3f}"
    )

    t = time.perf_counter()
    cb = cfg.codebook
    pairs = {"random": uniform_pairs(rows, cb.random_pairs, rng)}
    dropped = {}
    if ds is not None and cb.cooccur_pairs:
        offsets, seq_rows = train_sequences(ds)
        p = cooccur_pairs(offsets, seq_rows, cb.cooccur_pairs, cb.max_seq_len, rng)
        keep = usable[p[:, 0]] & usable[p[:, 1]] & (p[:, 0] != p[:, 1])
        dropped["cooccur_same_item"] = int((p[:, 0] == p[:, 1]).sum())
        dropped["cooccur_unusable_item"] = int((~keep).sum()) - dropped["cooccur_same_item"]
        pairs["cooccur"] = p[keep]
    all_pairs = np.concatenate(list(pairs.values()))
    sims = facet_similarity(x, all_pairs[:, 0], all_pairs[:, 1], facets, fc.n_facets)
    log(
        f"codebook: {len(all_pairs):,} pairs ({', '.join(f'{k} {len(v):,}' for k, v in pairs.items())}), dropped {dropped or 'none'}"
    )
    centroids, info = fit_codebook(sims, cb, cfg.seed)
    codes = assign_codes(sims, centroids)
    by_source, at = {}, 0
    for k, v in pairs.items():
        by_source[k] = np.bincount(codes[at : at + len(v)], minlength=cb.n_codes).tolist()
        at += len(v)
    timings["codebook"] = time.perf_counter() - t

    g = dst.group
    g.create_array("facets", shape=facets.shape, chunks=facets.shape, dtype="int64", overwrite=True)[:] = facets
    g.create_array("centroids", shape=centroids.shape, chunks=centroids.shape, dtype="float32", overwrite=True)[:] = (
        centroids
    )
    g.create_array("dim_affinity", shape=affinity.shape, chunks=affinity.shape, dtype="float32", overwrite=True)[:] = (
        affinity.astype(np.float32)
    )
    timings["total"] = time.perf_counter() - t0
    dst.update_attrs(
        dissect={
            "seed": cfg.seed,
            "source": {
                "path": str(cfg.features),
                "item_fingerprint": src.attrs.get("item_fingerprint"),
                "n_items": N,
                "dim": D,
            },
            "dataset": cfg.dataset,
            "reduction": {**red.attrs, **counts},
            "facets": {
                "mode": fc.mode,
                "n_facets": fc.n_facets,
                "statistic": fc.statistic,
                "sample_items": int(len(sample)),
                "sizes": np.bincount(facets, minlength=fc.n_facets).tolist(),
                "quality": quality,
            },
            "codebook": {
                "n_codes": cb.n_codes,
                "pairs": {k: int(len(v)) for k, v in pairs.items()},
                "dropped": dropped,
                "max_seq_len": cb.max_seq_len,
                "batch_size": cb.batch_size,
                "n_init": cb.n_init,
                "max_iter": cb.max_iter,
                "codes_by_source": by_source,
                **info,
            },
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
            "config": config_to_dict(cfg),
        }
    )
    log(
        f"codebook: K={cb.n_codes}, inertia/pair {info['inertia_per_pair']:.4f}, largest code {info['cluster_sizes'][0]:,} pairs, smallest {info['cluster_sizes'][-1]:,}"
    )
    log(f"done in {timings['total']:.1f}s: {out}")
    return Path(out)
