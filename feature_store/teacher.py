"""The teacher signal the trainer consumes: per-batch holistic similarities and correlation-type codes.

Everything is computed on the fly from the dissection store's reduced features, O(B L^2 (d + F + K)) per
call and never N x N. Plain torch: it runs on the GPU in the training step, or on CPU inside DataLoader
workers (it uses whatever `torch.set_num_threads` allows, and 1 is fine).

    teacher = Teacher.from_store("runs/features/beauty/text/minilm.dissect.zarr", device="cuda")
    t = teacher.targets(seqs)          # seqs: [B, L] item indices, 0 = padding
    t.sim, t.codes, t.valid, t.pair_mask
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from feature_store.store import FeatureStore, StoreError

IGNORE = -100  # code of a pair with no target: PyTorch's cross-entropy ignore_index


def usable_rows(block: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """mask & finite & not an all-zero row: a zero row has no direction and a NaN row no value, so their
    cosines are undefined."""
    return np.asarray(mask, bool) & np.any(block != 0, axis=1) & np.isfinite(block).all(axis=1)


def facet_units(x: torch.Tensor, facets: torch.Tensor, n_facets: int) -> torch.Tensor:
    """[n, d] -> [n, F, m]: each facet's dims (zero-padded to the largest facet, m dims) scaled to unit norm.
    A facet that is all zero stays zero, so its cosine with anything is 0."""
    sizes = torch.bincount(facets, minlength=n_facets)
    m = int(sizes.max())
    d = facets.numel()
    order = torch.argsort(facets, stable=True)
    slot = torch.full((n_facets, m), d, dtype=torch.long)  # index d = an extra zero column
    start = 0
    for f in range(n_facets):
        k = int(sizes[f])
        slot[f, :k] = order[start : start + k]
        start += k
    xz = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
    u = xz[:, slot]  # [n, F, m]
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def nearest_centroid(sims: torch.Tensor, centroids_t: torch.Tensor, half_norm: torch.Tensor, rows: int) -> torch.Tensor:
    """Nearest centroid (squared Euclidean) of each row of sims [P, F], given centroids_t [F, K] and
    half_norm [K] = ||c||^2 / 2: argmin ||s - c||^2 = argmax (s.c - ||c||^2 / 2), one addmm per `rows` rows."""
    out = torch.empty(sims.shape[0], dtype=torch.long, device=sims.device)
    for s in range(0, sims.shape[0], rows):  # bounded (rows, K) score blocks
        out[s : s + rows] = torch.addmm(half_norm, sims[s : s + rows], centroids_t, beta=-1).argmax(-1)
    return out


class TeacherTargets(NamedTuple):
    sim: torch.Tensor  # [B, L, L] float32: cos(x_i, x_j); 0 unless both items are valid
    codes: torch.Tensor  # [B, L, L] long: nearest centroid of c_ij; -100 (ignore_index) where not pair_mask
    valid: torch.Tensor  # [B, L] bool: item != 0, its feature row is usable (and, unique_items, its first position)
    pair_mask: torch.Tensor  # [B, L, L] bool: valid_i & valid_j & i != j & item_i != item_j


@dataclass
class Teacher:
    features: torch.Tensor  # [N+1, d] reduced features, row 0 = padding (zeros)
    valid: torch.Tensor  # [N+1] bool
    facets: torch.Tensor  # [d] long
    centroids: torch.Tensor  # [K, F]
    # caches derived from the above (built by __post_init__ / to()); unit rows are not cached: normalising
    # the batch's B*L rows costs far less than the B*L*L*d similarity matmul, and saves an [N+1, d] copy
    _facet_unit: torch.Tensor | None = None  # [N+1, F, m] unit facet sub-vectors
    _half_norm: torch.Tensor | None = None  # [K] 0.5 * ||centroid||^2
    _centroids_t: torch.Tensor | None = None  # [F, K] contiguous
    max_block: int = 1 << 18  # elements of the (pairs, K) score block computed at once (fits in cache)
    # A sequence's nodes are its unique items (a repeated item is one node: only its first position is valid),
    # as in the released code; False: every position is a node, so a repeated item's pairs count repeatedly.
    unique_items: bool = True

    def __post_init__(self) -> None:
        ok = self.valid[:, None, None].to(self.features.dtype)
        self._facet_unit = facet_units(self.features, self.facets.cpu(), self.n_facets).to(self.features.device) * ok
        self._half_norm = 0.5 * (self.centroids * self.centroids).sum(1)
        self._centroids_t = self.centroids.T.contiguous()

    @classmethod
    def from_store(
        cls, path: str | Path, device: str | torch.device = "cpu", dataset_item_ids: Sequence[str] | None = None
    ) -> Teacher:
        """Load a dissection store (`kdsr dissect` output). Item index i = store row i - 1; index 0 = padding."""
        store = FeatureStore.open(path)
        missing = [k for k in ("facets", "centroids") if k not in store.group]
        if missing:
            raise StoreError(
                f"{path}: not a dissection store (missing {', '.join(missing)}); run `kdsr dissect` on it first"
            )
        if dataset_item_ids is not None:
            store.check_items(dataset_item_ids)
        elif not store.is_complete():
            raise StoreError(f"{path}: {len(store.pending_shards())} shards are not written; re-run `kdsr dissect`")
        x = store.read_all("float32")
        usable = usable_rows(x, store.mask())
        features = torch.cat([torch.zeros(1, x.shape[1]), torch.from_numpy(x)])
        valid = torch.cat([torch.zeros(1, dtype=torch.bool), torch.from_numpy(usable)])
        facets = torch.from_numpy(np.asarray(store.group["facets"][:], np.int64))
        centroids = torch.from_numpy(np.asarray(store.group["centroids"][:], np.float32))
        if facets.numel() != x.shape[1] or int(facets.max()) + 1 != centroids.shape[1]:
            raise StoreError(
                f"{path}: facets ({facets.numel()} dims, {int(facets.max()) + 1} facets) do not fit "
                f"features {x.shape} / centroids {tuple(centroids.shape)}"
            )
        return cls(features, valid, facets, centroids).to(device)

    @property
    def n_codes(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_facets(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device: str | torch.device) -> Teacher:
        for name in ("features", "valid", "facets", "centroids", "_facet_unit", "_half_norm", "_centroids_t"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def targets(self, seqs: torch.Tensor) -> TeacherTargets:
        """seqs: [B, L] long item indices (0 = padding) -> TeacherTargets on the teacher's device."""
        seqs = torch.as_tensor(seqs, device=self.device).long()
        if seqs.dim() != 2:
            raise ValueError(f"Teacher.targets expects [B, L] item indices, got shape {tuple(seqs.shape)}")
        if seqs.numel() and (int(seqs.min()) < 0 or int(seqs.max()) >= self.features.shape[0]):
            raise ValueError(
                f"item index out of range [0, {self.features.shape[0] - 1}] (got {int(seqs.min())}..{int(seqs.max())})"
            )
        B, L = seqs.shape
        valid = self.valid[seqs]  # (B, L)
        same = seqs[:, :, None] == seqs[:, None, :]  # (B, L, L)
        if self.unique_items:
            valid = valid & ~torch.tril(same, diagonal=-1).any(-1)  # repeats of an earlier position are not nodes
        both = valid[:, :, None] & valid[:, None, :]  # (B, L, L)
        eye = torch.eye(L, dtype=torch.bool, device=self.device)
        pair_mask = both & ~eye & ~same

        x = self.features[seqs]  # (B, L, d)
        u = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * valid[:, :, None].to(x.dtype)
        sim = torch.bmm(u, u.transpose(1, 2))  # (B, L, L); invalid rows are zero, so their sims are 0

        # codes only for the supervised pairs, upper triangle, then mirrored (c_ij = c_ji)
        b, i, j = torch.nonzero(torch.triu(pair_mask, diagonal=1), as_tuple=True)
        if b.numel() * 8 > B * L * L:  # dense batch: one batched matmul per facet beats gathering pairs
            units = self._facet_unit[seqs].transpose(1, 2)  # (B, F, L, m)
            c = torch.matmul(units, units.transpose(-1, -2))[b, :, i, j]  # (P, F)
        else:
            c = (self._facet_unit[seqs[b, i]] * self._facet_unit[seqs[b, j]]).sum(-1)  # (P, F)
        code = nearest_centroid(
            c, self._centroids_t, self._half_norm, max(1, self.max_block // self.n_codes)
        )  # cache-sized blocks
        codes = torch.full((B, L, L), IGNORE, dtype=torch.long, device=self.device)
        codes[b, i, j] = code
        codes[b, j, i] = code
        return TeacherTargets(sim=sim, codes=codes, valid=valid, pair_mask=pair_mask)
