"""Use a trained run: top-K recommendations in the user's original item IDs, in Python and as a batch job.

    from trainer.recommend import Recommender
    rec = Recommender.load("runs/train/beauty-sasrec-kd")
    rec.recommend([["B00004TMFE", "B0009RF9DW"]], k=10)   # -> [Recommendation(items=[...], scores=[...])]

    kdsr recommend runs/train/beauty-sasrec-kd [k=20 history=train histories=my.csv ...]
    kdsr recommend runs/train/beauty-sasrec-kd workers=8 ray.address=auto   # parts split over Ray actors

The model is the run's own (its config.yaml, best/model.safetensors read with safetensors only), scored exactly
as the evaluation scores it: the same user states (`Student.user_states` on the last max_len items), the same
candidate table and the same (batch x item chunk) blocks, so the batch job's top-K on the evaluation's test
histories reproduces the run's test metrics. A run whose dataset or feature stores were rebuilt since training
is refused (the input identity recorded in checkpoints/last).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file

from kdsr.config import ConfigError, config_to_dict, load_config
from kdsr.dataset import PreparedDataset
from kdsr.errors import KdsrError
from kdsr.files import write_json_atomic
from kdsr.progress import Progress
from trainer.config import TrainConfig
from trainer.data import EvalCases, UserSequences, eval_collate, open_dataset
from trainer.features import RunError, check_run_inputs
from trainer.ranking import chunked_top_k
from trainer.student import Student
from trainer.use_config import RecommendConfig

log = logging.getLogger(__name__)

HEADS = ("holistic_heads.", "code_heads.")  # distillation-only weights: not needed to recommend
PART_SCHEMA = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8, "score": pl.Float32}


class RecommendError(KdsrError, ValueError):
    """A request the model cannot answer; `field` names the offending input (k, history, ...)."""

    def __init__(self, message: str, field: str = "history"):
        super().__init__(message)
        self.field = field


@dataclass
class Recommendation:
    """One history's answer: original item IDs, best first, and their scores (NaN: the popularity fallback)."""

    items: list[str]
    scores: list[float]
    unknown: int = 0  # history items dropped for not being in the catalog
    popular: bool = False  # the history was empty and the catalog's most popular items answered


