"""Facets: a partition of the d feature dims into F groups, each a candidate "aspect" of the item.

`chunks` is the paper's contiguous split. `clustered` groups dims that co-vary across items. Its facets have
balanced sizes (floor(d/F) or ceil(d/F) dims, the same sizes as `chunks`): a facet of one or two dims makes
its cosine nearly binary (+-1), and equal sizes keep the within/across comparison with `chunks` fair. The
partition maximises the summed affinity inside facets: k-means on the affinity rows for a start, balanced
assignment (Hungarian on facet "slots") iterated to a fixed point, then greedy pair swaps that strictly
increase the objective (at most ~2e9 / d^2 swaps, so d = 4096 stays in seconds).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from kdsr.errors import KdsrError


class FacetError(KdsrError, ValueError):
    """F incompatible with d (more facets than dims, or d not divisible in chunks mode)."""


def dimension_affinity(x: np.ndarray, statistic: str = "energy") -> np.ndarray:
    """[n, d] sample of items -> [d, d] affinity in [0, 1], diagonal 1.

    pearson: |corr(x_a, x_b)|. energy: |corr(z_a^2, z_b^2)| with z centred: dims that are large together.
    PCA makes every Pearson correlation between its outputs ~0, but not their energies; for jointly
    Gaussian dims the energy correlation is rho^2, so it also sees plain linear co-variation."""
    x = np.asarray(x, np.float64)
    z = x - x.mean(0)
    if statistic == "energy":
        z = z * z
    elif statistic != "pearson":
        raise FacetError(f"unknown facet statistic {statistic!r} (pearson | energy)")
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(z, rowvar=False)
    c = np.abs(np.nan_to_num(c, nan=0.0))  # a constant dim correlates with nothing
    np.fill_diagonal(c, 1.0)
    return c


def facet_sizes(d: int, n_facets: int) -> np.ndarray:
    """Balanced facet sizes: floor(d/F) or ceil(d/F) dims each (the first d % F facets take one more)."""
    if n_facets > d:
        raise FacetError(f"facets.n_facets={n_facets} is larger than the feature dim {d}: at most {d} facets")
    return np.array([d // n_facets + (f < d % n_facets) for f in range(n_facets)])


def chunk_facets(d: int, n_facets: int) -> np.ndarray:
    """The paper's split: facet f = dims [f * d/F, (f + 1) * d/F)."""
    facet_sizes(d, n_facets)  # F <= d, with a clear error
    if d % n_facets:
        raise FacetError(
            f"facets.mode=chunks needs the feature dim to be divisible by n_facets: {d} % {n_facets} = "
            f"{d % n_facets} (use mode=clustered, or a reduce.dim divisible by {n_facets})"
        )
    return np.repeat(np.arange(n_facets), d // n_facets)


def _balanced_assign(score: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each dim to one facet, facet f taking exactly sizes[f] dims, maximising the summed score [d, F]."""
    slots = np.repeat(np.arange(len(sizes)), sizes)
    rows, cols = linear_sum_assignment(-score[:, slots])
    out = np.empty(score.shape[0], np.int64)
    out[rows] = slots[cols]
    return out


def _facet_sums(a: np.ndarray, facets: np.ndarray, n_facets: int) -> np.ndarray:
    """S[i, f] = sum of a[i, j] over dims j != i in facet f (a has a zero diagonal)."""
    return a @ np.eye(n_facets)[facets]


def clustered_facets(affinity: np.ndarray, n_facets: int, seed: int = 0, max_rounds: int = 50) -> np.ndarray:
    """Balanced partition of dims maximising within-facet affinity (see module docstring). Deterministic."""
    d = affinity.shape[0]
    sizes = facet_sizes(d, n_facets)
    a = affinity.astype(np.float64).copy()
    np.fill_diagonal(a, 0.0)
    if n_facets == 1:
        return np.zeros(d, np.int64)
    with threadpool_limits(1):  # a d x d problem: threads only add spin-waiting on a busy machine
        start = KMeans(n_clusters=n_facets, random_state=seed, n_init=10).fit_predict(a)
    facets = _balanced_assign(
        _facet_sums(a, start, n_facets) / np.maximum(np.bincount(start, minlength=n_facets), 1), sizes
    )
    for _ in range(max_rounds):  # balanced kernel k-means: reassign to the facet with most mean affinity
        new = _balanced_assign(_facet_sums(a, facets, n_facets) / sizes, sizes)
        if np.array_equal(new, facets):
            break
        facets = new
    # greedy swaps: swapping a (in f) and b (in g) gains S[a,g] - S[a,f] + S[b,f] - S[b,g] - 2 a[a,b]
    for _ in range(min(20 * d, 2_000_000_000 // d**2)):  # each round is O(d^2): bounded work at large d
        s = _facet_sums(a, facets, n_facets)
        own = s[np.arange(d), facets]
        gain = s[:, facets] - own[:, None]  # gain[a, b] = S[a, g_b] - S[a, f_a]
        gain = gain + gain.T - 2 * a
        gain[facets[:, None] == facets[None, :]] = 0
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        if gain[i, j] <= 1e-12:
            break
        facets[i], facets[j] = facets[j], facets[i]
    return _canonical(facets)


def _canonical(facets: np.ndarray) -> np.ndarray:
    """Renumber facets by their smallest dim, so equal partitions get equal labels."""
    order = {f: k for k, f in enumerate(dict.fromkeys(facets.tolist()))}
    return np.array([order[f] for f in facets.tolist()], np.int64)


def facet_quality(affinity: np.ndarray, facets: np.ndarray) -> dict:
    """Mean affinity of dim pairs inside a facet vs across facets (diagonal excluded)."""
    same = facets[:, None] == facets[None, :]
    off = ~np.eye(len(facets), dtype=bool)
    within = affinity[same & off]
    across = affinity[~same]
    return {
        "within": float(within.mean()) if within.size else float("nan"),
        "across": float(across.mean()) if across.size else float("nan"),
    }


def assign_facets(
    x: np.ndarray, mode: str, n_facets: int, statistic: str = "energy", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Facet id of every dim, and the affinity matrix it was computed from. x: [n, d] sample of valid items."""
    d = x.shape[1]
    facet_sizes(d, n_facets)  # F <= d, with a clear error
    if mode == "chunks":
        facets = chunk_facets(d, n_facets)
        return facets, dimension_affinity(x, statistic)
    if mode != "clustered":
        raise FacetError(f"unknown facet mode {mode!r} (clustered | chunks)")
    affinity = dimension_affinity(x, statistic)
    return clustered_facets(affinity, n_facets, seed), affinity
