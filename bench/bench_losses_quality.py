"""Quality of the sampled softmax against the full softmax: SASRec (ID only) trained to early stopping on
validation NDCG@10, test read once at the selected epoch, paired by seed.

    python -m bench.bench_losses_quality                     # Beauty and Amazon Books, seeds 0-2
    python -m bench.bench_losses_quality --collect           # only rebuild the table from finished runs

Runs go two at a time, one torch thread each (a 2-core machine); a finished run (its metrics.json) is skipped,
so an interrupted study resumes. Writes bench/results/quality-losses.md; each dataset's rows are also kept in
bench/results/quality-losses.json, so a dataset whose runs are not on this machine keeps its measured rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._runs import REPO, derive
from kdsr.files import write_json_atomic

LOSSES = {"ce": ["optim.loss=ce"], "sampled_softmax": ["optim.loss=sampled_softmax"]}
DATASETS = {
    "beauty": ("configs/prepare/beauty.yaml", "runs/data/beauty"),
    "amazon-books": ("configs/prepare/amazon-books.yaml", "runs/data/amazon-books"),
}


def plan(args) -> list[tuple[str, str, int]]:
    runs = [("beauty", loss, seed) for seed in args.beauty_seeds for loss in LOSSES]
    books_ce = [("amazon-books", "ce", seed) for seed in args.books_ce_seeds]  # first: the long ones
    return runs + books_ce + [("amazon-books", "sampled_softmax", seed) for seed in args.books_seeds]


def run_one(work: Path, dataset: str, loss: str, seed: int, args) -> Path:
    out = work / dataset / f"{loss}-seed{seed}"
    if (out / "metrics.json").exists():
        return out
    cfg = derive("configs/train/beauty-sasrec.yaml", work / dataset / f"{loss}.yaml", DATASETS[dataset][1])
    budget = args.books_budget if dataset == "amazon-books" else args.beauty_budget
    epochs, patience = budget
    overrides = [
        f"out_dir={out}",
        f"seed={seed}",
        f"epochs={epochs}",
        f"patience={patience}",
        "progress=false",
        "num_workers=0",
        *LOSSES[loss],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(work / dataset / f"{loss}-seed{seed}.log", "w") as f:
        cmd = [sys.executable, "-m", "jobs.cli", "train", str(cfg), *overrides]
        subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    print(f"done {dataset} {loss} seed {seed}", flush=True)
    return out


def dataset_rows(work: Path, dataset: str) -> list[str]:
    """The table rows of one dataset from its finished runs on disk (none when it has no runs here)."""
    lines = []
    found = {}
    for loss in LOSSES:
        ms = {}
        for path in sorted((work / dataset).glob(f"{loss}-seed*/metrics.json")):
            m = json.loads(path.read_text())
            if m.get("test"):  # finished runs only (metrics.json is rewritten after every epoch)
                ms[int(path.parent.name.rsplit("seed", 1)[1])] = m
        found[loss] = ms
    paired = sorted(set(found["ce"]) & set(found["sampled_softmax"]))
    for loss, ms in found.items():
        if not ms:
            continue
        nd = [m["test"]["ndcg@10"] for m in ms.values()]
        rc = [m["test"]["hr@10"] for m in ms.values()]
        secs = [statistics.mean(h["seconds"] for h in m["valid_history"]) for m in ms.values()]
        ratio = "1.00"
        if loss != "ce" and paired:
            r = [found[loss][s]["test"]["ndcg@10"] / found["ce"][s]["test"]["ndcg@10"] for s in paired]
            ratio = (
                f"{statistics.mean(r):.3f} (seeds {', '.join(map(str, paired))}: "
                + ", ".join(f"{x:.3f}" for x in r)
                + ")"
            )
        lines.append(
            f"| {dataset} | {loss} | {', '.join(map(str, sorted(ms)))} | {_fmt(nd)} | {_fmt(rc)} | "
            f"{', '.join(str(m['selected_epoch']) for m in ms.values())} | {statistics.mean(secs):.1f} | {ratio} |"
        )
    return lines


def table(work: Path, args) -> str:
    """The study's table: rows from runs on disk, else the rows kept from an earlier measurement."""
    kept_path = REPO / "bench" / "results" / "quality-losses.json"
    kept = json.loads(kept_path.read_text()) if kept_path.exists() else {"datasets": {}, "reading": []}
    for dataset in DATASETS:
        rows = dataset_rows(work, dataset)
        if rows:
            budget = args.books_budget if dataset == "amazon-books" else args.beauty_budget
            kept["datasets"][dataset] = {"measured": time.strftime("%Y-%m-%d"), "budget": list(budget), "rows": rows}
    write_json_atomic(kept_path, kept)
    datasets = kept["datasets"]
    lines = [
        "# Sampled softmax vs full softmax: quality to early stopping",
        "",
        f"Verified as of {time.strftime('%Y-%m-%d')} with `python -m bench.bench_losses_quality` on this project's",
        "2-core CPU machine, two runs at a time with 1 torch thread each. SASRec, ID embeddings only (the default",
        "`configs/train/beauty-sasrec.yaml` on each dataset), batch 256, hidden 128, lr 1e-3; the sampled softmax",
        "with its defaults (1,024 shared uniform negatives, logQ correction, sparse item tables). Each run selects",
        "its epoch on validation NDCG@10 and reads test once there. Budgets (max epochs, patience) and dates: "
        + "; ".join(f"{d}: {v['budget'][0]}, {v['budget'][1]}, measured {v['measured']}" for d, v in datasets.items())
        + ".",
        "",
        "| dataset | loss | seeds | test NDCG@10 | test Recall@10 | selected epochs | s / epoch "
        "| ratio to ce (NDCG@10) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in datasets.values():
        lines.extend(entry["rows"])
    if kept["reading"]:
        lines += ["", "Reading (written by hand in quality-losses.json's `reading`):", *kept["reading"]]
    return "\n".join(lines) + "\n"


def _fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "losses")
    ap.add_argument("--beauty-seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--books-seeds", type=int, nargs="*", default=[0, 1, 2])
    # the full softmax costs 13-24 min an epoch on Books at one thread here (hours per seed to early stopping)
    ap.add_argument("--books-ce-seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--beauty-budget", type=int, nargs=2, default=[40, 5], metavar=("EPOCHS", "PATIENCE"))
    ap.add_argument("--books-budget", type=int, nargs=2, default=[40, 3], metavar=("EPOCHS", "PATIENCE"))
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args(argv)
    if not args.collect:
        for config, path in DATASETS.values():
            if not (REPO / path / "stats.json").exists():
                subprocess.run([sys.executable, "-m", "jobs.cli", "prepare", config], cwd=REPO, check=True)
        with ThreadPoolExecutor(args.parallel) as pool:
            futures = [pool.submit(run_one, args.work, d, loss, s, args) for d, loss, s in plan(args)]
            for f in futures:
                f.result()
    out = REPO / "bench" / "results" / "quality-losses.md"
    out.write_text(table(args.work, args))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
