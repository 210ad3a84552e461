"""RecBole 1.2.1's SASRec on a kdsr prepared dataset: the peer side of the training benchmark.

Runs inside the bench-only env (bench/recbole_env.sh), never in .venv, and imports nothing from kdsr.
Drives RecBole through its library API (Config, create_dataset, data_preparation, get_model, get_trainer),
not `run_recbole`, whose module imports Ray Tune.

    bash bench/recbole_env.sh
    bench/.env/bin/python bench/recbole_sasrec.py --data runs/data/beauty --out runs/bench/recbole.json \
        --timing-epochs 2 --epochs 30 --stopping-step 5

What it does:
1. exports interactions.parquet to RecBole atomic files (`position` as the timestamp, so the order of
   record is kept even where Amazon timestamps tie) and configures the same protocol as ours: leave-one-out
   ('LS' valid_and_test, order 'TO'), full ranking with history items kept as candidates, no filtering;
2. checks that RecBole's split equals ours: user/item/interaction counts, and the valid and test target and
   history (last MAX_ITEM_LIST_LENGTH items) of every user; a mismatch is an error, not a footnote;
3. times `--timing-epochs` training epochs without evaluation (the last one is the figure: the first pays
   warm-up), around Trainer._train_epoch;
4. with `--epochs N > 0`, trains a fresh model with early stopping on validation NDCG@10 and evaluates
   the selected checkpoint once on test.
Prints one JSON line on stdout and writes it to --out; RecBole's own log is copied next to it.

Autograd anomaly detection, which importing RecBole switches on globally, is switched off again unless
--anomaly-detection is given (see the NOTE in main). Pass the same --threads as our side: on a loaded
machine torch's default of one thread per core can be several times slower than one thread.

NOTE: RecBole trains on every prefix of each training sequence (one target per sample, ~131k samples on
Beauty), while kdsr predicts at every position of a window (one sample per user for most users). Both see
each training target once per epoch, so the fair unit is targets/s; the JSON reports both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

KS = [5, 10, 20, 50]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a kdsr prepared dataset folder (kdsr prepare)")
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--inner-size", type=int, default=None, help="feed-forward width; default 4 x hidden (as ours)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2, help="hidden and attention dropout (ours: 0.2)")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--clip-norm", type=float, default=5.0, help="gradient clipping as ours; 0 = off (RecBole's default)"
    )
    p.add_argument("--timing-epochs", type=int, default=2, help="epochs timed without evaluation; 0 = skip")
    p.add_argument("--epochs", type=int, default=0, help="cap for the full training run; 0 = skip it")
    p.add_argument("--stopping-step", type=int, default=10, help="evaluations without a better valid NDCG@10")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's choice")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--anomaly-detection",
        action="store_true",
        help="keep the autograd anomaly detection that importing RecBole switches on (as shipped)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with atomic files and logs")
    a = p.parse_args(argv)
    if a.inner_size is None:
        a.inner_size = 4 * a.hidden_size
    if a.hidden_size % a.heads:
        p.error(f"--hidden-size {a.hidden_size} is not divisible by --heads {a.heads}")
    return a


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_ours(data: Path) -> tuple[pd.DataFrame, dict]:
    """The prepared dataset's interactions, sorted by (user, position), and its stats.json."""
    path = data / "interactions.parquet"
    if not path.exists() or not (data / "stats.json").exists():
        raise SystemExit(
            f"{data}: not a prepared dataset (need interactions.parquet and stats.json); run `kdsr prepare`"
        )
    df = pd.read_parquet(path, columns=None)
    need = {"user", "item", "position", "split"}
    if need - set(df.columns):
        raise SystemExit(f"{path}: missing columns {sorted(need - set(df.columns))}")
    df = df.sort_values(["user", "position"], kind="stable").reset_index(drop=True)
    dup = df.duplicated(["user", "position"])
    if dup.any():
        row = df[dup].iloc[0].to_dict()
        raise SystemExit(f"{path}: {int(dup.sum())} rows repeat a (user, position), first {row}")
    return df, json.loads((data / "stats.json").read_text())


def export_atomic(df: pd.DataFrame, root: Path, name: str) -> Path:
    """Write <root>/<name>/<name>.inter; position is the timestamp, so ties in real time keep their order."""
    folder = root / name
    folder.mkdir(parents=True)
    out = pd.DataFrame(
        {
            "user_id:token": df["user"].astype(np.int64),
            "item_id:token": df["item"].astype(np.int64),
            "timestamp:float": df["position"].astype(np.int64),
        }
    )
    out.to_csv(folder / f"{name}.inter", sep="\t", index=False)
    return folder


