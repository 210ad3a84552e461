"""`run_dissect(cfg)`: features store -> dissection store (reduced features + facets + correlation-type codebook).

The output is itself a FeatureStore (same item_ids and mask, embeddings = reduced float32 features), so the
trainer reads one store, plus `facets` [d], `centroids` [K, F], `dim_affinity` [d, d] and provenance in
attrs["dissect"]. Only the reduced N x d matrix is held in memory (512 MB at 1M x 128).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from feature_store.store import FeatureStore, StoreError, check_output
from kdsr.config import config_to_dict
from kdsr.dataset import PreparedDataset
from kdsr.files import input_overlap

from .codebook import CodebookError, assign_codes, cooccur_pairs, facet_similarity, fit_codebook, uniform_pairs
from .config import DissectConfig
from .facets import assign_facets, chunk_facets, facet_quality, facet_sizes
from .reduce import Reduction, fit_reduction, write_reduced

log = logging.getLogger(__name__)


@dataclass
class FacetResult:
    facets: np.ndarray  # [d] facet of every dim
    affinity: np.ndarray  # [d, d] the dimension affinity the facets were cut from
    quality: dict  # mode -> {"within", "across"}
    sample_items: int


@dataclass
class CodebookResult:
    centroids: np.ndarray  # [K, F]
    pairs: dict[str, np.ndarray]  # source ("random", "cooccur") -> [P, 2] store rows
    dropped: dict[str, int]  # co-occurring pairs left out, by reason
    codes_by_source: dict[str, list[int]]  # source -> pairs per code
    fit_info: dict  # fit_codebook's inertia, cluster sizes, iterations


def train_sequences(ds: PreparedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [U+1], store rows) of every user's training items in chronological order."""
    df = ds.interactions.filter(pl.col("split") == "train").sort(["user", "position"])
    counts = df.group_by("user", maintain_order=True).len()["len"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, df["item"].to_numpy().astype(np.int64) - 1


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Record the wall time of one phase into `timings` (written to the store's provenance)."""
    start = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - start


def run_dissect(cfg: DissectConfig) -> dict:
    """Reduce, cut facets, fit the codebook and write the dissection store; returns the run summary."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    src, ds = open_inputs(cfg)
    out = cfg.resolved_output()
    check_before_work(cfg, src, out)
    log.info("dissect %s: %s items x %d dims -> %s", cfg.features, f"{src.n_items:,}", src.dim, out)

    with timed(timings, "reduce_fit"):
        reduction = fit_reduction(src, src.mask(), cfg.reduce, cfg.seed)
    dst = create_output(cfg, src, out, reduction.dim)
    with timed(timings, "reduce_write"):
        counts = write_reduced(src, dst, reduction, cfg.reduce.block_rows)
    x, usable = dst.read_all("float32"), dst.mask()
    rows = np.flatnonzero(usable)
    log.info(
        "reduced to %d dims (%s); %s usable rows, %d masked, %d all-zero, %d NaN/inf (masked)",
        reduction.dim,
        reduction.method,
        f"{len(rows):,}",
        counts["masked_rows"],
        counts["zero_rows"],
        counts["nonfinite_rows"],
    )
    if len(rows) < 2:
        raise StoreError(f"{cfg.features}: need at least 2 usable items, found {len(rows)}")
    rng = np.random.default_rng(cfg.seed)
    with timed(timings, "facets"):
        facets = cut_facets(x, rows, cfg, rng)
    with timed(timings, "codebook"):
        codebook = fit_correlation_types(x, usable, rows, facets.facets, ds, cfg, rng)
    write_dissection_arrays(dst, facets, codebook)
    timings["total"] = time.perf_counter() - t0
    dst.update_attrs(dissect=provenance(cfg, src, reduction, counts, facets, codebook, timings))
    return summarise(cfg, out, src, reduction, len(rows), codebook, timings["total"])


def open_inputs(cfg: DissectConfig) -> tuple[FeatureStore, PreparedDataset | None]:
    """The finished input store and, when configured, the prepared dataset whose item order it must follow."""
    src = FeatureStore.open(cfg.features)
    if not src.is_complete():
        raise StoreError(
            f"{cfg.features}: {len(src.pending_shards())} shards are not written yet; finish the encode first"
        )
    ds = None
    if cfg.dataset:
        ds = PreparedDataset.open(cfg.dataset)
        src.check_items(ds.item_original_ids(), source=f"dataset {cfg.dataset}")
    return src, ds


def check_before_work(cfg: DissectConfig, src: FeatureStore, out: str) -> None:
    """Refuse an output, memory budget, F or K that cannot work before any long pass over the store."""
    overlap = input_overlap(out, [cfg.features])
    if overlap:
        raise StoreError(
            f"{out}: the dissection output {overlap[1]} the input store {cfg.features}; it must not be the input "
            "store, contain it or sit inside it (set output to another path)"
        )
    check_output(out, inputs(cfg))  # first: overwrite would not help with a folder that is not a store
    if Path(out).exists() and not cfg.overwrite:
        raise StoreError(f"{out}: already exists; set overwrite=true to replace it")
    n_items, dim = src.n_items, (src.dim if cfg.reduce.method == "none" else cfg.reduce.dim)
    need_gb = n_items * dim * 4 / 2**30
    if need_gb > cfg.max_memory_gb:
        raise StoreError(
            f"{cfg.features}: {n_items:,} x {dim} reduced features need {need_gb:.1f} GiB > "
            f"max_memory_gb={cfg.max_memory_gb}; reduce to fewer dims"
        )
    facet_sizes(dim, cfg.facets.n_facets)
    max_pairs = cfg.codebook.random_pairs + (cfg.codebook.cooccur_pairs if cfg.dataset else 0)
    if cfg.codebook.n_codes > max_pairs:
        raise CodebookError(
            f"codebook.n_codes={cfg.codebook.n_codes} is larger than the {max_pairs} pairs to sample; "
            "sample more pairs or use fewer codes"
        )
    if cfg.facets.mode == "chunks":
        chunk_facets(dim, cfg.facets.n_facets)


def inputs(cfg: DissectConfig) -> list[str | None]:
    """What the stage reads: its output may never be, contain or sit inside one of them."""
    return [cfg.features, cfg.dataset]


def create_output(cfg: DissectConfig, src: FeatureStore, out: str, dim: int) -> FeatureStore:
    """The output store: the input's items and shard size, float32 rows of the reduced width."""
    return FeatureStore.create(
        out,
        src.item_ids(),
        dim,
        dtype="float32",
        shard_size=src.shard_size,
        overwrite=cfg.overwrite,
        inputs=inputs(cfg),
        attrs={"source_store": str(cfg.features), "source_fingerprint": src.attrs.get("item_fingerprint")},
    )


def cut_facets(x: np.ndarray, rows: np.ndarray, cfg: DissectConfig, rng: np.random.Generator) -> FacetResult:
    """Facets from the dimension affinity of a sample of usable items; chunks' quality beside for comparison."""
    facet_cfg = cfg.facets
    sample = np.sort(rng.choice(rows, size=min(facet_cfg.sample_items, len(rows)), replace=False))
    facets, affinity = assign_facets(x[sample], facet_cfg.mode, facet_cfg.n_facets, facet_cfg.statistic, cfg.seed)
    quality = {facet_cfg.mode: facet_quality(affinity, facets)}
    dim = x.shape[1]
    if facet_cfg.mode != "chunks" and dim % facet_cfg.n_facets == 0:
        quality["chunks"] = facet_quality(affinity, chunk_facets(dim, facet_cfg.n_facets))
    mine = quality[facet_cfg.mode]
    log.info(
        "facets (%s, %s): sizes %s; mean affinity within/across %.3f/%.3f",
        facet_cfg.mode,
        facet_cfg.statistic,
        np.bincount(facets).tolist(),
        mine["within"],
        mine["across"],
    )
    return FacetResult(facets, affinity, quality, int(len(sample)))


def sample_pairs(
    usable: np.ndarray, rows: np.ndarray, ds: PreparedDataset | None, cfg: DissectConfig, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Uniform pairs, plus pairs co-occurring in training sequences (the ones the code loss supervises);
    co-occurring pairs of one item twice or of an unusable item are counted and left out."""
    codebook_cfg = cfg.codebook
    pairs = {"random": uniform_pairs(rows, codebook_cfg.random_pairs, rng)}
    dropped: dict[str, int] = {}
    if ds is not None and codebook_cfg.cooccur_pairs:
        offsets, seq_rows = train_sequences(ds)
        drawn = cooccur_pairs(offsets, seq_rows, codebook_cfg.cooccur_pairs, codebook_cfg.max_seq_len, rng)
        same = drawn[:, 0] == drawn[:, 1]
        keep = usable[drawn[:, 0]] & usable[drawn[:, 1]] & ~same
        dropped["cooccur_same_item"] = int(same.sum())
        dropped["cooccur_unusable_item"] = int((~keep).sum()) - dropped["cooccur_same_item"]
        pairs["cooccur"] = drawn[keep]
    return pairs, dropped


def fit_correlation_types(
    x: np.ndarray,
    usable: np.ndarray,
    rows: np.ndarray,
    facets: np.ndarray,
    ds: PreparedDataset | None,
    cfg: DissectConfig,
    rng: np.random.Generator,
) -> CodebookResult:
    """k-means over the facet-similarity vectors of the sampled pairs; codes counted per pair source."""
    codebook_cfg = cfg.codebook
    pairs, dropped = sample_pairs(usable, rows, ds, cfg, rng)
    all_pairs = np.concatenate(list(pairs.values()))
    sims = facet_similarity(x, all_pairs[:, 0], all_pairs[:, 1], facets, cfg.facets.n_facets)
    per_source = ", ".join(f"{k} {len(v):,}" for k, v in pairs.items())
    log.info("codebook: %s pairs (%s), dropped %s", f"{len(all_pairs):,}", per_source, dropped or "none")
    centroids, fit_info = fit_codebook(sims, codebook_cfg, cfg.seed)
    codes = assign_codes(sims, centroids)
    codes_by_source, at = {}, 0
    for source, source_pairs in pairs.items():  # `codes` follows the order of `pairs`
        per_code = np.bincount(codes[at : at + len(source_pairs)], minlength=codebook_cfg.n_codes)
        codes_by_source[source] = per_code.tolist()
        at += len(source_pairs)
    return CodebookResult(centroids, pairs, dropped, codes_by_source, fit_info)


def write_dissection_arrays(dst: FeatureStore, facets: FacetResult, codebook: CodebookResult) -> None:
    """The arrays the trainer's Teacher reads beside the reduced features (one chunk each)."""
    arrays = {
        "facets": (facets.facets, "int64"),
        "centroids": (codebook.centroids, "float32"),
        "dim_affinity": (facets.affinity.astype(np.float32), "float32"),
    }
    for name, (values, dtype) in arrays.items():
        array = dst.group.create_array(name, shape=values.shape, chunks=values.shape, dtype=dtype, overwrite=True)
        array[:] = values


def provenance(
    cfg: DissectConfig,
    src: FeatureStore,
    reduction: Reduction,
    counts: dict,
    facets: FacetResult,
    codebook: CodebookResult,
    timings: dict[str, float],
) -> dict:
    """attrs["dissect"]: enough to tell how the store was made and to compare runs (the report reads it)."""
    facet_cfg, codebook_cfg = cfg.facets, cfg.codebook
    return {
        "seed": cfg.seed,
        "source": {
            "path": str(cfg.features),
            "item_fingerprint": src.attrs.get("item_fingerprint"),
            "n_items": src.n_items,
            "dim": src.dim,
        },
        "dataset": cfg.dataset,
        "reduction": {**reduction.attrs, **counts},
        "facets": {
            "mode": facet_cfg.mode,
            "n_facets": facet_cfg.n_facets,
            "statistic": facet_cfg.statistic,
            "sample_items": facets.sample_items,
            "sizes": np.bincount(facets.facets, minlength=facet_cfg.n_facets).tolist(),
            "quality": facets.quality,
        },
        "codebook": {
            "n_codes": codebook_cfg.n_codes,
            "pairs": {k: int(len(v)) for k, v in codebook.pairs.items()},
            "dropped": codebook.dropped,
            "max_seq_len": codebook_cfg.max_seq_len,
            "batch_size": codebook_cfg.batch_size,
            "n_init": codebook_cfg.n_init,
            "max_iter": codebook_cfg.max_iter,
            "codes_by_source": codebook.codes_by_source,
            **codebook.fit_info,
        },
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "config": config_to_dict(cfg),
    }


def summarise(
    cfg: DissectConfig,
    out: str,
    src: FeatureStore,
    reduction: Reduction,
    usable_rows: int,
    codebook: CodebookResult,
    seconds: float,
) -> dict:
    """Log the run's one-line summary and return it as the stage's JSON summary."""
    sizes = codebook.fit_info["cluster_sizes"]
    log.info(
        "%s: %s items, %d -> %d dims (%s), F = %d facets (%s), K = %d codes (inertia/pair %.4f, "
        "largest %s pairs, smallest %s) in %.1f s",
        out,
        f"{src.n_items:,}",
        src.dim,
        reduction.dim,
        reduction.method,
        cfg.facets.n_facets,
        cfg.facets.mode,
        cfg.codebook.n_codes,
        codebook.fit_info["inertia_per_pair"],
        f"{sizes[0]:,}",
        f"{sizes[-1]:,}",
        seconds,
    )
    return {
        "output": str(out),
        "n_items": src.n_items,
        "usable_items": usable_rows,
        "dim": reduction.dim,
        "n_facets": cfg.facets.n_facets,
        "n_codes": cfg.codebook.n_codes,
        "seconds": round(seconds, 2),
    }
