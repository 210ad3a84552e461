"""How much of the encoder a trained run's modality tables V^m kept: the measure of the modality forgetting
that the asynchronous step and the distillation are there to prevent (DESIGN.md 2.5).

Per modality: the mean cosine of each item's trained row with the stored feature it started from, and the
Pearson r between item-pair cosines in the trained table and in the stored features over random pairs (the
correlation structure the distillation supervises). 1.0 = nothing forgotten.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from torch.nn import functional as F

from kdsr.prepare.dataset import PreparedDataset
from trainer.features import load_features


def table_retention(start: torch.Tensor, trained: torch.Tensor, n_pairs: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """start, trained (N, d) rows of the same items -> (mean row cosine, pair-cosine Pearson r); all-zero
    (content-less) start rows are left out."""
    keep = start.norm(dim=1) > 0
    x, v = F.normalize(start[keep].float(), dim=1), F.normalize(trained[keep].float(), dim=1)
    i, j = torch.randint(len(x), (2, n_pairs), generator=torch.Generator().manual_seed(seed))
    pairs = torch.stack([(x[i] * x[j]).sum(1), (v[i] * v[j]).sum(1)])
    return float((x * v).sum(1).mean()), float(torch.corrcoef(pairs)[0, 1])


def run_retention(run_dir: str | Path) -> dict[str, tuple[float, float]]:
    """{modality: (row cosine, pair-cosine r)} of a finished run's selected checkpoint; {} without modalities."""
    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    if not cfg.get("modalities"):
        return {}
    weights = load_file(run_dir / "best" / "model.safetensors")
    ids = PreparedDataset.open(cfg["dataset"]).item_original_ids()
    out = {}
    for m in cfg["modalities"]:
        start = load_features(m["features"], ids)[1:]  # row 0 is padding
        out[m["name"]] = table_retention(start, weights[f"modal.{m['name']}"][1 : len(start) + 1])
    return out
