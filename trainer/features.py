"""Per-modality inputs of the student: the stored (reduced) features that initialise V^m, and the teacher
that turns sequences into correlation targets. Both are refused unless their items match the dataset's,
row for row."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from feature_store.store import FeatureStore
from kdsr.dataset import PreparedDataset


def load_teacher(path: str, item_ids: list[str]):
    """The dissection's teacher (feature_store/teacher.py), on CPU: targets are computed in the
    DataLoader workers. A module-level function so tests can swap in a small fake."""
    from feature_store.teacher import Teacher

    return Teacher.from_store(path, device="cpu", dataset_item_ids=item_ids)


def load_features(path: str, item_ids: list[str]) -> torch.Tensor:
    """(N + 1, d) float32 with a zero padding row 0 and zeros for masked (content-less) items."""
    store = FeatureStore.open(path)
    store.check_items(item_ids)
    x = store.read_all("float32")
    x[~store.mask()] = 0.0
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(1))
        raise ValueError(
            f"{path}: {bad.size} rows with NaN/inf features, first row {bad[0]} (item {item_ids[bad[0]]!r})"
        )
    return torch.from_numpy(np.concatenate([np.zeros((1, x.shape[1]), np.float32), x]))


def load_modalities(cfg, ds: PreparedDataset) -> tuple[dict[str, torch.Tensor], dict, dict[str, int]]:
    """-> (features by modality, teachers by modality (only those that distil), n_codes by modality)."""
    ids = ds.item_original_ids()
    features, teachers, n_codes = {}, {}, {}
    for m in cfg.modalities:
        features[m.name] = load_features(m.features, ids)
        if cfg.distill.enabled and (m.weight_hol > 0 or m.weight_code > 0):
            teachers[m.name] = load_teacher(m.features, ids)
            n_codes[m.name] = int(teachers[m.name].n_codes)
    return features, teachers, n_codes


def input_identity(cfg, ds: PreparedDataset) -> dict[str, object]:
    """What identifies the run's inputs beyond their paths, flat (key -> value) so a resume can name what
    changed: the dataset's stats.json, and each modality store's item fingerprint, creation time and, for a
    dissection, its seed and config. A rebuilt dataset or store under the same path changes some of these."""
    stats = json.dumps(ds.stats, sort_keys=True).encode()
    ident: dict[str, object] = {"dataset.stats_sha256": hashlib.sha256(stats).hexdigest()[:16]}
    for m in cfg.modalities:
        attrs = FeatureStore.open(m.features).attrs
        dissect = attrs.get("dissect") or {}
        ident |= {
            f"{m.name}.item_fingerprint": attrs.get("item_fingerprint"),
            f"{m.name}.created": attrs.get("created"),
            f"{m.name}.dissect.seed": dissect.get("seed"),
            f"{m.name}.dissect.config": dissect.get("config"),
        }
    return json.loads(json.dumps(ident))  # as trainer_state.json will give it back