def recbole_config(a: argparse.Namespace, name: str, data_path: Path, work: Path, use_gpu: bool) -> dict:
    return {
        "data_path": str(data_path),
        "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        # The data is already 5-core and split-ready: no filtering, no dedup, no normalising of the timestamp.
        "user_inter_num_interval": None,
        "item_inter_num_interval": None,
        "rm_dup_inter": None,
        "val_interval": None,
        "normalize_all": False,
        "normalize_field": None,
        "MAX_ITEM_LIST_LENGTH": a.max_len,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": KS,
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 6,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "hidden_size": a.hidden_size,
        "inner_size": a.inner_size,
        "n_layers": a.layers,
        "n_heads": a.heads,
        "hidden_dropout_prob": a.dropout,
        "attn_dropout_prob": a.dropout,
        "train_batch_size": a.batch,
        "eval_batch_size": a.eval_batch,
        "learning_rate": a.lr,
        "learner": "adam",
        "weight_decay": 0.0,
        "clip_grad_norm": {"max_norm": a.clip_norm} if a.clip_norm > 0 else None,
        "epochs": max(a.epochs, 1),
        "stopping_step": a.stopping_step,
        "eval_step": 1,
        "seed": a.seed,
        "reproducibility": True,
        "use_gpu": use_gpu,
        "gpu_id": "0",
        "worker": 0,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
    }


def split_check(counts: dict, dataset, train_ds, valid_ds, test_ds, ours: pd.DataFrame, max_len: int) -> dict:
    """Compare RecBole's split with ours: counts (RecBole's without its padding ID), training samples (one
    per train row after each user's first), and per user the eval target and its truncated history."""
    train = ours[ours["split"] == "train"]
    report = {
        "recbole": {**counts, "train_samples": len(train_ds)},
        "ours": {
            "users": int(ours["user"].nunique()),
            "items": int(ours["item"].nunique()),
            "interactions": len(ours),
            "train_samples": len(train) - int(train["user"].nunique()),
        },
    }
    seqs = {u: g for u, g in ours.groupby("user", sort=False)}
    for split, ds in (("valid", valid_ds), ("test", test_ds)):
        feat = ds.inter_feat
        users = dataset.id2token("user_id", feat["user_id"].numpy()).astype(np.int64)
        targets = dataset.id2token("item_id", feat["item_id"].numpy()).astype(np.int64)
        lists, lens = feat["item_id_list"].numpy(), feat["item_length"].numpy()
        bad_target = bad_history = 0
        first_bad = None
        for u, t, lst, n in zip(users, targets, lists, lens):
            g = seqs[u]
            at = np.flatnonzero(g["split"].to_numpy() == split)
            want_t = g["item"].to_numpy()[at[0]] if at.size else None
            want_h = g["item"].to_numpy()[: at[0]][-max_len:] if at.size else None
            got_h = dataset.id2token("item_id", lst[:n]).astype(np.int64)
            if want_t != t:
                bad_target += 1
                first_bad = first_bad or {
                    "user": int(u),
                    "recbole_target": int(t),
                    "ours": None if want_t is None else int(want_t),
                }
            elif not np.array_equal(got_h, want_h):
                bad_history += 1
                first_bad = first_bad or {
                    "user": int(u),
                    "history_len_recbole": int(n),
                    "history_len_ours": len(want_h),
                }
        n_ours = int((ours["split"] == split).sum())
        report[split] = {
            "recbole_cases": len(users),
            "ours_cases": n_ours,
            "target_mismatches": bad_target,
            "history_mismatches": bad_history,
            "first_mismatch": first_bad,
        }
    r, o = report["recbole"], report["ours"]
    report["match"] = r == o and all(
        report[s]["recbole_cases"] == report[s]["ours_cases"]
        and report[s]["target_mismatches"] == 0
        and report[s]["history_mismatches"] == 0
        for s in ("valid", "test")
    )
    return report


def build_trainer(config, train_data, epochs: int):
    """A fresh SASRec and trainer; each _train_epoch call is timed into trainer.epoch_seconds."""
    from recbole.utils import get_model, get_trainer, init_seed

    init_seed(config["seed"], config["reproducibility"])
    config["epochs"] = epochs
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.epoch_seconds = []
    train_epoch = trainer._train_epoch

    def timed(*args, **kw):
        t0 = time.perf_counter()
        loss = train_epoch(*args, **kw)
        trainer.epoch_seconds.append(time.perf_counter() - t0)
        return loss

    trainer._train_epoch = timed
    return model, trainer


def keep_best_in_memory(trainer, model) -> dict:
    """Replace RecBole's checkpoint file with an in-memory copy: its evaluate(load_best_model=True) calls
    torch.load on a pickled Config, which torch >= 2.6 refuses under weights_only (and should)."""
    best = {}

    def save(epoch, verbose=True, **kw):
        best["epoch"] = epoch
        best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    trainer._save_checkpoint = save
    return best


def record_validation(trainer) -> list[float]:
    """Validation NDCG@10 after every epoch (eval_step 1), for the time-to-quality comparison."""
    history = []
    valid_epoch = trainer._valid_epoch

    def recorded(*args, **kw):
        score, result = valid_epoch(*args, **kw)
        history.append(float(result["ndcg@10"]))
        return score, result

    trainer._valid_epoch = recorded
    return history


