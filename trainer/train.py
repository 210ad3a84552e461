"""Train a sequential recommender with correlation distillation: the recipe, on Accelerate.

    accelerate launch -m trainer.train configs/train/beauty-sasrec-kd.yaml [key.sub=value ...]
    kdsr train configs/train/beauty-sasrec-kd.yaml
    # two CPU processes sharing one model (gloo); `--cpu --num_processes 2` would silently start ONE:
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_machines 1 --num_processes 2 \
        -m trainer.train configs/train/beauty-sasrec-kd.yaml

Run directory (`out_dir`): config.yaml (resolved), metrics.json (validation history, selected epoch, test
metrics, timings), tb/ (TensorBoard: each loss term, learning rates, metrics), checkpoints/last (resumable
state: model, optimizer, RNG, trainer_state.json), best/model.safetensors (the selected weights).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdsr.config import ConfigError, config_to_dict, load_config, save_config
from kdsr.dataset import PreparedDataset
from trainer.config import TrainConfig
from trainer.data import (
    EpochSampler,
    EvalCases,
    TrainCollate,
    TrainWindows,
    UserSequences,
    add_teacher_targets,
    eval_collate,
)
from trainer.features import input_identity, load_modalities
from trainer.metrics import candidate_scores, ranking_metrics, target_ranks
from trainer.optim import build_optimizer, set_epoch_lr
from trainer.student import Student

# Keys that may change between a run and its resumption; any other difference is refused.
RESUMABLE_KEYS = {"resume", "stop_after", "progress", "checkpoint_every", "num_workers", "epochs", "patience"}


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
    loss_sums: dict = field(default_factory=dict)  # running sums of the loss terms in `epoch`, "_n" batches
    inputs: dict = field(default_factory=dict)  # input_identity() of the run: a resume refuses changed inputs


def teacher_in_workers(cfg: TrainConfig, acc: Accelerator) -> bool:
    """Resolve `teacher_in_workers: null` (auto): workers pay off only when they do not take cores from the step."""
    if cfg.teacher_in_workers is not None:
        return cfg.teacher_in_workers
    if cfg.num_workers == 0:
        return False
    if acc.device.type != "cpu":
        return True
    spare = len(os.sched_getaffinity(0)) - torch.get_num_threads() * acc.num_processes
    return spare >= cfg.num_workers * acc.num_processes


class TrainRecipe:
    def __init__(self, cfg: TrainConfig):
        self.cfg, self.out, self.state = cfg, Path(cfg.out_dir), TrainerState()

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
        # 2. Dataset and features; load_modalities refuses stores whose items do not match the dataset's.
        ds = PreparedDataset.open(cfg.dataset)
        self.seqs = UserSequences.from_dataset(ds)
        self.state.inputs = input_identity(cfg, ds)
        features, self.teachers, n_codes = load_modalities(cfg, ds)
        # 3. Model and optimizer (the async step's two parameter groups).
        model = self._setup_model(ds.n_items, features, n_codes)
        optimizer = build_optimizer(model, cfg)
        # 4. Loaders: the train collate computes teacher targets in the DataLoader workers.
        loader = self._setup_train_data(ds.n_items, model.backbone.causal)
        self.model, self.optimizer, self.train_loader = self.accelerator.prepare(model, optimizer, loader)
        self._setup_eval_data(model.backbone.causal)
        if self.teachers:
            where = "DataLoader workers" if self.teacher_in_workers else "training step"
            setting = "auto" if cfg.teacher_in_workers is None else cfg.teacher_in_workers
            self.accelerator.print(f"teacher targets are computed in the {where} (teacher_in_workers: {setting})")
        # 5. Resume from checkpoints/last when there is one (model, optimizer, RNG, trainer state).
        self._resume_or_start(write_config)

    def _setup_model(self, n_items: int, features: dict, n_codes: dict) -> Student:
        cfg = self.cfg
        heads = {m.name: (m.weight_hol > 0, m.weight_code > 0) for m in cfg.modalities if m.name in self.teachers}
        self.weights = {f"hol/{m.name}": m.weight_hol for m in cfg.modalities} | {
            f"code/{m.name}": m.weight_code for m in cfg.modalities
        }
        return Student(n_items, cfg.model, features, heads, n_codes, cfg.distill, cfg.optim.loss)

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
        self.teacher_in_workers = teacher_in_workers(cfg, self.accelerator)
        collate = TrainCollate(self.teachers if self.teacher_in_workers else None)
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
            collate_fn=collate,
            num_workers=cfg.num_workers,
        )

    def _setup_eval_data(self, causal: bool) -> None:
        self.eval_loaders = {}
        for split in ("valid", "test"):
            hist, rel, skipped = self.seqs.eval_cases(split)
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
            self.counts.setdefault("eval_users", {})[split] = len(cases)
            self.counts.setdefault("eval_users_skipped", {})[split] = skipped

    def _resume_or_start(self, write_config: bool) -> None:
        last = self.out / "checkpoints" / "last"
        if self.cfg.resume and last.exists():
            saved = load_config(TrainConfig, self.out / "config.yaml")
            a, b = (
                ({k: v for k, v in config_to_dict(c).items() if k not in RESUMABLE_KEYS}) for c in (saved, self.cfg)
            )
            if a != b:
                diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                raise ConfigError(f"{self.out}: cannot resume, config differs from the saved run in: {', '.join(diff)}")
            # Same paths are not the same inputs: a rebuilt dataset or store would make the resumed run's
            # metrics a mix of two runs.
            state = json.loads((last / "trainer_state.json").read_text())
            now, before = self.state.inputs, state.get("inputs")
            if before and before != now:
                diff = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
                raise ConfigError(
                    f"{self.out}: cannot resume, inputs differ from the saved run's (rebuilt under the same "
                    f"path?) in: {', '.join(diff)}; train into a fresh out_dir"
                )
            if not before:
                self.accelerator.print(f"{last}: no input identity recorded (an older checkpoint); not checked")
            self.accelerator.load_state(str(last))
            self.state = TrainerState(**(state | {"inputs": now}))
            self.accelerator.print(f"resumed from {last} at epoch {self.state.epoch}, step {self.state.global_step}")
        if write_config and self.accelerator.is_main_process:
            save_config(self.cfg, self.out)

    # ---- training ----------------------------------------------------------------------------------
    def train(self) -> bool:
        """Train until the epoch budget or early stopping, then test the selected checkpoint once.
        Returns False when stopped by `stop_after` (a simulated kill: no final test)."""
        cfg, acc, st = self.cfg, self.accelerator, self.state
        acc.init_trackers("tb", config={k: str(v) for k, v in config_to_dict(cfg).items()})
        timings = []
        while st.epoch < cfg.epochs and st.bad_epochs < cfg.patience:
            set_epoch_lr(self.optimizer, cfg, st.epoch)
            if st.step_in_epoch == 0:
                st.loss_sums = {}
            t0 = time.perf_counter()
            if not self._train_epoch():
                return False
            seconds = time.perf_counter() - t0
            timings.append(seconds)
            valid = self.evaluate("valid")
            n = max(1, st.loss_sums.pop("_n", 1))
            st.history.append(
                {
                    "epoch": st.epoch,
                    "step": st.global_step,
                    "seconds": round(seconds, 2),
                    **{f"loss/{k}": v / n for k, v in st.loss_sums.items()},
                    **valid,
                }
            )
            acc.log({f"valid/{k}": v for k, v in valid.items()}, step=st.global_step)
            if valid["ndcg@10"] > st.best:
                st.best, st.best_epoch, st.bad_epochs = valid["ndcg@10"], st.epoch, 0
                acc.save_model(self.model, self.out / "best")  # safetensors
            else:
                st.bad_epochs += 1
            acc.print(
                f"epoch {st.epoch}: valid ndcg@10 {valid['ndcg@10']:.4f} hr@10 {valid['hr@10']:.4f} "
                f"(best {st.best:.4f} @ {st.best_epoch}), {seconds:.1f}s"
            )
            st.epoch, st.step_in_epoch = st.epoch + 1, 0
            self.save_checkpoint()
            self._write_metrics(timings=timings)
        self.load_best()
        test = self.evaluate("test")
        acc.log({f"test/{k}": v for k, v in test.items()}, step=st.global_step)
        self._write_metrics(test=test, timings=timings)
        acc.print(f"test (epoch {st.best_epoch}): ndcg@10 {test['ndcg@10']:.4f} hr@10 {test['hr@10']:.4f}")
        return True

    def _train_epoch(self) -> bool:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        skip = st.step_in_epoch * cfg.optim.grad_accum  # micro-batches already consumed before a resume
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        # Accelerate re-seeds the sampler from its own iteration counter; pin it (and the dataset's
        # masking/negatives) to the epoch, which a fresh skip-loader after a resume does not know.
        loader.set_epoch(st.epoch)
        self.train_set.set_epoch(st.epoch)
        sums = st.loss_sums
        total = len(self.train_loader) // cfg.optim.grad_accum
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        bar = tqdm(
            total=total,
            initial=st.step_in_epoch,
            desc=f"epoch {st.epoch}",
            dynamic_ncols=True,
            disable=not (cfg.progress and acc.is_local_main_process),
        )
        self.model.train()
        for i, batch in enumerate(loader, start=skip):
            # Dropout depends only on (seed, epoch, batch, rank): a resumed run replays it exactly.
            torch.manual_seed(((cfg.seed * 1_000_003 + st.epoch) * 1_000_003 + i) * 64 + acc.process_index)
            if not self.teacher_in_workers and self.teachers:  # targets inside the step
                batch = {k: v.to(acc.device) for k, v in add_teacher_targets(batch, self.teachers).items()}
            with acc.accumulate(self.model):
                terms = self.model(batch)
                loss = terms["rec"] + sum(self.weights[k] * v for k, v in terms.items() if k != "rec")
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.clip_norm:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["_n"] = sums.get("_n", 0) + 1
            if not acc.sync_gradients:
                continue
            st.global_step, st.step_in_epoch = st.global_step + 1, st.step_in_epoch + 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if st.global_step % 20 == 0:
                lrs = {f"lr/{g.get('name', k)}": g["lr"] for k, g in enumerate(self.optimizer.param_groups)}
                acc.log(
                    {f"loss/{k}": float(v.detach()) for k, v in terms.items()}
                    | {"loss/total": float(loss.detach())}
                    | lrs,
                    step=st.global_step,
                )
            if cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.stop_after and st.global_step >= cfg.stop_after:
                bar.close()
                acc.print(f"stopping after {st.global_step} steps as configured (stop_after)")
                return False
            if cfg.max_steps and st.step_in_epoch >= cfg.max_steps:
                break
        bar.close()
        return True

    # ---- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Full ranking (or the labelled sampled mode) over one split, sharded over processes."""
        cfg, acc = self.cfg, self.accelerator
        model = acc.unwrap_model(self.model)
        model.eval()
        gen = torch.Generator(device=acc.device).manual_seed(cfg.seed + acc.process_index)
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in self.eval_loaders[split]:
            scores = model.scores(batch["history"], batch["lengths"])
            scores = candidate_scores(
                scores,
                batch["seen"] if cfg.eval.exclude_history else None,
                batch["relevant"],
                cfg.eval.sampled_negatives,
                gen,
            )
            per_user = acc.gather_for_metrics(ranking_metrics(target_ranks(scores, batch["relevant"]), cfg.eval.ks))
            for k, v in per_user.items():
                parts.setdefault(k, []).append(v.cpu())
        model.train()
        # per-user rows after the gather (which drops the duplicates padding the last shard): = eval_users
        self.counts.setdefault("eval_rows_gathered", {})[split] = sum(len(v) for v in parts["ndcg@10"])
        return {k: float(torch.cat(v).mean()) for k, v in parts.items()}

    # ---- checkpoints and outputs -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write checkpoints/tmp, then swap it for checkpoints/last: a kill mid-save leaves `last` intact."""
        acc = self.accelerator
        tmp, last = self.out / "checkpoints" / "tmp", self.out / "checkpoints" / "last"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(asdict(self.state)))
            shutil.rmtree(last, ignore_errors=True)
            tmp.rename(last)
        acc.wait_for_everyone()

    def load_best(self) -> None:
        path = self.out / "best" / "model.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no selected checkpoint (did any epoch finish?)")
        self.accelerator.unwrap_model(self.model).load_state_dict(load_file(str(path)))

    def _write_metrics(self, test: dict | None = None, timings: list[float] | None = None) -> None:
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
            "test": test,
            "protocol": {"ranking": self.ranking_label, "exclude_history": self.cfg.eval.exclude_history},
            "counts": self.counts,
            "world_size": acc.num_processes,
            "timing": {"epoch_seconds_this_session": timings or [], **peak},
        }
        (self.out / "metrics.json").write_text(json.dumps(out, indent=2))

    def write_process_report(self) -> None:
        """processes/rank<i>.json: world size and a checksum of this rank's parameters (tests compare them)."""
        acc = self.accelerator
        params = acc.unwrap_model(self.model).state_dict()
        checksum = math.fsum(float(v.double().sum()) for v in params.values())
        path = self.out / "processes" / f"rank{acc.process_index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "rank": acc.process_index,
                    "world_size": acc.num_processes,
                    "device": str(acc.device),
                    "param_checksum": checksum,
                }
            )
        )

    @property
    def ranking_label(self) -> str:
        n = self.cfg.eval.sampled_negatives
        return (
            f"SAMPLED: target vs {n} random negatives (not comparable to full ranking)"
            if n
            else "full ranking over all items"
        )

    def cleanup(self) -> None:
        self.write_process_report()
        self.accelerator.end_training()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv else 2
    cfg = load_config(TrainConfig, argv[0], argv[1:])
    recipe = TrainRecipe(cfg)
    recipe.setup()
    finished = recipe.train()
    recipe.cleanup()
    return 0 if finished else 3


if __name__ == "__main__":
    sys.exit(main())
