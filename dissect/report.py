"""Evidence that facets and correlation types mean something: a markdown report plus PNGs for one dissection.

    report(dissection_path, titles, out_dir) -> out_dir/report.md (+ heatmap.png, codes.png)

It shows (1) how much more dims co-vary inside a facet than across, for the stored facets and for the
paper's contiguous chunks, (2) the distribution of correlation types, and (3) for a few types the item pairs
closest to the centroid, with titles, so a person can read what a type captures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from feature_store.store import FeatureStore, StoreError  # noqa: E402

from .codebook import assign_codes, facet_similarity, uniform_pairs  # noqa: E402
from .facets import chunk_facets, clustered_facets, dimension_affinity, facet_quality  # noqa: E402


def _titles_by_row(store: FeatureStore, titles: Mapping[str, str] | Sequence[str]) -> list[str]:
    if isinstance(titles, Mapping):
        return [str(titles.get(i, f"<{i}: no title>")) for i in store.item_ids()]
    if len(titles) != store.n_items:
        raise StoreError(
            f"{store.path}: {len(titles)} titles for {store.n_items} items (a list must have one per store row)"
        )
    return [str(t) for t in titles]


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def _signed(values: np.ndarray) -> str:
    """A vector of cosines as the report writes it: `+0.12 -0.40 ...`."""
    return " ".join(f"{v:+.2f}" for v in values)


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


@dataclass
class Dissection:
    """What the report reads from a dissection store."""

    store: FeatureStore
    meta: dict  # attrs["dissect"]
    x: np.ndarray  # [N, d] reduced features
    rows: np.ndarray  # usable store rows
    facets: np.ndarray  # [d]
    centroids: np.ndarray  # [K, F]
    affinity: np.ndarray  # [d, d] float64

    @classmethod
    def open(cls, path: str | Path) -> Dissection:
        store = FeatureStore.open(path)
        return cls(
            store,
            store.attrs["dissect"],
            store.read_all(),
            np.flatnonzero(store.mask()),
            np.asarray(store.group["facets"][:]),
            np.asarray(store.group["centroids"][:]),
            np.asarray(store.group["dim_affinity"][:], np.float64),
        )

    @property
    def n_codes(self) -> int:
        return self.centroids.shape[0]

    @property
    def n_facets(self) -> int:
        return self.centroids.shape[1]


@dataclass
class TypeSample:
    """Correlation types of a fresh sample of uniform pairs."""

    pairs: np.ndarray  # [P, 2] store rows
    sims: np.ndarray  # [P, F] facet cosines
    codes: np.ndarray  # [P] nearest centroid
    holistic: np.ndarray  # [P] cosine of the whole reduced vectors
    share: np.ndarray  # [K] share of the pairs per code


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
    """Write out_dir/report.md with heatmap.png and codes.png for the dissection at `dissection_path`."""
    dis = Dissection.open(dissection_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _titles_by_row(dis.store, titles)
    rng = np.random.default_rng(seed)
    facets_meta = dis.meta["facets"]
    sample = rng.choice(dis.rows, size=min(len(dis.rows), facets_meta["sample_items"]), replace=False)
    pearson = dimension_affinity(dis.x[sample], "pearson")
    parts = partitions(dis.x.shape[1], dis.n_facets, dis.facets, facets_meta["mode"], dis.affinity, dis.meta["seed"])
    lines = header_lines(dis, name)
    table, quality = facet_quality_table(dis, parts, pearson)
    lines += table
    plot_heatmap(dis, parts, quality, name, out / "heatmap.png")
    types = sample_types(dis, sample_pairs, rng)
    plot_codes(dis, types, out / "codes.png")
    lines += code_table_lines(dis, types)
    lines += example_lines(dis, types, names, n_types, n_examples)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def header_lines(dis: Dissection, name: str | None) -> list[str]:
    """Title, provenance bullets (source, reduction, facets, codebook) and the facet table's heading."""
    meta = dis.meta
    source, reduction = meta["source"], meta["reduction"]
    facets_meta, codebook_meta = meta["facets"], meta["codebook"]
    d = dis.x.shape[1]
    pairs = codebook_meta["pairs"]
    variance = reduction.get("explained_variance_ratio")
    variance = "" if variance is None else f", explained variance {variance:.1%}"
    fit_rows = f", fit on {reduction['fit_rows']:,} rows" if "fit_rows" in reduction else ""
    return [
        f"# Dissection report: {name or Path(dis.store.path).name}",
        "",
        f"- source: `{source['path']}` ({source['n_items']:,} items x {source['dim']} dims, "
        f"item fingerprint `{source['item_fingerprint']}`); {len(dis.rows):,} usable rows",
        f"- reduction: {reduction['method']} to {d} dims{variance}{fit_rows}",
        f"- facets: {facets_meta['mode']}, F = {dis.n_facets}, sizes {facets_meta['sizes']}, "
        f"affinity statistic `{facets_meta['statistic']}` from {facets_meta['sample_items']:,} items",
        f"- codebook: K = {dis.n_codes}, fitted on {sum(pairs.values()):,} pairs "
        f"({', '.join(f'{k} {v:,}' for k, v in pairs.items())}), "
        f"inertia per pair {codebook_meta['inertia_per_pair']:.4f}, seed {meta['seed']}",
        "",
        "## Do dims inside a facet co-vary more than across facets?",
        "",
        "Mean affinity over pairs of distinct dims inside one facet vs in different facets. "
        "`energy` = |corr(z_a^2, z_b^2)| of centred dims (co-activation; survives PCA), "
        "`pearson` = |corr(x_a, x_b)| (~0 for PCA outputs by construction).",
        "",
        "| partition | statistic | within | across | within / across |",
        "|---|---|---|---|---|",
    ]


