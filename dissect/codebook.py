"""Correlation types: k-means centroids over facet-similarity vectors c_ij = (cos(x_i[f], x_j[f]))_f.

The codebook is fitted on a sample of pairs, never on all N^2: uniform pairs of distinct valid items, plus
pairs that co-occur inside training sequences (within the trainer's window), since those are the pairs the
code loss supervises. Pairs that cannot be used (same item twice, masked item) are counted, not hidden.
"""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from feature_store.teacher import facet_units, nearest_centroid
from kdsr.errors import KdsrError

from .config import CodebookConfig


class CodebookError(KdsrError, ValueError):
    """More codes than sampled pairs, or no pairs at all."""


def facet_similarity(
    x: np.ndarray, a: np.ndarray, b: np.ndarray, facets: np.ndarray, n_facets: int, chunk: int = 65536
) -> np.ndarray:
    """[P, F] float32 facet-similarity vectors of pairs (a[p], b[p]) of rows of x [N, d]."""
    fac = torch.as_tensor(facets, dtype=torch.long)
    out = np.empty((len(a), n_facets), np.float32)
    xt = torch.as_tensor(np.asarray(x, np.float32))
    for s in range(0, len(a), chunk):
        ua = facet_units(xt[torch.as_tensor(a[s : s + chunk])], fac, n_facets)
        ub = facet_units(xt[torch.as_tensor(b[s : s + chunk])], fac, n_facets)
        out[s : s + chunk] = (ua * ub).sum(-1).numpy()
    return out


def uniform_pairs(valid_rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 2] rows of distinct valid items, uniformly at random (with replacement across pairs)."""
    if n == 0:
        return np.zeros((0, 2), np.int64)
    if len(valid_rows) < 2:
        raise CodebookError(f"need at least 2 valid items to sample pairs, found {len(valid_rows)}")
    i = rng.integers(0, len(valid_rows), n)
    j = rng.integers(0, len(valid_rows) - 1, n)
    j = j + (j >= i)  # uniform over the other items
    return np.stack([valid_rows[i], valid_rows[j]], 1)


def cooccur_pairs(offsets: np.ndarray, rows: np.ndarray, n: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 2] pairs of positions p != q, |p - q| < max_len, inside one sequence, uniform over all such pairs.

    Sequences are rows[offsets[u]:offsets[u+1]] (store rows, chronological). Returns the rows at p and q."""
    lengths = np.diff(offsets)
    gaps = np.minimum(lengths - 1, max_len - 1).clip(min=0)
    # number of ordered position pairs with 0 < |p - q| < max_len: 2 * sum_{g=1..G} (n - g)
    counts = 2 * (gaps * lengths - gaps * (gaps + 1) // 2)
    if n == 0 or counts.sum() == 0:
        return np.zeros((0, 2), np.int64)
    user = rng.choice(len(lengths), size=n, p=counts / counts.sum())
    length = lengths[user]
    p = np.empty(n, np.int64)
    q = np.empty(n, np.int64)
    todo = np.arange(n)
    while todo.size:  # rejection: uniform over pairs within the window
        ln = length[todo]
        pp = rng.integers(0, ln)
        qq = rng.integers(0, ln - 1)
        qq = qq + (qq >= pp)
        ok = np.abs(pp - qq) < max_len
        p[todo[ok]], q[todo[ok]] = pp[ok], qq[ok]
        todo = todo[~ok]
    base = offsets[user]
    return np.stack([rows[base + p], rows[base + q]], 1)


def fit_codebook(sims: np.ndarray, cfg: CodebookConfig, seed: int) -> tuple[np.ndarray, dict]:
    """MiniBatchKMeans (seeded) -> centroids [K, F] sorted by cluster size (code 0 = most common type)."""
    n = len(sims)
    if n == 0:
        raise CodebookError("no pairs to fit the codebook on (random_pairs and cooccur_pairs are both 0?)")
    if cfg.n_codes > n:
        raise CodebookError(
            f"codebook.n_codes={cfg.n_codes} is larger than the {n} sampled pairs; sample more pairs or use fewer codes"
        )
    distinct = len(np.unique(sims.round(6), axis=0))
    if cfg.n_codes > distinct:
        raise CodebookError(
            f"codebook.n_codes={cfg.n_codes} is larger than the {distinct} distinct facet-similarity vectors"
        )
    # One OpenMP thread: with F = 8 columns there is nothing to share out, and on a busy machine sklearn's
    # threaded k-means spins (measured 12x slower on 2 loaded cores); it also makes the fit machine-independent.
    from sklearn.cluster import MiniBatchKMeans  # here, not at the top: the trainer's teacher imports this module

    with threadpool_limits(1):
        kmeans = MiniBatchKMeans(
            n_clusters=cfg.n_codes,
            batch_size=cfg.batch_size,
            n_init=cfg.n_init,
            max_iter=cfg.max_iter,
            random_state=seed,
        ).fit(sims)
    sizes = np.bincount(kmeans.labels_, minlength=cfg.n_codes)
    order = np.argsort(-sizes, kind="stable")
    centroids = kmeans.cluster_centers_[order].astype(np.float32)
    return centroids, {
        "inertia": float(kmeans.inertia_),
        "inertia_per_pair": float(kmeans.inertia_ / n),
        "cluster_sizes": [int(s) for s in sizes[order]],
        "n_iter": int(kmeans.n_iter_),
    }


def assign_codes(sims: np.ndarray, centroids: np.ndarray, chunk: int = 262144) -> np.ndarray:
    """Nearest centroid (squared Euclidean) of each row of sims [P, F]."""
    c = torch.as_tensor(np.asarray(centroids, np.float32))
    x = torch.as_tensor(np.asarray(sims, np.float32))
    return nearest_centroid(x, c.T.contiguous(), 0.5 * (c * c).sum(1), chunk).numpy()
