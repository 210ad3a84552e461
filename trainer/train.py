"""Train a sequential recommender with correlation distillation: the recipe, on Accelerate.

    kdsr train configs/train/beauty-sasrec-kd.yaml [key.sub=value ...]
    accelerate launch -m jobs.train configs/train/beauty-sasrec-kd.yaml
    # two CPU processes sharing one model (gloo); `--cpu --num_processes 2` would silently start ONE:
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_machines 1 --num_processes 2 \
        -m jobs.train configs/train/beauty-sasrec-kd.yaml

`run_train(cfg)` is the stage: the commands above and the pipeline call it.

Run directory (`out_dir`): config.yaml (resolved), metrics.json (validation history, selected epoch, test
metrics, timings), tb/ (TensorBoard: each loss term, learning rates, metrics), checkpoints/last (resumable
state: model, optimizer, RNG, trainer_state.json), best/model.safetensors (the selected weights).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from kdsr.config import ConfigError, config_to_dict, load_config, save_config
from kdsr.files import write_json_atomic
from kdsr.progress import Progress
from trainer.config import TrainConfig
from trainer.data import (
    EpochSampler,
    EvalCases,
    TrainCollate,
    TrainWindows,
    UserSequences,
    add_teacher_targets,
    eval_collate,
    open_dataset,
    sample_cases,
)
from trainer.features import identity_diff, input_identity, open_modalities, scale_features
from trainer.memory import check_fits
from trainer.metrics import candidate_scores, ranking_metrics, target_ranks
from trainer.optim import build_optimizers, clip_grad_norm, set_epoch_lr
from trainer.ranking import chunked_target_ranks
from trainer.sampling import NegativeSampler
from trainer.student import DistillHeads, Student, distill_heads

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption; any other difference is refused.
RESUMABLE_KEYS = {"resume", "progress", "checkpoint_every", "num_workers", "epochs", "patience", "eval.test"}
GRAD_STATS = ("grad_norm", "clipped")  # per optimizer step, summed beside the loss terms, reported per epoch
# Written last into a checkpoint folder, atomically: a folder without it is incomplete and never resumed from.
COMPLETE_MARKER = "trainer_state.json"


@dataclass(frozen=True)
class HooksForTests:
    """The trainer's test hooks, read from the environment here and nowhere else; unset in a real run.

    KDSR_TEST_STOP_AFTER=N      stop after N optimizer steps in total, as if killed there (the resume tests):
                                no final test, no metrics.json; run_train's summary has `stopped_at_step`.
    KDSR_TEST_PROCESS_REPORT=1  each rank writes processes/rank<i>.json with the world size and a checksum of
                                its parameters (the multi-process test compares them).
    KDSR_TEST_KILL_IN_SWAP=N    SIGKILL the process inside the N-th checkpoint swap, between `last -> last.old`
                                and `tmp -> last` (bench/bench_faults.py: the worst moment for a kill).
    """

    stop_after: int | None = None
    process_report: bool = False
    kill_in_swap: int | None = None

    @classmethod
    def from_env(cls) -> HooksForTests:
        stop, swap = os.environ.get("KDSR_TEST_STOP_AFTER", ""), os.environ.get("KDSR_TEST_KILL_IN_SWAP", "")
        report = os.environ.get("KDSR_TEST_PROCESS_REPORT", "") not in ("", "0")
        return cls(int(stop) if stop else None, report, int(swap) if swap else None)


@dataclass
class TrainerState:
    """Everything besides model/optimizer/RNG that an exact resume needs (checkpoints/*/trainer_state.json)."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch`
    global_step: int = 0
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    loss_sums: dict[str, float] = field(default_factory=dict)  # running sums in `epoch`: loss terms, GRAD_STATS
    loss_batches: int = 0  # micro-batches summed into loss_sums
    inputs: dict = field(default_factory=dict)  # input_identity() of the run: a resume refuses changed inputs


def learning_rates(optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
    """`lr/<group name>` over every optimizer: with sparse tables the SparseAdam holds the tables' groups (the
    same names and rates as the Adam's), so reading the first optimizer alone would miss a table-only group."""
    return {f"lr/{g.get('name', k)}": g["lr"] for k, g in enumerate(g for o in optimizers for g in o.param_groups)}


def recover_checkpoint(ckpt: Path) -> Path | None:
    """checkpoints/last, restored when a kill interrupted `save_checkpoint`'s swap: if `last` is missing, the
    newest complete folder (tmp, then last.old; complete = has its marker) becomes `last`. None: nothing to
    resume from."""
    last = ckpt / "last"
    if last.exists():
        return last
    for candidate in (ckpt / "tmp", ckpt / "last.old"):
        if (candidate / COMPLETE_MARKER).is_file():
            log.warning("%s is missing (killed mid-swap); resuming from the complete %s", last, candidate)
            candidate.rename(last)
            return last
    return None


def resolve_teacher_placement(cfg: TrainConfig, acc: Accelerator) -> bool:
    """True: teacher targets in the DataLoader workers, False: in the step. Resolves `teacher_in_workers: null`
    (auto): workers pay off only when they do not take cores from the step."""
    if cfg.teacher_in_workers is not None:
        return cfg.teacher_in_workers
    if cfg.num_workers == 0:
        return False
    if acc.device.type != "cpu":
        return True
    spare = len(os.sched_getaffinity(0)) - torch.get_num_threads() * acc.num_processes
    return spare >= cfg.num_workers * acc.num_processes


def resolve_sparse_tables(cfg: TrainConfig, acc: Accelerator) -> bool:
    """`optim.sparse_tables`, resolved: auto = sparse with the row-lookup losses in a single process. DDP cannot
    reduce sparse gradients ("Cannot access storage of SparseTensorImpl"), so several processes get dense ones."""
    if cfg.optim.sparse_tables is None:
        return cfg.optim.row_lookup and acc.num_processes == 1
    if cfg.optim.sparse_tables and acc.num_processes > 1:
        raise ConfigError(
            f"optim.sparse_tables=true with {acc.num_processes} processes: DDP cannot reduce sparse gradients; "
            "set optim.sparse_tables=null (dense tables when distributed) or train in one process"
        )
    return cfg.optim.sparse_tables


def run_train(cfg: TrainConfig) -> dict:
    """The train stage: setup, train, cleanup. Returns the run's summary: `output` (the run directory), the
    selected epoch, its validation NDCG@10 and the test metrics."""
    recipe = TrainRecipe(cfg)
    recipe.setup()
    finished = recipe.train()
    recipe.cleanup()
    if not finished:
        return {"output": str(recipe.out), "stopped_at_step": recipe.state.global_step}
    st, test = recipe.state, recipe.test
    tested = f"test ndcg@10 {test['ndcg@10']:.4f} hr@10 {test['hr@10']:.4f}" if test else "test not read (eval.test)"
    log.info("done: epoch %d selected (valid ndcg@10 %.4f), %s -> %s", st.best_epoch, st.best, tested, recipe.out)
    return {"output": str(recipe.out), "selected_epoch": st.best_epoch, "best_valid_ndcg@10": st.best, "test": test}


class TrainRecipe:
    """setup() -> train() -> cleanup(), torchtune-style; `run_train` is the entry point."""

    def __init__(self, cfg: TrainConfig, hooks: HooksForTests | None = None):
        self.cfg, self.out, self.state = cfg, Path(cfg.out_dir), TrainerState()
        self.hooks = HooksForTests.from_env() if hooks is None else hooks
        self.swaps = 0  # checkpoint swaps in this process (the kill_in_swap hook counts them)
        self.timings: list[float] = []  # seconds of each epoch trained in this session
        self.test: dict[str, float] | None = None  # test metrics of the selected epoch, once measured
        self.on_epoch_end = None  # called with each epoch's validation row (a sweep reports it to Ray Tune)

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self, write_config: bool = True) -> None:
        # 1. The accelerator first: it fixes device, rank and precision for everything after it.
        cfg = self.cfg
        cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.optim.grad_accum,
            log_with="tensorboard",
            project_dir=str(self.out),
        )
        set_seed(cfg.seed)
        # 2. Dataset and features: each store is opened and read once, and refused unless its items are the
        # dataset's; it serves the input identity, the initial V^m and the teacher.
        ds = open_dataset(cfg.dataset)
        self.seqs = UserSequences.from_dataset(ds)
        sources = open_modalities(cfg, ds)
        self.state.inputs = input_identity(ds, sources)
        heads = distill_heads(cfg)
        self.teachers = {m: sources[m].teacher(cfg.distill.unique_items) for m in heads}
        # 3. Model and optimizers (the async step's two parameter groups; sparse item tables at scale).
        check_fits(cfg, ds.n_items, [s.table.shape[1] for s in sources.values()], self.accelerator.device)
        features = {m: scale_features(s.table, cfg.model.feature_scaling) for m, s in sources.items()}
        model = self._setup_model(ds.n_items, features, heads)
        optimizers = build_optimizers(model, cfg)
        # 4. Loaders: the train collate computes teacher targets in the DataLoader workers.
        loader = self._setup_train_data(ds.n_items, model.backbone.causal)
        self.sampler = self._setup_sampler(ds.n_items)
        self.model, *self.optimizers, self.train_loader = self.accelerator.prepare(model, *optimizers, loader)
        self._setup_eval_data(model.backbone.causal)
        # 5. Resume from checkpoints/last when there is one (model, optimizer, RNG, trainer state).
        self._resume_or_start(write_config)

    def _setup_model(self, n_items: int, features: dict, heads: dict[str, DistillHeads]) -> Student:
        cfg = self.cfg
        self.weights = {}
        for m in cfg.modalities:  # a term on V^m, and under distill.onto_id the same term on the ID embeddings
            for target in (m.name, f"id<-{m.name}"):
                self.weights |= {f"hol/{target}": m.weight_hol, f"code/{target}": m.weight_code}
        n_codes = {m: teacher.n_codes for m, teacher in self.teachers.items()}
        self.sparse = resolve_sparse_tables(cfg, self.accelerator)
        return Student(n_items, cfg.model, features, heads, n_codes, cfg.distill, cfg.optim.loss, self.sparse)

    def _setup_sampler(self, n_items: int) -> NegativeSampler | None:
        """The shared-negatives sampler of `optim.loss: sampled_softmax`, its proposal from the training items."""
        opt = self.cfg.optim
        if opt.loss != "sampled_softmax":
            return None
        n_negatives = min(1024, n_items) if opt.sampled.n_negatives is None else opt.sampled.n_negatives
        if n_negatives > n_items:
            raise ConfigError(
                f"optim.sampled.n_negatives={opt.sampled.n_negatives} is larger than the catalog "
                f"({n_items:,} items); use at most {n_items}, or loss=ce for the exact softmax"
            )
        train = [items[splits == "train"] for items, splits in zip(self.seqs.items, self.seqs.splits)]
        counts = np.bincount(np.concatenate(train) if train else np.zeros(0, np.int64), minlength=n_items + 1)
        return NegativeSampler(
            torch.from_numpy(counts[: n_items + 1]),
            n_negatives,
            opt.sampled.popularity_exponent,
            opt.sampled.in_batch,
            opt.sampled.logq_correction,
            self.cfg.seed,
        )

    def _setup_train_data(self, n_items: int, causal: bool) -> DataLoader:
        cfg = self.cfg
        windows = self.seqs.train_windows(cfg.model.max_len, causal)
        self.train_set = TrainWindows(
            windows,
            n_items,
            causal,
            cfg.seed,
            cfg.model.mask_prob,
            cfg.optim.n_negatives if cfg.optim.loss == "bce" else 0,
        )
        self.targets_in_workers = resolve_teacher_placement(cfg, self.accelerator)
        if self.teachers:
            where = "DataLoader workers" if self.targets_in_workers else "training step"
            setting = "auto" if cfg.teacher_in_workers is None else cfg.teacher_in_workers
            log.info("teacher targets are computed in the %s (teacher_in_workers: %s)", where, setting)
        self.counts = {
            "items": n_items,
            "users": len(self.seqs.items),
            "train_windows": len(windows),
            "train_positions": int(sum((w > 0).sum() - causal for w in windows)),
        }
        return DataLoader(
            self.train_set,
            batch_size=cfg.optim.batch_size,
            sampler=EpochSampler(
                len(windows),
                cfg.seed,
                cfg.optim.batch_size,
                np.array([len(w) for w in windows]) if cfg.bucket_by_length else None,
            ),
            collate_fn=TrainCollate(self.teachers if self.targets_in_workers else None),
            num_workers=cfg.num_workers,
        )

    def _setup_eval_data(self, causal: bool) -> None:
        self.eval_loaders = {}
        for split in ("valid", "test"):  # eval.cases: the same case shape for both
            hist, rel, skipped = self.seqs.eval_cases(split, self.cfg.eval.cases == "per_item")
            hist, rel = self._sample_users(split, hist, rel)
            if not hist:  # model selection never falls back to test
                need, part = {
                    "valid": ("model selection needs a validation split", "validation"),
                    "test": ("the final evaluation needs a test split", "test"),
                }[split]
                raise ConfigError(f"{need}: {self.cfg.dataset} has no {split} cases; prepare it with a {part} part")
            cases = EvalCases(hist, rel, self.cfg.model.max_len - (0 if causal else 1))  # BERT4Rec: room for [MASK]
            dl = DataLoader(
                cases, batch_size=self.cfg.eval.batch_size, collate_fn=partial(eval_collate, extra=int(not causal))
            )
            self.eval_loaders[split] = self.accelerator.prepare(dl)
            # cases, which are users unless eval.cases is per_item; skipped: users without the split, empty histories
            self.counts.setdefault("eval_cases", {})[split] = len(cases)
            if self.cfg.eval.cases != "per_item":
                self.counts.setdefault("eval_users", {})[split] = len(cases)
            self.counts.setdefault("eval_users_skipped", {})[split] = skipped

    def _sample_users(self, split: str, hist: list, rel: list) -> tuple[list, list]:
        """eval.sample_users (`sample_cases`; under eval.cases per_item a user's cases are sampled independently),
        counted."""
        sampled = sample_cases(hist, rel, self.cfg.eval.sample_users, self.cfg.seed, split)
        if len(sampled[0]) < len(hist):
            self.counts.setdefault("eval_users_sampled_from", {})[split] = len(hist)
        return sampled

    def _resume_or_start(self, write_config: bool) -> None:
        last = self.out / "checkpoints" / "last"
        if self.cfg.resume:
            if self.accelerator.is_main_process:
                recover_checkpoint(self.out / "checkpoints")
            self.accelerator.wait_for_everyone()
        if self.cfg.resume and last.exists():
            state = self._resumable_state(last)
            self.accelerator.load_state(str(last))
            self.state = TrainerState(**(state | {"inputs": self.state.inputs}))
            log.info("resumed from %s at epoch %d, step %d", last, self.state.epoch, self.state.global_step)
        if write_config and self.accelerator.is_main_process:
            save_config(self.cfg, self.out)

    def _resumable_state(self, last: Path) -> dict:
        """checkpoints/last's trainer state, after refusing a resume whose config or inputs changed."""
        saved = load_config(TrainConfig, self.out / "config.yaml")
        a, b = ({k: v for k, v in config_to_dict(c).items() if k not in RESUMABLE_KEYS} for c in (saved, self.cfg))
        if a != b:
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise ConfigError(f"{self.out}: cannot resume, config differs from the saved run in: {', '.join(diff)}")
        state = json.loads((last / "trainer_state.json").read_text())
        unknown = set(state) - {f.name for f in fields(TrainerState)}
        if unknown:
            raise ConfigError(
                f"{last}/trainer_state.json: written by another version (keys {', '.join(sorted(unknown))}); "
                "train into a fresh out_dir or set resume=false"
            )
        # Same paths are not the same inputs: a rebuilt dataset or store would make the resumed run's
        # metrics a mix of two runs.
        now, before = self.state.inputs, state.get("inputs")
        if before and before != now:
            raise ConfigError(
                f"{self.out}: cannot resume, inputs differ from the saved run's (rebuilt under the same "
                f"path?) in: {', '.join(identity_diff(before, now))}; train into a fresh out_dir"
            )
        if not before:
            log.warning("%s: no input identity recorded (an older checkpoint); not checked", last)
        return state

    # ---- training ----------------------------------------------------------------------------------
    def train(self) -> bool:
        """Train until the epoch budget or early stopping, then test the selected checkpoint once.
        Returns False when stopped by the KDSR_TEST_STOP_AFTER test hook (a simulated kill: no final test)."""
        cfg, acc, st = self.cfg, self.accelerator, self.state
        acc.init_trackers("tb", config={k: str(v) for k, v in config_to_dict(cfg).items()})
        while st.epoch < cfg.epochs and st.bad_epochs < cfg.patience:
            set_epoch_lr(self.optimizers, cfg, st.epoch)
            if st.step_in_epoch == 0:
                st.loss_sums, st.loss_batches = {}, 0
            t0 = time.perf_counter()
            if not self._train_epoch():
                return False
            self.timings.append(time.perf_counter() - t0)
            self._end_epoch()
        self.load_best()
        if cfg.eval.test:
            self.test = self.evaluate("test")
            acc.log({f"test/{k}": v for k, v in self.test.items()}, step=st.global_step)
        self._write_metrics()
        return True

    def _end_epoch(self) -> None:
        """Validate, keep the best weights, record the epoch, checkpoint."""
        acc, st, seconds = self.accelerator, self.state, self.timings[-1]
        t0 = time.perf_counter()
        valid = self.evaluate("valid")
        eval_seconds = time.perf_counter() - t0
        n, steps = max(1, st.loss_batches), max(1, st.step_in_epoch)
        st.history.append(
            {
                "epoch": st.epoch,
                "step": st.global_step,
                "seconds": round(seconds, 2),
                "eval_seconds": round(eval_seconds, 2),
                **{f"loss/{k}": v / n for k, v in st.loss_sums.items() if k not in GRAD_STATS},
                # mean total gradient norm before clipping, and the fraction of steps clipping shrank
                **{k: st.loss_sums[k] / steps for k in GRAD_STATS if k in st.loss_sums},
                **valid,
            }
        )
        acc.log({f"valid/{k}": v for k, v in valid.items()}, step=st.global_step)
        if valid["ndcg@10"] > st.best:
            st.best, st.best_epoch, st.bad_epochs = valid["ndcg@10"], st.epoch, 0
            acc.save_model(self.model, self.out / "best")  # safetensors
        else:
            st.bad_epochs += 1
        log.info(
            "epoch %d: valid ndcg@10 %.4f hr@10 %.4f (best %.4f @ %d), %.1fs",
            st.epoch,
            valid["ndcg@10"],
            valid["hr@10"],
            st.best,
            st.best_epoch,
            seconds,
        )
        st.epoch, st.step_in_epoch = st.epoch + 1, 0
        self.save_checkpoint()
        self._write_metrics()
        if self.on_epoch_end is not None:
            self.on_epoch_end(st.history[-1])

    def _train_epoch(self) -> bool:
        """The epoch's optimizer steps (those left after a resume); False when the stop-after hook fired."""
        cfg, acc, st = self.cfg, self.accelerator, self.state
        skip = st.step_in_epoch * cfg.optim.grad_accum  # micro-batches already consumed before a resume
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        # Accelerate re-seeds the sampler from its own iteration counter; pin it (and the dataset's
        # masking/negatives) to the epoch, which a fresh skip-loader after a resume does not know.
        loader.set_epoch(st.epoch)
        self.train_set.set_epoch(st.epoch)
        steps = len(self.train_loader) // cfg.optim.grad_accum
        bar = Progress(
            min(steps, cfg.max_steps) if cfg.max_steps else steps,
            f"epoch {st.epoch}",
            unit="step",
            initial=st.step_in_epoch,
            bar=cfg.progress and acc.is_local_main_process,
            logger=log,
        )
        self.model.train()
        for i, batch in enumerate(loader, start=skip):
            terms, loss = self._step(i, batch)
            if not acc.sync_gradients:
                continue
            st.global_step, st.step_in_epoch = st.global_step + 1, st.step_in_epoch + 1
            bar.update(1, loss=f"{float(loss.detach()):.3f}")
            self._after_step(terms, loss)
            if self.hooks.stop_after and st.global_step >= self.hooks.stop_after:
                bar.close()
                log.info("stopping after %d steps (the KDSR_TEST_STOP_AFTER test hook)", st.global_step)
                return False
            if cfg.max_steps and st.step_in_epoch >= cfg.max_steps:
                break
        bar.close()
        return True

    def distill_factor(self, epoch: int) -> float:
        """distill.fade_epochs: the distillation weights' factor in `epoch`, 1 -> 0 linearly; 1 without it."""
        fade = self.cfg.distill.fade_epochs
        return 1.0 if fade is None else max(0.0, 1.0 - epoch / fade)

    def _step(self, index: int, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One micro-batch: forward, backward and (on a sync step) the optimizer step -> (loss terms, loss)."""
        cfg, acc, st = self.cfg, self.accelerator, self.state
        # Dropout depends only on (seed, epoch, batch, rank): a resumed run replays it exactly.
        torch.manual_seed(((cfg.seed * 1_000_003 + st.epoch) * 1_000_003 + index) * 64 + acc.process_index)
        if self.teachers and not self.targets_in_workers:  # targets inside the step
            batch = {k: v.to(acc.device) for k, v in add_teacher_targets(batch, self.teachers).items()}
        if self.sampler is not None:  # negatives from (seed, epoch, micro-batch, rank): a resume replays them
            batch = self._add_negatives(batch, (st.epoch * 100_000_000 + index) * 64 + acc.process_index)
        with acc.accumulate(self.model):
            terms = self.model(batch)
            fade = self.distill_factor(st.epoch)
            loss = terms["rec"] + fade * sum(self.weights[k] * v for k, v in terms.items() if k != "rec")
            acc.backward(loss)
            if acc.sync_gradients and cfg.optim.clip_norm:
                if self.sparse:
                    norm = clip_grad_norm(self.model.parameters(), cfg.optim.clip_norm)
                else:
                    norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_norm)
                norm = float(norm)
                for k, v in zip(GRAD_STATS, (norm, float(norm > cfg.optim.clip_norm))):
                    st.loss_sums[k] = st.loss_sums.get(k, 0.0) + v
            for optimizer in self.optimizers:
                optimizer.step()
                optimizer.zero_grad()
        for k, v in terms.items():
            st.loss_sums[k] = st.loss_sums.get(k, 0.0) + float(v.detach())
        st.loss_batches += 1
        return terms, loss

    def _add_negatives(self, batch: dict, key: int) -> dict:
        targets = batch["targets"]
        negatives = self.sampler.draw(key, targets[targets > 0])
        return batch | {
            "negative_ids": negatives.ids,
            "negative_log_q": negatives.log_q,
            "target_log_q": self.sampler.log_q(targets, int((targets > 0).sum())),
        }

    def _after_step(self, terms: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        """After an optimizer step: TensorBoard every 20 steps, a mid-epoch checkpoint when configured."""
        st = self.state
        if st.global_step % 20 == 0:
            lrs = learning_rates(self.optimizers)
            losses = {f"loss/{k}": float(v.detach()) for k, v in terms.items()} | {"loss/total": float(loss.detach())}
            self.accelerator.log(losses | lrs, step=st.global_step)
        if self.cfg.checkpoint_every and st.global_step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()

    # ---- evaluation --------------------------------------------------------------------------------
    def evaluate(self, split: str) -> dict[str, float]:
        """Mean metrics over one split's users (`evaluate_users`)."""
        return {k: float(v.mean()) for k, v in self.evaluate_users(split).items()}

    @torch.no_grad()
    def evaluate_users(self, split: str) -> dict[str, torch.Tensor]:
        """Per-user metrics {name: (U,)} over one split, in the split's user order: exact full ranking in item
        chunks (or the labelled sampled mode), sharded over processes. The candidate table is fused once per
        pass."""
        cfg, acc = self.cfg, self.accelerator
        model = acc.unwrap_model(self.model)
        model.eval()
        gen = torch.Generator(device=acc.device).manual_seed(cfg.seed + acc.process_index)
        candidates = model.candidate_table(cfg.eval.item_chunk)
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in self.eval_loaders[split]:
            h = model.user_states(batch["history"], batch["lengths"])  # (B, D)
            seen = batch["seen"] if cfg.eval.exclude_history else None
            if cfg.eval.sampled_negatives:
                scores = candidate_scores(
                    model.backbone.score(h, candidates), seen, batch["relevant"], cfg.eval.sampled_negatives, gen
                )
                ranks = target_ranks(scores, batch["relevant"])
            else:
                ranks = chunked_target_ranks(h, candidates, batch["relevant"], seen, cfg.eval.item_chunk)
            per_user = acc.gather_for_metrics(ranking_metrics(ranks, cfg.eval.ks))
            for k, v in per_user.items():
                parts.setdefault(k, []).append(v.cpu())
        model.train()
        # per-user rows after the gather (which drops the duplicates padding the last shard): = eval_users
        self.counts.setdefault("eval_rows_gathered", {})[split] = sum(len(v) for v in parts["ndcg@10"])
        return {k: torch.cat(v) for k, v in parts.items()}

    # ---- checkpoints and outputs -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write checkpoints/tmp completely (its marker last), then swap it in by renames only: last -> last.old,
        tmp -> last, remove last.old. A kill at any point leaves a complete checkpoint that
        `recover_checkpoint` finds, so a resume never silently restarts at epoch 0."""
        acc = self.accelerator
        ckpt = self.out / "checkpoints"
        tmp, last, old = ckpt / "tmp", ckpt / "last", ckpt / "last.old"
        if acc.is_main_process:
            (tmp / COMPLETE_MARKER).unlink(missing_ok=True)  # first: a half-removed tmp must not look complete
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json_atomic(tmp / COMPLETE_MARKER, asdict(self.state))
            if last.exists():
                shutil.rmtree(old, ignore_errors=True)  # a leftover of a kill after the swap; `last` is newer
                last.rename(old)
            self.swaps += 1
            if self.hooks.kill_in_swap == self.swaps:
                os.kill(os.getpid(), signal.SIGKILL)
            tmp.rename(last)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load_best(self) -> None:
        path = self.out / "best" / "model.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no selected checkpoint (did any epoch finish?)")
        self.accelerator.unwrap_model(self.model).load_state_dict(load_file(str(path)))

    def _write_metrics(self) -> None:
        acc, st = self.accelerator, self.state
        if not acc.is_main_process:
            return
        peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if torch.cuda.is_available() and acc.device.type == "cuda":
            peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out = {
            "selected_epoch": st.best_epoch,
            "best_valid_ndcg@10": st.best,
            "valid_history": st.history,
            "test": self.test,
            "protocol": {"ranking": self.ranking_label, "exclude_history": self.cfg.eval.exclude_history},
            "counts": self.counts,
            "world_size": acc.num_processes,
            "timing": {"epoch_seconds_this_session": self.timings, **peak},
        }
        write_json_atomic(self.out / "metrics.json", out)

    def _write_process_report(self) -> None:
        """processes/rank<i>.json (the KDSR_TEST_PROCESS_REPORT test hook): world size and a checksum of this
        rank's parameters."""
        acc = self.accelerator
        params = acc.unwrap_model(self.model).state_dict()
        report = {
            "rank": acc.process_index,
            "world_size": acc.num_processes,
            "device": str(acc.device),
            "param_checksum": math.fsum(float(v.double().sum()) for v in params.values()),
        }
        write_json_atomic(self.out / "processes" / f"rank{acc.process_index}.json", report)

    @property
    def ranking_label(self) -> str:
        ev = self.cfg.eval
        n, users, per_item = ev.sampled_negatives, ev.sample_users, ev.cases == "per_item"
        label = (
            f"SAMPLED: target vs {n} random negatives (not comparable to full ranking)"
            if n
            else "full ranking over all items"
        )
        if users:
            label += f", on a random sample of {users:,} {'cases' if per_item else 'users'} per split"
        if per_item:
            label += ", one next-item case per item of the split with a growing history (the released KDSR protocol)"
        return label

    def cleanup(self) -> None:
        if self.hooks.process_report:
            self._write_process_report()
        self.accelerator.end_training()