class Recommender:
    """A trained run, ready to score histories. `load(run_dir)` builds it; everything runs under no_grad."""

    def __init__(self, run: Path, cfg: TrainConfig, ds: PreparedDataset, model: Student, identity: dict):
        self.run, self.cfg, self.dataset, self.model, self.identity = run, cfg, ds, model, identity
        self.item_ids = np.asarray(["", *ds.item_original_ids()], dtype=object)  # internal id -> original ID
        self.index = {item: i for i, item in enumerate(self.item_ids[1:], start=1)}
        self.causal = model.backbone.causal
        self.keep = cfg.model.max_len - (0 if self.causal else 1)  # BERT4Rec: room for the appended [MASK]
        self.device = next(model.parameters()).device
        self._candidates: dict[int, torch.Tensor] = {}
        self._popular: np.ndarray | None = None

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", check_inputs: bool = True) -> Recommender:
        run = Path(run_dir)
        weights = run / "best" / "model.safetensors"
        for path in (run / "config.yaml", weights):
            if not path.exists():
                raise RunError(f"{path}: missing; {run} is not a finished `kdsr train` run directory")
        cfg = load_config(TrainConfig, run / "config.yaml")
        ds = open_dataset(cfg.dataset)
        identity = check_run_inputs(run, cfg, ds) if check_inputs else {}
        state = load_file(str(weights))
        rows = ds.n_items + 1 + (cfg.model.backbone == "bert4rec")
        if state["id_emb.weight"].shape[0] != rows:
            raise RunError(
                f"{weights}: {state['id_emb.weight'].shape[0]} item rows, but {cfg.dataset} has {ds.n_items:,} "
                "items; the dataset was rebuilt since training"
            )
        model = Student(ds.n_items, cfg.model, Student.saved_modality_tables(state))
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(HEADS)})
        dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        return cls(run, cfg, ds, model.to(dev).eval(), identity)

    # ---- original IDs <-> internal ids --------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def encode(self, history: Iterable, unknown: str = "drop", who: str = "history") -> tuple[np.ndarray, int]:
        """Original item IDs (compared as strings) -> internal ids and the number dropped as unknown;
        unknown="error" raises on the first one instead."""
        ids, dropped = [], 0
        for pos, item in enumerate(history):
            i = self.index.get(str(item))
            if i is not None:
                ids.append(i)
            elif unknown == "error":
                raise RecommendError(
                    f"{who}[{pos}]: item {str(item)!r} is not in the run's catalog ({self.n_items:,} items)"
                )
            else:
                dropped += 1
        return np.asarray(ids, np.int64), dropped

    # ---- scoring ------------------------------------------------------------------------------------
    def candidates(self, chunk: int = 65536) -> torch.Tensor:
        """The (N + 1, D) candidate table, built once (fused `chunk` rows at a time, as in evaluation)."""
        if chunk not in self._candidates:
            self._candidates = {chunk: self.model.candidate_table(chunk)}
        return self._candidates[chunk]

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.n_items:
            raise RecommendError(f"k: must be between 1 and the catalog size {self.n_items:,}, got {k}", "k")

    @torch.no_grad()
    def top_k(
        self, histories: Sequence[np.ndarray], k: int, exclude_history: bool = True, item_chunk: int = 65536
    ) -> tuple[np.ndarray, np.ndarray]:
        """Internal-id histories (each non-empty) -> (B, k) internal ids and scores; a slot that no candidate
        fills (only under exclude_history, with k near the catalog size) holds id 0 and -inf."""
        self.check_k(k)
        if any(len(h) == 0 for h in histories):
            raise RecommendError("history: empty; top_k needs at least one item per history")
        empty = np.zeros(0, np.int64)
        cases = EvalCases(list(histories), [empty] * len(histories), self.keep)
        batch = eval_collate([cases[i] for i in range(len(cases))], extra=int(not self.causal))
        h = self.model.user_states(batch["history"].to(self.device), batch["lengths"].to(self.device))
        seen = batch["seen"].to(self.device) if exclude_history else None
        ids, scores = chunked_top_k(h, self.candidates(item_chunk), k, seen, item_chunk)
        return ids.cpu().numpy(), scores.cpu().numpy()

    def popular(self, k: int) -> np.ndarray:
        """The k items with the most training interactions (ties: the lower id), internal ids."""
        if self._popular is None:
            train = self.dataset.interactions.filter(pl.col("split") == "train")["item"].to_numpy()
            counts = np.bincount(train, minlength=self.n_items + 1)[1:]
            self._popular = np.argsort(-counts, kind="stable") + 1
        return self._popular[:k]

    def recommend(
        self,
        histories: Sequence[Iterable],
        k: int = 10,
        *,
        exclude_history: bool = True,
        unknown: str = "drop",
        empty: str = "error",
        batch_size: int = 512,
    ) -> list[Recommendation]:
        """Histories of original item IDs (oldest first) -> one Recommendation each, best first.

        unknown: "drop" (skipped and counted in `Recommendation.unknown`) or "error" (RecommendError).
        empty: "error" (RecommendError naming the history) or "popular" (the most popular items, score NaN)."""
        if unknown not in ("drop", "error") or empty not in ("error", "popular"):
            raise ValueError(f"unknown must be drop|error and empty error|popular, got {unknown!r}, {empty!r}")
        self.check_k(k)
        encoded = [self.encode(h, unknown, who=f"histories[{n}]") for n, h in enumerate(histories)]
        out: list[Recommendation | None] = [None] * len(encoded)
        for n, (ids, dropped) in enumerate(encoded):
            if len(ids) == 0:
                if empty == "error":
                    why = f" (all {dropped} items unknown)" if dropped else ""
                    raise RecommendError(f"histories[{n}]: empty history{why}; pass empty='popular' for a fallback")
                out[n] = Recommendation(list(self.item_ids[self.popular(k)]), [math.nan] * k, dropped, True)
        todo = [n for n, r in enumerate(out) if r is None]
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            ids, scores = self.top_k([encoded[n][0] for n in rows], k, exclude_history)
            for n, i, s in zip(rows, ids, scores):
                found = i > 0
                out[n] = Recommendation(list(self.item_ids[i[found]]), s[found].tolist(), encoded[n][1])
        return out

    def recommend_one(self, history: Iterable, k: int = 10, **kw) -> Recommendation:
        return self.recommend([history], k, **kw)[0]