def metrics(result) -> dict:
    return {k: float(v) for k, v in (result or {}).items()}


def main(argv=None) -> dict:
    a = parse_args(argv)
    data, out = Path(a.data).resolve(), Path(a.out).resolve()
    if a.threads:
        torch.set_num_threads(a.threads)
    use_gpu = torch.cuda.is_available() if a.device == "auto" else a.device == "cuda"
    if use_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")

    import recbole

    # NOTE: recbole/model/sequential_recommender/sine.py calls torch.autograd.set_detect_anomaly(True) at
    # import time, so every RecBole model trains under anomaly detection (a debugging mode: NaN checks on
    # every backward output, several times slower on CPU). We compare against RecBole without it.
    import recbole.model.sequential_recommender  # noqa: F401  (runs that import now, not inside get_model)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger

    torch.autograd.set_detect_anomaly(a.anomaly_detection)

    ours, stats = load_ours(data)
    name = stats.get("name", data.name)
    work = Path(tempfile.mkdtemp(prefix="recbole-"))
    cwd = os.getcwd()
    try:
        export_atomic(ours, work / "atomic", name)
        os.chdir(work)  # RecBole writes log/, log_tensorboard/ and saved/ under the working directory
        config = Config(
            model="SASRec", dataset=name, config_dict=recbole_config(a, name, work / "atomic", work, use_gpu)
        )
        init_logger(config)
        t0 = time.perf_counter()
        dataset = create_dataset(config)
        counts = {"users": dataset.user_num - 1, "items": dataset.item_num - 1, "interactions": dataset.inter_num}
        train_data, valid_data, test_data = data_preparation(config, dataset)  # changes dataset's inter_feat
        prep_s = time.perf_counter() - t0
        check = split_check(
            counts, dataset, train_data._dataset, valid_data._dataset, test_data._dataset, ours, a.max_len
        )
        if not check["match"]:
            raise SystemExit(f"RecBole's split differs from ours on {data}: {json.dumps(check)}")
        n_train = len(train_data._dataset)
        result = {
            "peer": "recbole",
            "model": "SASRec",
            "recbole_version": recbole.__version__,
            "torch_version": torch.__version__,
            "dataset": name,
            "data_dir": str(data),
            "device": str(config["device"]),
            "threads": torch.get_num_threads(),
            "anomaly_detection": torch.is_anomaly_enabled(),
            "args": {k: v for k, v in vars(a).items() if k not in ("data", "out", "keep_tmp")},
            "split_check": check,
            "prepare_s": round(prep_s, 3),
            "train_samples": n_train,
            "train_targets": n_train,
            "train_batches": len(train_data),
            "rss_after_data_mib": round(peak_rss_mib(), 1),
        }

        if a.timing_epochs > 0:
            model, trainer = build_trainer(config, train_data, a.timing_epochs)
            trainer.fit(train_data, valid_data=None, saved=False, verbose=True)
            times = trainer.epoch_seconds
            result.update(
                {
                    "n_params": sum(p.numel() for p in model.parameters()),
                    "timing_epoch_s": [round(t, 3) for t in times],
                    "epoch_s": round(times[-1], 3),
                    "targets_per_s": round(n_train / times[-1], 1),
                }
            )
            del model, trainer

        if a.epochs > 0:
            t0 = time.perf_counter()
            config["stopping_step"] = a.stopping_step
            model, trainer = build_trainer(config, train_data, a.epochs)
            best = keep_best_in_memory(trainer, model)
            valid_history = record_validation(trainer)
            trainer.fit(train_data, valid_data=valid_data, saved=True, verbose=True)
            model.load_state_dict(best["state"])
            test = trainer.evaluate(test_data, load_best_model=False)
            times = trainer.epoch_seconds
            result["full"] = {
                "epochs_run": len(times),
                "best_epoch": best["epoch"],
                "stopping_step": a.stopping_step,
                "stopped_early": len(times) < a.epochs,
                "epoch_s": [round(t, 3) for t in times],
                "median_epoch_s": round(float(np.median(times[1:] or times)), 3),
                "wall_s": round(time.perf_counter() - t0, 1),
                "valid": metrics(trainer.best_valid_result),
                "test": metrics(test),
                "valid_ndcg10_history": valid_history,
            }
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    finally:
        os.chdir(cwd)
        logs = sorted((work / "log").rglob("*.log")) if (work / "log").exists() else []
        out.parent.mkdir(parents=True, exist_ok=True)
        if logs:
            shutil.copyfile(logs[-1], out.with_suffix(".recbole.log"))
        if a.keep_tmp:
            print(f"recbole_sasrec: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    line = json.dumps(result)
    out.write_text(line + "\n")
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
