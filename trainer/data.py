"""From a prepared dataset to batches: training windows, evaluation cases, and the collate that attaches
teacher targets, so they are computed in the DataLoader's workers ahead of the step.

Training (causal backbones): each user's train rows form a sequence; it is cut from the end into windows
of at most max_len + 1 items and the model predicts at every position of a window (inputs = window[:-1],
targets = window[1:]). Only histories longer than max_len make more than one window.
Training (BERT4Rec): windows of at most max_len items; a fraction of positions is replaced by [MASK] and
predicted (the cloze objective); at least one position per window is masked.
Evaluation on split s (eval.cases): per_user, one case per user, history = every item before the user's first
s row, relevant = all of the user's s items (one item under leave-one-out); per_item, one next-item case per s
row at position p, history = every item before p (earlier s items included), relevant = that one item (the
released KDSR code's protocol). Users without s rows and cases without history are counted, not silently dropped.
All randomness is a function of (seed, epoch, index): a resumed run sees exactly the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset, Sampler

from kdsr.config import ConfigError
from kdsr.dataset import DatasetError, PreparedDataset
from kdsr.errors import KdsrError


class TrainDataError(KdsrError, ValueError):
    """A prepared dataset whose rows the trainer cannot use; the message names the file and the first bad row."""


def open_dataset(path: str) -> PreparedDataset:
    """The config's `dataset`, refused as a config error when it is not a prepared dataset folder."""
    try:
        return PreparedDataset.open(path)
    except DatasetError as e:
        raise ConfigError(f"dataset: {e}") from None


