"""Reduce raw encoder features [N, D] to d dims, streamed from the Zarr store: PCA or the paper's autoencoder.

Both fit on a seeded sample of whole chunks (`fit_rows`), then one more streamed pass projects every row and
writes the reduced store shard by shard, so memory stays O(block * D + D^2) whatever N is.
Rows that are masked or all-zero are left out of the fit and written as masked zero rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from feature_store.store import FeatureStore, StoreError
from feature_store.teacher import usable_rows
from kdsr.progress import Progress

from .config import ReduceConfig

log = logging.getLogger(__name__)


@dataclass
class Reduction:
    """A fitted map from raw rows to reduced rows; `attrs` is the provenance written to the output store."""

    method: str
    dim: int
    mean: np.ndarray | None = None  # [D]
    scale: np.ndarray | None = None  # [D] (autoencoder input standardisation)
    weight: np.ndarray | None = None  # [D, d]
    bias: np.ndarray | None = None  # [d]
    attrs: dict = field(default_factory=dict)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """[n, D] -> [n, d] float32."""
        x = np.asarray(x, np.float32)
        if self.method == "none":
            return x
        with torch.no_grad():
            t = torch.from_numpy(x)
            if self.mean is not None:
                t = t - torch.from_numpy(self.mean)
            if self.scale is not None:
                t = t / torch.from_numpy(self.scale)
            y = t @ torch.from_numpy(self.weight)
            if self.method == "autoencoder":
                y = torch.sigmoid(y + torch.from_numpy(self.bias))
        return y.numpy()


def block_starts(store: FeatureStore, block_rows: int) -> tuple[int, list[int]]:
    """Block size rounded up to whole store chunks, and the start row of every block."""
    step = -(-block_rows // store.shard_size) * store.shard_size
    return step, list(range(0, store.n_items, step))


def fit_blocks(store: FeatureStore, mask: np.ndarray, cfg: ReduceConfig, rng: np.random.Generator) -> list[int]:
    """Start rows of the blocks to fit on: all, or whole blocks drawn at random until `fit_rows` valid rows."""
    step, starts = block_starts(store, cfg.block_rows)
    if cfg.fit_rows is None or cfg.fit_rows >= int(mask.sum()):
        return starts
    chosen, total = [], 0
    for s in rng.permutation(len(starts)):
        chosen.append(starts[s])
        total += int(mask[starts[s] : starts[s] + step].sum())
        if total >= cfg.fit_rows:
            break
    return sorted(chosen)


def _blocks(
    store: FeatureStore, starts: list[int], step: int, mask: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start row, block, usable rows of the block) for each start, read one block at a time."""
    for start in starts:
        block = np.asarray(store.embeddings[start : start + step])
        yield start, block, usable_rows(block, mask[start : start + step])


def fit_pca(store: FeatureStore, mask: np.ndarray, cfg: ReduceConfig, seed: int) -> Reduction:
    """PCA of the fit rows: covariance accumulated block by block in float64, then its top components (exact
    eigh up to D = 1024, randomized SVD above: `_top_components`)."""
    rng = np.random.default_rng(seed)
    step, _ = block_starts(store, cfg.block_rows)
    starts = fit_blocks(store, mask, cfg, rng)
    D = store.dim
    if cfg.dim > D:
        raise StoreError(f"{store.path}: cannot reduce {D}-d features to reduce.dim={cfg.dim} > {D}")
    cov, mean, n = _covariance(store, starts, step, mask)
    if n <= cfg.dim:
        raise StoreError(f"{store.path}: PCA to {cfg.dim} dims needs more than {cfg.dim} valid rows, found {n}")
    evals, evecs = _top_components(cov, cfg.dim, seed)
    ratio = (evals / torch.trace(cov)).numpy()
    return Reduction(
        method="pca",
        dim=cfg.dim,
        mean=mean.float().numpy(),
        weight=evecs.float().numpy(),
        attrs={
            "method": "pca",
            "dim": cfg.dim,
            "fit_rows": n,
            "explained_variance_ratio": float(ratio.sum()),
            "explained_variance_ratio_per_dim": [float(r) for r in ratio],
        },
    )


