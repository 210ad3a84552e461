"""How much of the encoder a trained run's modality tables V^m kept: the measure of the modality forgetting
that the asynchronous step and the distillation are there to prevent (docs/METHOD.md, "Asynchronous learning
step").

Per modality: the mean cosine of each item's trained row with the stored feature it started from, and the
Pearson r between item-pair cosines in the trained table and in the stored features over random pairs (the
correlation structure the distillation supervises). 1.0 = nothing forgotten.

Forgetting is only a fault if what was kept helps ranking, so `next_item_knn` also measures how much
next-item signal a table holds by itself: rank every item by cosine to the user's last item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from kdsr.config import load_config
from kdsr.dataset import PreparedDataset
from trainer.config import TrainConfig
from trainer.data import UserSequences, open_dataset, pad_ids, sample_cases
from trainer.features import ModalitySource, check_run_inputs
from trainer.metrics import candidate_scores, ranking_metrics, target_ranks
from trainer.student import Student


def table_retention(
    start: torch.Tensor, trained: torch.Tensor, n_pairs: int = 200_000, seed: int = 0
) -> tuple[float, float]:
    """start, trained (N, d) rows of the same items -> (mean row cosine, pair-cosine Pearson r); all-zero
    (content-less) start rows are left out."""
    keep = start.norm(dim=1) > 0
    x, v = F.normalize(start[keep].float(), dim=1), F.normalize(trained[keep].float(), dim=1)
    i, j = torch.randint(len(x), (2, n_pairs), generator=torch.Generator().manual_seed(seed))
    pairs = torch.stack([(x[i] * x[j]).sum(1), (v[i] * v[j]).sum(1)])
    return float((x * v).sum(1).mean()), float(torch.corrcoef(pairs)[0, 1])


@dataclass
class TrainedRun:
    """What a finished run's measures read, once: its config, dataset and, per modality, (stored features,
    trained V) with row 0 = padding, both (N + 1, d); tables is {} without modalities."""

    config: TrainConfig
    dataset: PreparedDataset
    tables: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_run(run_dir: str | Path) -> TrainedRun:
    """Read a finished run's selected checkpoint and the feature stores it started from."""
    run_dir = Path(run_dir)
    cfg = load_config(TrainConfig, run_dir / "config.yaml")
    ds = open_dataset(cfg.dataset)
    if not cfg.modalities:
        return TrainedRun(cfg, ds, {})
    check_run_inputs(run_dir, cfg, ds, skip="retrain, or restore the run's inputs")  # the stores it compares with
    best = run_dir / "best" / "model.safetensors"
    if not best.exists():
        raise FileNotFoundError(f"{best}: no selected checkpoint (did the run finish an epoch?)")
    trained = Student.saved_modality_tables(load_file(best))
    ids = ds.item_original_ids()
    tables = {}
    for m in cfg.modalities:
        start = ModalitySource.open(m.name, m.features, ids).table
        tables[m.name] = (start, trained[m.name][: len(start)])
    return TrainedRun(cfg, ds, tables)


def run_retention(run: TrainedRun) -> dict[str, tuple[float, float]]:
    """{modality: (row cosine, pair-cosine r)} of a finished run (padding row 0 left out); {} without
    modalities."""
    return {m: table_retention(start[1:], trained[1:]) for m, (start, trained) in run.tables.items()}


@torch.no_grad()
def next_item_knn(table: torch.Tensor, histories: list, targets: list, k: int = 10, max_scores: int = 2**25) -> float:
    """NDCG@k of ranking all items by cos(table[last history item], table[j]), history items excluded (the
    last item is its own nearest neighbour). table (N + 1, d) with row 0 = padding; histories / targets:
    id arrays, one per evaluation case, the first target counts (leave-one-out). Content-less (zero) rows score 0.
    Cases are scored in blocks of about `max_scores` scores (128 MiB of float32; at least one case per block),
    whatever the catalog size."""
    batch = max(1, max_scores // len(table))
    t = F.normalize(table.float(), dim=1)
    t[0] = 0.0
    total = 0.0
    for s in range(0, len(histories), batch):
        hist = histories[s : s + batch]
        seen = pad_ids(hist)
        last = torch.as_tensor([int(h[-1]) for h in hist])
        rel = torch.as_tensor([[int(r[0])] for r in targets[s : s + batch]])
        ranks = target_ranks(candidate_scores(t[last] @ t.T, seen=seen), rel)
        total += float(ranking_metrics(ranks, [k])[f"ndcg@{k}"].sum())
    return total / len(histories)


def run_knn(run: TrainedRun, split: str = "valid") -> dict[str, float]:
    """{"stored <m>", "trained <m>": next-item kNN NDCG@10} for a finished run's modality tables, before and
    after training, on the run's own evaluation cases (eval.cases, and eval.sample_users: the cases its metrics
    were measured on); {} without modalities."""
    if not run.tables:
        return {}
    cfg = run.config
    hist, rel, _ = UserSequences.from_dataset(run.dataset).eval_cases(split, cfg.eval.cases == "per_item")
    hist, rel = sample_cases(hist, rel, cfg.eval.sample_users, cfg.seed, split)
    out = {}
    for m, (start, trained) in run.tables.items():
        out[f"stored {m}"] = next_item_knn(start, hist, rel)
        out[f"trained {m}"] = next_item_knn(trained, hist, rel)
    return out