@dataclass
class UserSequences:
    """Per-user item arrays in position order, with their split labels."""

    items: list[np.ndarray]
    splits: list[np.ndarray]
    n_items: int

    @classmethod
    def from_dataset(cls, ds: PreparedDataset) -> UserSequences:
        df = ds.interactions.sort("user", "position")
        bad = df.filter((pl.col("item") < 1) | (pl.col("item") > ds.n_items))
        if bad.height:
            row = bad.row(0, named=True)
            raise TrainDataError(
                f"{ds.path}/interactions.parquet: {bad.height} rows with item outside 1..{ds.n_items}, first {row}"
            )
        g = df.group_by("user", maintain_order=True).agg("item", "split")
        return cls([np.asarray(x, np.int64) for x in g["item"]], [np.asarray(x) for x in g["split"]], ds.n_items)

    def train_windows(self, max_len: int, causal: bool) -> list[np.ndarray]:
        size = max_len + 1 if causal else max_len
        out = []
        for items, splits in zip(self.items, self.splits):
            seq = items[splits == "train"]
            stop = len(seq)
            while stop >= (2 if causal else 1):
                out.append(seq[max(0, stop - size) : stop])
                stop -= size - 1 if causal else size  # consecutive causal windows share their boundary item
        return out

    def eval_cases(self, split: str, per_item: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """(histories, relevant items, skipped): users without a `split` row and cases with an empty history are
        skipped and counted. per_item=False: one case per user, history = the items before the user's first
        `split` row, relevant = all of them. per_item=True: one case per `split` row at position p, history =
        items[:p] (it grows from case to case and holds the earlier `split` items), relevant = [items[p]]."""
        hist, rel, skipped = [], [], 0
        for items, splits in zip(self.items, self.splits):
            at = np.flatnonzero(splits == split)
            if at.size == 0:
                skipped += 1
                continue
            cases = [(p, items[p : p + 1]) for p in at] if per_item else [(at[0], items[at])]
            for p, relevant in cases:
                if p == 0:
                    skipped += 1
                    continue
                hist.append(items[:p])
                rel.append(relevant)
        return hist, rel, skipped


def sample_cases(
    hist: list[np.ndarray], rel: list[np.ndarray], n: int | None, seed: int, split: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """eval.sample_users: a seeded random subset of n evaluation cases, in their order (the same cases every
    epoch, on resume, and for every measure of the run; test draws with seed + 1); all of them when n is None or
    not smaller."""
    if not n or n >= len(hist):
        return hist, rel
    keep = np.sort(np.random.default_rng(seed + (split == "test")).choice(len(hist), size=n, replace=False))
    return [hist[i] for i in keep], [rel[i] for i in keep]


def pad_ids(rows: list[np.ndarray], length: int | None = None) -> torch.Tensor:
    """Right-pad int arrays with 0 into a (B, L) LongTensor."""
    length = length or max(1, max(len(r) for r in rows))
    out = np.zeros((len(rows), length), np.int64)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return torch.from_numpy(out)


class TrainWindows(Dataset):
    """Training samples; set_epoch() before each epoch re-seeds masking and negative sampling."""

    def __init__(
        self,
        windows: list[np.ndarray],
        n_items: int,
        causal: bool,
        seed: int,
        mask_prob: float = 0.2,
        n_negatives: int = 0,
    ):
        self.windows, self.n_items, self.causal = windows, n_items, causal
        self.seed, self.mask_prob, self.n_negatives, self.epoch = seed, mask_prob, n_negatives, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        w = self.windows[idx]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        if self.causal:
            sample = {"inputs": w[:-1], "targets": w[1:], "items": w[:-1]}
        else:
            masked = rng.random(len(w)) < self.mask_prob
            masked[rng.integers(len(w))] = True
            sample = {"inputs": np.where(masked, self.n_items + 1, w), "targets": np.where(masked, w, 0), "items": w}
        if self.n_negatives:
            # NOTE: uniform over all items; a negative equal to the target (p = 1/N) is not redrawn.
            sample["negatives"] = rng.integers(1, self.n_items + 1, (len(sample["inputs"]), self.n_negatives))
        return sample


class EpochSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), so skipping k batches on resume is exact.

    With `lengths`, samples are sorted by length inside random chunks of `chunk_batches` batches and the
    batches are then shuffled: a batch pads to about its own length instead of the longest history
    (on Beauty most windows have < 10 items but almost every random batch of 256 holds a 50).
    """

    def __init__(
        self, n: int, seed: int, batch_size: int = 1, lengths: np.ndarray | None = None, chunk_batches: int = 64
    ):
        self.n, self.seed, self.batch_size, self.lengths, self.chunk = n, seed, batch_size, lengths, chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).numpy()
        if self.lengths is None:
            return iter(perm.tolist())
        size = self.batch_size * self.chunk
        chunks = [perm[i : i + size] for i in range(0, self.n, size)]
        chunks = [c[np.argsort(self.lengths[c], kind="stable")] for c in chunks]
        order = np.concatenate(chunks)
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        full = len(batches) - (self.n % self.batch_size > 0)  # a short last batch stays last (alignment)
        shuffled = [batches[i] for i in torch.randperm(full, generator=g).tolist()] + batches[full:]
        return iter(np.concatenate(shuffled).tolist())


def add_teacher_targets(batch: dict[str, torch.Tensor], teachers: dict) -> dict[str, torch.Tensor]:
    """Attach `<m>.sim`, `<m>.codes`, `<m>.pair_mask` (B, L, L) for each modality's teacher."""
    for m, teacher in teachers.items():
        t = teacher.targets(batch["items"].cpu())
        batch[f"{m}.sim"], batch[f"{m}.codes"], batch[f"{m}.pair_mask"] = t.sim, t.codes, t.pair_mask
    return batch


class TrainCollate:
    """Pads a list of samples to the longest in the batch; with teachers, adds their targets (this runs in
    the DataLoader workers, ahead of the step that consumes the batch)."""

    def __init__(self, teachers: dict | None = None):
        self.teachers = teachers or {}

    def __call__(self, samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        batch = {k: pad_ids([s[k] for s in samples]) for k in ("inputs", "targets", "items")}
        if "negatives" in samples[0]:
            L, n = batch["inputs"].shape[1], samples[0]["negatives"].shape[1]
            neg = np.zeros((len(samples), L, n), np.int64)
            for k, s in enumerate(samples):
                neg[k, : len(s["negatives"])] = s["negatives"]
            batch["negatives"] = torch.from_numpy(neg)
        return add_teacher_targets(batch, self.teachers)


class EvalCases(Dataset):
    """One sample per evaluation case (`UserSequences.eval_cases`): the last `keep` history items, the relevant
    items and the full history (for the exclude-history option)."""

    def __init__(self, histories: list[np.ndarray], relevant: list[np.ndarray], keep: int):
        self.histories, self.relevant, self.keep = histories, relevant, keep

    def __len__(self) -> int:
        return len(self.histories)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        h = self.histories[idx]
        return {"history": h[-self.keep :], "relevant": self.relevant[idx], "seen": h}


def eval_collate(samples: list[dict[str, np.ndarray]], extra: int = 0) -> dict[str, torch.Tensor]:
    """extra: free slots after the longest history (1 for BERT4Rec's appended [MASK])."""
    return {
        "history": pad_ids([s["history"] for s in samples], max(len(s["history"]) for s in samples) + extra),
        "lengths": torch.tensor([len(s["history"]) for s in samples]),
        "relevant": pad_ids([s["relevant"] for s in samples]),
        "seen": pad_ids([s["seen"] for s in samples]),
    }