def _covariance(
    store: FeatureStore, starts: list[int], step: int, mask: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(covariance [D, D] float64, mean [D] float64, rows) of the usable rows of the given blocks.

    Each block is shifted by the first block's mean before the float32 matmul, so a large common offset
    (LLM hidden states have one) does not cancel catastrophically."""
    D = store.dim
    gram = torch.zeros(D, D, dtype=torch.float64)
    total = torch.zeros(D, dtype=torch.float64)
    shift, n = None, 0
    progress = Progress(len(starts), "dissect: pca fit", "blocks", bar=False, logger=log)
    for _, block, ok in _blocks(store, starts, step, mask):
        progress.update(1, rows=f"{n:,}")  # rows: usable rows summed before this block
        x = torch.from_numpy(block[ok].astype(np.float32))
        if x.shape[0] == 0:
            continue
        if shift is None:
            shift = x.mean(0)
        x = x - shift
        gram += (x.T @ x).double()
        total += x.sum(0).double()
        n += x.shape[0]
    if n == 0:
        return gram, total, 0
    shifted_mean = total / n
    return gram / n - torch.outer(shifted_mean, shifted_mean), shifted_mean + shift.double(), n


def _top_components(cov: torch.Tensor, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues [dim], eigenvectors [D, dim]) of the largest `dim` components, signs made deterministic."""
    if cov.shape[0] <= 1024:
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0)[:dim].clamp_min(0), evecs.flip(1)[:, :dim]
    else:  # a full eigh of 4096 x 4096 takes minutes on 2 cores; the top d by randomized power iteration take seconds
        from sklearn.utils.extmath import randomized_svd  # imported here: only this branch needs sklearn

        vecs, vals, _ = randomized_svd(cov.numpy(), dim, n_oversamples=64, n_iter=8, random_state=seed)
        evals, evecs = torch.from_numpy(vals).clamp_min(0), torch.from_numpy(vecs)
    # sign convention: the largest-magnitude entry of each component is positive (deterministic output)
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    return evals, evecs * signs


def fit_autoencoder(store: FeatureStore, mask: np.ndarray, cfg: ReduceConfig, seed: int) -> Reduction:
    """The paper's one-layer autoencoder: z = sigmoid(W x + b), x' = W' z + b', MSE, Adam, seeded.

    Inputs are standardised per dim (mean and std of the fit rows, one streamed pass), so the sigmoid is
    not saturated by the large raw scale of LLM hidden states."""
    rng = np.random.default_rng(seed)
    step, _ = block_starts(store, cfg.block_rows)
    starts = fit_blocks(store, mask, cfg, rng)
    mean, std, n = _standardisation(store, starts, step, mask)
    if n < 2:
        raise StoreError(f"{store.path}: the autoencoder needs at least 2 valid rows, found {n}")
    encoder, training = _train_autoencoder(store, starts, step, mask, mean, std, cfg, seed, rng)
    return Reduction(
        method="autoencoder",
        dim=cfg.dim,
        mean=mean.astype(np.float32),
        scale=std.astype(np.float32),
        weight=encoder.weight.detach().T.contiguous().numpy(),
        bias=encoder.bias.detach().numpy(),
        attrs={
            "method": "autoencoder",
            "dim": cfg.dim,
            "fit_rows": n,
            **training,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
        },
    )