def facet_quality_table(
    dis: Dissection, parts: dict[str, np.ndarray], pearson: np.ndarray
) -> tuple[list[str], dict[tuple[str, str], dict]]:
    """Within/across affinity of every partition under the stored statistic (and Pearson beside it): the
    table rows, and the numbers by (partition, statistic) for the heatmap titles."""
    statistic = dis.meta["facets"]["statistic"]
    statistics = (
        ((statistic, dis.affinity), ("pearson", pearson)) if statistic != "pearson" else (("pearson", dis.affinity),)
    )
    rows, quality = [], {}
    for part_name, part in parts.items():
        for stat_name, affinity in statistics:
            q = facet_quality(affinity, part)
            quality[(part_name, stat_name)] = q
            ratio = q["within"] / max(q["across"], 1e-12)
            rows.append(f"| {part_name} | {stat_name} | {q['within']:.4f} | {q['across']:.4f} | {ratio:.2f} |")
    return rows, quality


def plot_heatmap(dis: Dissection, parts: dict[str, np.ndarray], quality: dict, name: str | None, path: Path) -> None:
    """|affinity| ordered by facet, one panel per partition, facet borders in white."""
    statistic = dis.meta["facets"]["statistic"]
    d = dis.affinity.shape[0]
    vmax = np.quantile(dis.affinity[~np.eye(d, dtype=bool)], 0.99)
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4.8), squeeze=False)
    for ax, (part_name, part) in zip(axes[0], parts.items()):
        order = np.argsort(part, kind="stable")
        image = ax.imshow(dis.affinity[np.ix_(order, order)], cmap="viridis", vmin=0, vmax=vmax)
        for edge in np.cumsum(np.bincount(part))[:-1]:
            ax.axhline(edge - 0.5, color="w", lw=0.6)
            ax.axvline(edge - 0.5, color="w", lw=0.6)
        q = quality[(part_name, statistic)]
        ax.set_title(f"{part_name}: within {q['within']:.3f} / across {q['across']:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=f"{statistic} affinity")
    fig.suptitle(f"{name or ''} dimension affinity ordered by facet", fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def sample_types(dis: Dissection, sample_pairs: int, rng: np.random.Generator) -> TypeSample:
    """A fresh sample of uniform pairs (not the fit sample) with their codes and holistic cosines."""
    pairs = uniform_pairs(dis.rows, sample_pairs, rng)
    sims = facet_similarity(dis.x, pairs[:, 0], pairs[:, 1], dis.facets, dis.n_facets)
    codes = assign_codes(sims, dis.centroids)
    unit = dis.x / np.maximum(np.linalg.norm(dis.x, axis=1, keepdims=True), 1e-12)
    holistic = np.einsum("pd,pd->p", unit[pairs[:, 0]], unit[pairs[:, 1]])
    share = np.bincount(codes, minlength=dis.n_codes) / len(codes)
    return TypeSample(pairs, sims, codes, holistic, share)


def _fit_shares(dis: Dissection) -> np.ndarray:
    """Share of the codebook's fit sample per code (code 0 = the most common type)."""
    sizes = np.asarray(dis.meta["codebook"]["cluster_sizes"])
    return sizes / sizes.sum()


def plot_codes(dis: Dissection, types: TypeSample, path: Path) -> None:
    """Bars: share per code in the fit sample; dots: in the fresh sample (they should agree)."""
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(np.arange(dis.n_codes), _fit_shares(dis), color="tab:blue", label="fit sample")
    ax.plot(np.arange(dis.n_codes), types.share, "k.", label="fresh uniform pairs")
    ax.set_xlabel("correlation type (code)")
    ax.set_ylabel("share of pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def code_table_lines(dis: Dissection, types: TypeSample) -> list[str]:
    """The heatmap, then the correlation types section: balance summary and one row per code."""
    fit_share, share = _fit_shares(dis), types.share
    entropy = -(share[share > 0] * np.log(share[share > 0])).sum() / np.log(dis.n_codes)
    lines = [
        "",
        "![dimension affinity by facet](heatmap.png)",
        "",
        "## Correlation types",
        "",
        f"Share of pairs per code (fit sample; {len(types.pairs):,} fresh uniform pairs in the dots): largest "
        f"{fit_share.max():.1%}, smallest {fit_share.min():.1%}, entropy {entropy:.2f} of the maximum.",
        "",
        "![code distribution](codes.png)",
        "",
        "| code | share (fit) | share (fresh) | mean holistic cos | centroid (facet cosines) |",
        "|---|---|---|---|---|",
    ]
    for k in range(dis.n_codes):
        in_code = types.codes == k
        mean_holistic = types.holistic[in_code].mean() if in_code.any() else float("nan")
        lines.append(
            f"| {k} | {fit_share[k]:.3f} | {share[k]:.3f} | {mean_holistic:.3f} | {_signed(dis.centroids[k])} |"
        )
    return lines


def example_lines(dis: Dissection, types: TypeSample, names: list[str], n_types: int, n_examples: int) -> list[str]:
    """For a few readable types (highest and lowest mean centroid, the most uneven across facets, the most
    common), the distinct item pairs closest to the centroid, with their titles."""
    centroids = dis.centroids
    picks = [int(np.argmax(centroids.mean(1))), int(np.argmax(centroids.std(1))), int(np.argmin(centroids.mean(1))), 0]
    lines = ["", "## Item pairs closest to a few centroids", ""]
    for k in list(dict.fromkeys(picks))[:n_types]:
        idx = np.flatnonzero(types.codes == k)
        if idx.size == 0:
            continue
        lines += [
            f"### code {k}: centroid {_signed(centroids[k])} "
            f"(mean {centroids[k].mean():+.2f}, spread {centroids[k].std():.2f}; {types.share[k]:.1%} of pairs)",
            "",
            "| item i | item j | holistic cos | facet cosines |",
            "|---|---|---|---|",
        ]
        dist = ((types.sims[idx] - centroids[k]) ** 2).sum(1)
        for p in _distinct_pairs(types.pairs, idx[np.argsort(dist)], n_examples):
            a, b = types.pairs[p]
            lines.append(
                f"| {_short(names[a])} | {_short(names[b])} | {types.holistic[p]:.2f} | {_signed(types.sims[p])} |"
            )
        lines.append("")
    return lines


def _distinct_pairs(pairs: np.ndarray, order: np.ndarray, n: int) -> list[int]:
    """The first `n` indices in `order` whose unordered item pair was not seen yet (pairs are drawn with
    replacement, so the closest pairs can repeat)."""
    shown: set[tuple[int, int]] = set()
    picked = []
    for p in order:
        a, b = pairs[p]
        key = (min(a, b), max(a, b))
        if key in shown:
            continue
        shown.add(key)
        if len(shown) > n:
            break
        picked.append(int(p))
    return picked
