"""Evidence that facets and correlation types mean something: a markdown report plus PNGs for one dissection.

    report(dissection_path, titles, out_dir) -> out_dir/report.md (+ heatmap.png, codes.png)

It shows (1) how much more dims co-vary inside a facet than across, for the stored facets and for the
paper's contiguous chunks, (2) the distribution of correlation types, and (3) for a few types the item pairs
closest to the centroid, with titles, so a person can read what a type captures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from feature_store.store import FeatureStore  # noqa: E402

from .codebook import assign_codes, facet_similarity, uniform_pairs  # noqa: E402
from .facets import chunk_facets, clustered_facets, dimension_affinity, facet_quality  # noqa: E402


def _titles_by_row(store: FeatureStore, titles: Mapping[str, str] | Sequence[str]) -> list[str]:
    if isinstance(titles, Mapping):
        return [str(titles.get(i, f"<{i}: no title>")) for i in store.item_ids()]
    if len(titles) != store.n_items:
        raise ValueError(
            f"{store.path}: {len(titles)} titles for {store.n_items} items (a list must have one per store row)"
        )
    return [str(t) for t in titles]


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def partitions(
    d: int, n_facets: int, stored: np.ndarray, mode: str, affinity: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    """The stored facets plus the other mode, so every report compares clustered with chunks."""
    out = {f"{mode} (stored)": stored}
    if mode != "chunks" and d % n_facets == 0:
        out["chunks"] = chunk_facets(d, n_facets)
    if mode == "chunks":
        out["clustered"] = clustered_facets(affinity, n_facets, seed)
    return out


def report(
    dissection_path: str | Path,
    titles: Mapping[str, str] | Sequence[str],
    out_dir: str | Path,
    *,
    name: str | None = None,
    n_types: int = 4,
    n_examples: int = 3,
    sample_pairs: int = 200_000,
    seed: int = 0,
) -> Path:
    store = FeatureStore.open(dissection_path)
    meta = store.attrs["dissect"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _titles_by_row(store, titles)
    x, usable = store.read_all(), store.mask()
    rows = np.flatnonzero(usable)
    facets = np.asarray(store.group["facets"][:])
    centroids = np.asarray(store.group["centroids"][:])
    affinity = np.asarray(store.group["dim_affinity"][:], np.float64)
    fm, cb, red = meta["facets"], meta["codebook"], meta["reduction"]
    F, K, d = centroids.shape[1], centroids.shape[0], x.shape[1]
    rng = np.random.default_rng(seed)
    sample = rng.choice(rows, size=min(len(rows), fm["sample_items"]), replace=False)
    pearson = dimension_affinity(x[sample], "pearson")
    parts = partitions(d, F, facets, fm["mode"], affinity, meta["seed"])

    lines = [f"# Dissection report: {name or Path(store.path).name}", ""]
    lines += [
        f"- source: `{meta['source']['path']}` ({meta['source']['n_items']:,} items x {meta['source']['dim']} dims, "
        f"item fingerprint `{meta['source']['item_fingerprint']}`); {len(rows):,} usable rows",
        f"- reduction: {red['method']} to {d} dims"
        + (f", explained variance {red['explained_variance_ratio']:.1%}" if "explained_variance_ratio" in red else "")
        + (f", fit on {red['fit_rows']:,} rows" if "fit_rows" in red else ""),
        f"- facets: {fm['mode']}, F = {F}, sizes {fm['sizes']}, affinity statistic `{fm['statistic']}` from {fm['sample_items']:,} items",
        f"- codebook: K = {K}, fitted on {sum(cb['pairs'].values()):,} pairs ({', '.join(f'{k} {v:,}' for k, v in cb['pairs'].items())}), "
        f"inertia per pair {cb['inertia_per_pair']:.4f}, seed {meta['seed']}",
        "",
        "## Do dims inside a facet co-vary more than across facets?",
        "",
        "Mean affinity over pairs of distinct dims inside one facet vs in different facets. `energy` = |corr(z_a^2, z_b^2)| "
        "of centred dims (co-activation; survives PCA), `pearson` = |corr(x_a, x_b)| (~0 for PCA outputs by construction).",
        "",
        "| partition | statistic | within | across | within / across |",
        "|---|---|---|---|---|",
    ]
    quality = {}
    for pname, part in parts.items():
        for sname, a in (
            ((fm["statistic"], affinity), ("pearson", pearson))
            if fm["statistic"] != "pearson"
            else (("pearson", affinity),)
        ):
            q = facet_quality(a, part)
            quality[(pname, sname)] = q
            lines.append(
                f"| {pname} | {sname} | {q['within']:.4f} | {q['across']:.4f} | {q['within'] / max(q['across'], 1e-12):.2f} |"
            )

    # heatmap: |affinity| ordered by facet, stored facets next to chunks
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4.8), squeeze=False)
    for ax, (pname, part) in zip(axes[0], parts.items()):
        order = np.argsort(part, kind="stable")
        im = ax.imshow(
            affinity[np.ix_(order, order)],
            cmap="viridis",
            vmin=0,
            vmax=np.quantile(affinity[~np.eye(d, dtype=bool)], 0.99),
        )
        for edge in np.cumsum(np.bincount(part))[:-1]:
            ax.axhline(edge - 0.5, color="w", lw=0.6)
            ax.axvline(edge - 0.5, color="w", lw=0.6)
        q = quality[(pname, fm["statistic"])]
        ax.set_title(f"{pname}: within {q['within']:.3f} / across {q['across']:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{fm['statistic']} affinity")
    fig.suptitle(f"{name or ''} dimension affinity ordered by facet", fontsize=10)
    fig.savefig(out / "heatmap.png", dpi=80)
    plt.close(fig)

    # correlation types over a fresh sample of uniform pairs
    pairs = uniform_pairs(rows, sample_pairs, rng)
    sims = facet_similarity(x, pairs[:, 0], pairs[:, 1], facets, F)
    codes = assign_codes(sims, centroids)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    hol = np.einsum("pd,pd->p", unit[pairs[:, 0]], unit[pairs[:, 1]])
    share = np.bincount(codes, minlength=K) / len(codes)
    fit_sizes = np.asarray(cb["cluster_sizes"])
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(np.arange(K), fit_sizes / fit_sizes.sum(), color="tab:blue", label="fit sample")
    ax.plot(np.arange(K), share, "k.", label="fresh uniform pairs")
    ax.set_xlabel("correlation type (code)")
    ax.set_ylabel("share of pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "codes.png", dpi=80)
    plt.close(fig)

    lines += [
        "",
        "![dimension affinity by facet](heatmap.png)",
        "",
        "## Correlation types",
        "",
        f"Share of pairs per code (fit sample; {len(pairs):,} fresh uniform pairs in the dots): largest "
        f"{fit_sizes.max() / fit_sizes.sum():.1%}, smallest {fit_sizes.min() / fit_sizes.sum():.1%}, "
        f"entropy {-(share[share > 0] * np.log(share[share > 0])).sum() / np.log(K):.2f} of the maximum.",
        "",
        "![code distribution](codes.png)",
        "",
        "| code | share (fit) | share (fresh) | mean holistic cos | centroid (facet cosines) |",
        "|---|---|---|---|---|",
    ]
    for k in range(K):
        mean_hol = hol[codes == k].mean() if (codes == k).any() else float("nan")
        lines.append(
            f"| {k} | {fit_sizes[k] / fit_sizes.sum():.3f} | {share[k]:.3f} | {mean_hol:.3f} | {' '.join(f'{v:+.2f}' for v in centroids[k])} |"
        )

    # a few readable types: highest / lowest mean centroid and the most uneven across facets
    picks = [int(np.argmax(centroids.mean(1))), int(np.argmax(centroids.std(1))), int(np.argmin(centroids.mean(1))), 0]
    picks = list(dict.fromkeys(picks))[:n_types]
    lines += ["", "## Item pairs closest to a few centroids", ""]
    for k in picks:
        idx = np.flatnonzero(codes == k)
        if idx.size == 0:
            continue
        dist = ((sims[idx] - centroids[k]) ** 2).sum(1)
        lines += [
            f"### code {k}: centroid {' '.join(f'{v:+.2f}' for v in centroids[k])} "
            f"(mean {centroids[k].mean():+.2f}, spread {centroids[k].std():.2f}; {share[k]:.1%} of pairs)",
            "",
            "| item i | item j | holistic cos | facet cosines |",
            "|---|---|---|---|",
        ]
        shown: set[tuple[int, int]] = set()
        for p in idx[np.argsort(dist)]:
            a, b = pairs[p]
            if (min(a, b), max(a, b)) in shown:  # pairs are drawn with replacement
                continue
            shown.add((min(a, b), max(a, b)))
            if len(shown) > n_examples:
                break
            lines.append(
                f"| {_short(names[a])} | {_short(names[b])} | {hol[p]:.2f} | {' '.join(f'{v:+.2f}' for v in sims[p])} |"
            )
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
