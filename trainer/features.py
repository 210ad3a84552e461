"""Per-modality inputs of the student: the stored (reduced) features that initialise V^m, and the teacher
that turns sequences into correlation targets. Both are refused unless their items match the dataset's,
row for row.

Each modality's store is opened and read once (`ModalitySource`): the same (N + 1, d) matrix initialises
V^m and feeds the teacher, and the store's attributes identify the run's inputs for a resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feature_store.store import FeatureStore, StoreError
from feature_store.teacher import Teacher
from kdsr.dataset import PreparedDataset
from kdsr.errors import KdsrError

log = logging.getLogger(__name__)


@dataclass
class ModalitySource:
    """One modality's store, opened and read once.

    table: (N + 1, d) float32, a zero padding row 0 and zeros for masked (content-less) items; the student
    copies it into V^m and the teacher reads it (a masked row is no valid teacher item either way).
    """

    name: str
    store: FeatureStore
    table: torch.Tensor

    @classmethod
    def open(cls, name: str, path: str, item_ids: list[str]) -> ModalitySource:
        store = FeatureStore.open(path)
        store.check_items(item_ids)
        x = store.read_all("float32")
        x[~store.mask()] = 0.0
        if not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x).all(1))
            raise StoreError(
                f"{path}: {bad.size} rows with NaN/inf features, first row {bad[0]} (item {item_ids[bad[0]]!r})"
            )
        return cls(name, store, torch.from_numpy(np.concatenate([np.zeros((1, x.shape[1]), np.float32), x])))

    def teacher(self, unique_items: bool = True) -> Teacher:
        """The dissection's teacher (feature_store/teacher.py) on this table, on CPU: its targets are computed
        in the DataLoader workers or in the step, both from host batches."""
        group, path = self.store.group, self.store.path
        missing = [k for k in ("facets", "centroids") if k not in group]
        if missing:
            raise StoreError(
                f"{path}: not a dissection store (missing {', '.join(missing)}); run `kdsr dissect` on it first"
            )
        facets = torch.from_numpy(np.asarray(group["facets"][:], np.int64))
        centroids = torch.from_numpy(np.asarray(group["centroids"][:], np.float32))
        if facets.numel() != self.table.shape[1] or int(facets.max()) + 1 != centroids.shape[1]:
            raise StoreError(
                f"{path}: facets ({facets.numel()} dims, {int(facets.max()) + 1} facets) do not fit features "
                f"{tuple(self.table.shape)} / centroids {tuple(centroids.shape)}"
            )
        # usable_rows (masked and all-zero rows out): the masked rows are zero here, and so is padding row 0
        valid = self.table.ne(0).any(1)
        return Teacher(self.table, valid, facets, centroids, unique_items=unique_items)


def scale_features(table: torch.Tensor, how: str) -> torch.Tensor:
    """`model.feature_scaling` of an (N + 1, d) table whose all-zero rows (padding, masked items) stay zero:
    "none" as stored, "l2" unit rows, "standardize" zero mean and unit std per dimension over the items."""
    if how == "none":
        return table
    rows = table.ne(0).any(1)
    x = table[rows]
    if how == "l2":
        x = torch.nn.functional.normalize(x, dim=1)
    elif how == "standardize":
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    else:
        raise ValueError(f"unknown feature scaling {how!r}; known: none, l2, standardize")
    out = torch.zeros_like(table)
    out[rows] = x
    return out


def open_modalities(cfg, ds: PreparedDataset) -> dict[str, ModalitySource]:
    """Every configured modality's store, checked against the dataset's items and read once."""
    ids = ds.item_original_ids()
    return {m.name: ModalitySource.open(m.name, m.features, ids) for m in cfg.modalities}


def input_identity(ds: PreparedDataset, sources: dict[str, ModalitySource]) -> dict[str, object]:
    """What identifies the run's inputs beyond their paths, flat (key -> value) so a resume can name what
    changed: the dataset's stats.json and each modality store's `store_identity`. A rebuilt dataset or store
    under the same path changes some of these."""
    return stores_identity(ds, {name: source.store for name, source in sources.items()})


class RunError(KdsrError, ValueError):
    """A run directory that cannot be used: missing files, or inputs rebuilt since training."""


def check_run_inputs(run: Path, cfg, ds: PreparedDataset, skip: str = "check_inputs=false skips this check") -> dict:
    """The run's input identity now (dataset statistics, each store's fingerprint and creation), refused unless it
    equals the one recorded when it was trained: a store rebuilt under the same path would otherwise be read as
    the run's own. `skip` tells the user how to go on anyway."""
    stores = {}
    for m in cfg.modalities:
        try:
            stores[m.name] = FeatureStore.open(m.features)
        except KdsrError as e:
            raise RunError(f"{e} (modality {m.name!r} of {run}; {skip})") from None
    now = stores_identity(ds, stores)
    compare_run_inputs(run, now, skip)
    return now


def compare_run_inputs(run: Path, now: dict, skip: str) -> None:
    """Refuse `now` (an input identity) unless it is the one recorded in the run's last checkpoint."""
    state = run / "checkpoints" / "last" / "trainer_state.json"
    before = json.loads(state.read_text()).get("inputs") if state.exists() else None
    if not before:
        log.warning("%s: no input identity recorded; the dataset and stores are not checked", state)
    elif before != now:
        raise RunError(
            f"{run}: the inputs differ from those the run was trained on (rebuilt under the same path?) in: "
            f"{', '.join(identity_diff(before, now))}; {skip}"
        )


def identity_diff(before: dict, now: dict) -> list[str]:
    """The keys on which two input identities differ."""
    return sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))


def stores_identity(ds: PreparedDataset, stores: dict[str, FeatureStore]) -> dict[str, object]:
    """`input_identity` from opened stores, without reading their features (what a trained run's users need:
    the weights already hold V^m, only the check that the inputs are still the run's remains)."""
    stats = json.dumps(ds.stats, sort_keys=True).encode()
    ident: dict[str, object] = {"dataset.stats_sha256": hashlib.sha256(stats).hexdigest()[:16]}
    for name, store in stores.items():
        ident |= store_identity(name, store)
    return json.loads(json.dumps(ident))  # as trainer_state.json will give it back


def store_identity(name: str, store: FeatureStore) -> dict[str, object]:
    """The store's item fingerprint, creation time and, for a dissection, its seed and config."""
    attrs = store.attrs
    dissect = attrs.get("dissect") or {}
    return {
        f"{name}.item_fingerprint": attrs.get("item_fingerprint"),
        f"{name}.created": attrs.get("created"),
        f"{name}.dissect.seed": dissect.get("seed"),
        f"{name}.dissect.config": dissect.get("config"),
    }