# ---- the batch job ----------------------------------------------------------------------------------
# may change between a run and its resume
RESUMABLE = {"progress", "batch_size", "item_chunk", "device", "output", "workers", "worker_cpus", "worker_gpus", "ray"}


@dataclass
class Users:
    """The users to recommend for, in output order: their IDs, internal-id histories, and what was dropped."""

    ids: list[str]
    histories: list[np.ndarray]
    unknown: np.ndarray  # per user, history items dropped as unknown
    skipped: int = 0  # dataset users without the requested history (no valid / test row)


def dataset_users(rec: Recommender, history: str) -> Users:
    """The prepared dataset's users with the histories `RecommendConfig.history` names."""
    ds = rec.dataset
    seqs = UserSequences.from_dataset(ds)
    names = dict(zip(ds.users["user"].to_list(), ds.users["original_id"].cast(pl.Utf8).to_list()))
    users = ds.interactions["user"].unique().sort().to_list()  # the order UserSequences groups them in
    ids, hists, skipped = [], [], 0
    for user, items, splits in zip(users, seqs.items, seqs.splits):
        if history in ("before_valid", "before_test"):
            at = np.flatnonzero(splits == history.removeprefix("before_"))
            if at.size == 0 or at[0] == 0:  # as the evaluation: no case for this user
                skipped += 1
                continue
            items = items[: at[0]]
        elif history == "train":
            items = items[splits == "train"]
        ids.append(names[user])
        hists.append(items)
    return Users(ids, hists, np.zeros(len(ids), np.int64), skipped)


def file_users(rec: Recommender, path: str, unknown: str) -> Users:
    """Histories from a Parquet / CSV file of (user_id, item_id) rows, chronological per user; users in the
    order they first appear."""
    try:
        df = pl.read_parquet(path) if path.endswith(".parquet") else pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise ConfigError(f"histories: cannot read {path} ({e})") from None
    missing = [c for c in ("user_id", "item_id") if c not in df.columns]
    if missing:
        raise ConfigError(f"histories: {path} has no column {', '.join(missing)} (columns: {', '.join(df.columns)})")
    df = df.select(pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8))
    if df["user_id"].null_count() or df["item_id"].null_count():
        row = df.with_row_index().filter(pl.any_horizontal(pl.all().is_null())).row(0, named=True)
        raise RecommendError(f"{path}: row {row['index']} has an empty user_id or item_id")
    groups = df.group_by("user_id", maintain_order=True).agg("item_id")
    ids, hists, dropped = [], [], []
    for user, items in groups.iter_rows():
        encoded, n = rec.encode(items, unknown, who=f"{path}: user {user!r}, item")
        ids.append(user)
        hists.append(encoded)
        dropped.append(n)
    return Users(ids, hists, np.asarray(dropped, np.int64))