def _standardisation(
    store: FeatureStore, starts: list[int], step: int, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean [D], std [D] + 1e-6, rows) of the usable rows of the given blocks, in float64."""
    D = store.dim
    s1, s2, n = np.zeros(D), np.zeros(D), 0
    for _, block, ok in _blocks(store, starts, step, mask):
        x = block[ok].astype(np.float64)
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
        n += x.shape[0]
    mean = s1 / max(n, 1)
    return mean, np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0)) + 1e-6, n


def _train_autoencoder(
    store: FeatureStore,
    starts: list[int],
    step: int,
    mask: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    cfg: ReduceConfig,
    seed: int,
    rng: np.random.Generator,
) -> tuple[torch.nn.Linear, dict]:
    """Adam on the standardised fit blocks (shuffled each epoch); returns the encoder and what training did.
    Small catalogs repeat epochs until `min_steps` steps, so the fit does not stop half-trained."""
    mean_t, std_t = torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))
    torch.manual_seed(seed)
    enc, dec = torch.nn.Linear(store.dim, cfg.dim), torch.nn.Linear(cfg.dim, store.dim)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    loss_sum, seen, steps, epoch = 0.0, 0, 0, 0
    while epoch < cfg.epochs or steps < cfg.min_steps:
        epoch += 1
        loss_sum, seen = 0.0, 0
        for _, block, ok in _blocks(store, [starts[i] for i in rng.permutation(len(starts))], step, mask):
            x = (torch.from_numpy(block[ok].astype(np.float32)) - mean_t) / std_t
            for idx in torch.randperm(x.shape[0], generator=gen).split(cfg.batch_size):
                xb = x[idx]
                loss = torch.nn.functional.mse_loss(dec(torch.sigmoid(enc(xb))), xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
                steps += 1
        log.info("autoencoder epoch %d (%d steps): mse %.4f (standardised inputs)", epoch, steps, loss_sum / seen)
    return enc, {"epochs": epoch, "steps": steps, "final_mse_standardised": loss_sum / max(seen, 1)}


def fit_reduction(store: FeatureStore, mask: np.ndarray, cfg: ReduceConfig, seed: int) -> Reduction:
    """The configured map from raw rows to reduced rows (`none` keeps the input dims as float32)."""
    if cfg.method == "none":
        return Reduction(method="none", dim=store.dim, attrs={"method": "none", "dim": store.dim})
    if cfg.dim > store.dim:
        raise StoreError(f"{store.path}: cannot reduce {store.dim}-d features to reduce.dim={cfg.dim}")
    if cfg.method == "pca":
        return fit_pca(store, mask, cfg, seed)
    return fit_autoencoder(store, mask, cfg, seed)


def write_reduced(src: FeatureStore, dst: FeatureStore, reduction: Reduction, block_rows: int) -> dict:
    """Project every row of `src` into `dst`, shard by shard. Returns counts of what was masked and why."""
    mask = src.mask()
    step, starts = block_starts(src, block_rows)
    src_errors = src.group["errors"] if "errors" in src.group else None
    zero_rows = nonfinite_rows = 0
    progress = Progress(src.n_items, "dissect: reduce", "rows", bar=False, logger=log)
    for start in starts:
        block = np.asarray(src.embeddings[start : start + step])
        ok = usable_rows(block, mask[start : start + step])
        errs = (
            np.asarray(src_errors[start : start + len(block)]).astype(object)
            if src_errors is not None
            else np.full(len(block), "", dtype=object)
        ).astype(object)
        dropped = mask[start : start + len(block)] & ~ok
        finite = np.isfinite(block).all(axis=1)
        zero_rows += int((dropped & finite).sum())
        nonfinite_rows += int((dropped & ~finite).sum())
        errs[dropped & finite] = "all-zero feature row"
        errs[dropped & ~finite] = "non-finite feature row (NaN or inf)"
        out = np.zeros((len(block), dst.dim), np.float32)
        if ok.any():
            out[ok] = reduction.transform(block[ok])
        for shard in range(start // dst.shard_size, -(-(start + len(block)) // dst.shard_size)):
            a, b = dst.shard_rows(shard)
            dst.write_shard(
                shard,
                out[a - start : b - start],
                mask=ok[a - start : b - start],
                errors=list(errs[a - start : b - start]),
            )
        progress.update(len(block))
    progress.close()
    return {"masked_rows": int((~mask).sum()), "zero_rows": zero_rows, "nonfinite_rows": nonfinite_rows}