def run_recommend(cfg: RecommendConfig) -> dict:
    """The recommend stage: top-K for every user into Parquet part files under `output`, resumable (finished
    parts are skipped; each part is written to a temporary name and renamed into place)."""
    rec = Recommender.load(cfg.run, cfg.device, cfg.check_inputs)
    try:
        rec.check_k(cfg.k)
    except RecommendError as e:
        raise ConfigError(str(e)) from None
    out = Path(cfg.output or Path(cfg.run) / "recommendations")
    users = file_users(rec, cfg.histories, cfg.unknown_items) if cfg.histories else dataset_users(rec, cfg.history)
    n_parts = -(-len(users.ids) // cfg.users_per_part)
    manifest = {
        "request": {k: v for k, v in config_to_dict(cfg).items() if k not in RESUMABLE},
        "inputs": rec.identity,
        "weights_mtime": os.path.getmtime(rec.run / "best" / "model.safetensors"),
        "users": len(users.ids),
        "parts": n_parts,
    }
    start_or_resume(out, manifest)
    done = [p for p in range(n_parts) if part_path(out, p).exists()]
    todo = [p for p in range(n_parts) if p not in set(done)]
    if done:
        log.info("%s: %d of %d parts already written, resuming", out, len(done), n_parts)
    resumed = sum(len(part_rows(cfg, users, p)) for p in done)
    bar = Progress(len(users.ids), "recommend", "users", initial=resumed, bar=cfg.progress, logger=log)
    if cfg.workers > 1 and len(todo) > 1:
        fallbacks = recommend_on_ray(cfg, users, todo, out, bar.update)
    else:
        fallbacks = 0
        for part in todo:
            fallbacks += write_recommendations(rec, cfg, users, part, out, bar.update)
            kill_hook_after_part(part)
    bar.close()
    summary = {
        "output": str(out),
        "users": len(users.ids),
        "users_skipped": users.skipped,
        "parts": n_parts,
        "parts_written": len(todo),
        "parts_skipped": len(done),
        "unknown_items_dropped": int(users.unknown.sum()),
        "popular_fallbacks": fallbacks,
    }
    log.info("%d users, %d parts (%d resumed) -> %s", len(users.ids), n_parts, len(done), out)
    return summary


def part_rows(cfg: RecommendConfig, users: Users, part: int) -> range:
    return range(part * cfg.users_per_part, min((part + 1) * cfg.users_per_part, len(users.ids)))


def write_recommendations(rec: Recommender, cfg: RecommendConfig, users: Users, part: int, out: Path, advance) -> int:
    """Score and write one part file; returns how many of its users fell back to the popular items.
    `advance(n)` is called as users are done (a progress bar's update)."""
    frame, n_fallback = recommend_part(rec, cfg, users, part_rows(cfg, users, part), advance)
    write_part(out, part, frame)
    return n_fallback


class PartWorker:
    """One Ray worker of `kdsr recommend`: the run loaded once, then any number of parts scored and written
    by the worker itself (nothing but counts goes back through the object store)."""

    def __init__(self, cfg: dict, users: Users, out: str):
        self.cfg = RecommendConfig.model_validate(cfg)
        torch.set_num_threads(max(1, math.ceil(self.cfg.worker_cpus)))
        # The driver checked the run's inputs; the workers read the same paths.
        self.rec = Recommender.load(self.cfg.run, self.cfg.device, check_inputs=False)
        self.users, self.out = users, Path(out)

    def write(self, part: int) -> tuple[int, int]:
        """Part `part` -> (users written, popular fallbacks)."""
        n = write_recommendations(self.rec, self.cfg, self.users, part, self.out, lambda _: None)
        return len(part_rows(self.cfg, self.users, part)), n


def recommend_on_ray(cfg: RecommendConfig, users: Users, parts: list[int], out: Path, advance) -> int:
    """The parts split over `cfg.workers` Ray actors (embedded Ray, or the cluster of `cfg.ray`); returns the
    number of popular fallbacks. Parts are handed out one at a time, so a fast worker takes more of them."""
    import ray
    from ray.util import ActorPool

    from feature_store.encode import init_ray

    started = init_ray(cfg.ray)
    try:
        remote = ray.remote(PartWorker).options(num_cpus=cfg.worker_cpus, num_gpus=cfg.worker_gpus)
        shared = ray.put(users)
        n_workers = min(cfg.workers, len(parts))
        log.info("%d parts over %d Ray workers", len(parts), n_workers)
        pool = ActorPool([remote.remote(config_to_dict(cfg), shared, str(out)) for _ in range(n_workers)])
        fallbacks = 0
        try:
            for n_users, n_fallback in pool.map_unordered(lambda worker, part: worker.write.remote(part), parts):
                advance(n_users)
                fallbacks += n_fallback
        except ray.exceptions.RayTaskError as e:  # a worker's user error (an empty history) is the job's
            if isinstance(e.cause, KdsrError):
                raise e.cause from None
            raise
        return fallbacks
    finally:
        if started:
            ray.shutdown()


def recommend_part(
    rec: Recommender, cfg: RecommendConfig, users: Users, rows: range, advance
) -> tuple[pl.DataFrame, int]:
    """One part's rows (user_id, rank, item_id, score) for `rows` of `users`, and how many fell back to the
    popular items."""
    empty = [r for r in rows if len(users.histories[r]) == 0]
    if empty and cfg.empty_history == "error":
        r = empty[0]
        why = f" ({users.unknown[r]} unknown items dropped)" if users.unknown[r] else ""
        source = cfg.histories or f"the {cfg.history!r} histories of {rec.cfg.dataset}"
        raise RecommendError(f"{source}: user {users.ids[r]!r} has an empty history{why}; empty_history=popular")
    popular = rec.popular(cfg.k)
    answers = {r: (popular, np.full(len(popular), np.nan, np.float32)) for r in empty}
    scored = [r for r in rows if len(users.histories[r]) > 0]
    for start in range(0, len(scored), cfg.batch_size):
        batch = scored[start : start + cfg.batch_size]
        ids, scores = rec.top_k([users.histories[r] for r in batch], cfg.k, cfg.exclude_history, cfg.item_chunk)
        answers |= {r: (i[i > 0], s[i > 0]) for r, i, s in zip(batch, ids, scores)}
        advance(len(batch))
    advance(len(empty))
    lengths = [len(answers[r][0]) for r in rows]
    frame = pl.DataFrame(
        {
            "user_id": np.repeat(np.asarray([users.ids[r] for r in rows], dtype=object), lengths).tolist(),
            "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]) if rows else [],
            "item_id": rec.item_ids[np.concatenate([answers[r][0] for r in rows])].tolist() if rows else [],
            "score": np.concatenate([answers[r][1] for r in rows]) if rows else [],
        },
        PART_SCHEMA,
    )
    return frame, len(empty)


def part_path(out: Path, part: int) -> Path:
    return out / f"part-{part:05d}.parquet"


def write_part(out: Path, part: int, frame: pl.DataFrame) -> None:
    """To a temporary name, then renamed: a killed job leaves whole parts only."""
    final = part_path(out, part)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    frame.write_parquet(tmp)
    os.replace(tmp, final)


def start_or_resume(out: Path, manifest: dict) -> None:
    """Write the job's manifest, or check it against the one already there: a resume with another request,
    other inputs or other weights would mix two answers in one folder."""
    path = out / "_recommend.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != json.loads(json.dumps(manifest)):
            a = before.get("request", {}) | {k: v for k, v in before.items() if k != "request"}
            b = manifest["request"] | {k: v for k, v in manifest.items() if k != "request"}
            diff = sorted(k for k in a.keys() | b.keys() if json.dumps(a.get(k)) != json.dumps(b.get(k)))
            raise ConfigError(
                f"{out}: holds recommendations of another request (differs in: {', '.join(diff)}); "
                "choose another output or delete it"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, manifest)
    for stale in out.glob(".part-*.tmp-*"):  # left by a killed job
        stale.unlink()


def kill_hook_after_part(part: int) -> None:
    """KDSR_TEST_KILL_AFTER_PART=N (tests only): SIGKILL this process right after part N is in place."""
    if os.environ.get("KDSR_TEST_KILL_AFTER_PART") == str(part):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
