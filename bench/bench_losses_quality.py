"""Quality of the sampled softmax against the full softmax: SASRec (ID only) trained to early stopping on
validation NDCG@10, test read once at the selected epoch, paired by seed.

    python -m bench.bench_losses_quality                     # Beauty seeds 0-2 and Amazon Books seed 0
    python -m bench.bench_losses_quality --collect           # only rebuild the table from finished runs

Runs go two at a time, one torch thread each (a 2-core machine); a finished run (its metrics.json) is skipped,
so an interrupted study resumes. Writes bench/results/quality-losses.md.
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

LOSSES = {"ce": ["optim.loss=ce"], "sampled_softmax": ["optim.loss=sampled_softmax"]}
DATASETS = {
    "beauty": ("configs/prepare/beauty.yaml", "runs/data/beauty"),
    "amazon-books": ("configs/prepare/amazon-books.yaml", "runs/data/amazon-books"),
}


def plan(args) -> list[tuple[str, str, int]]:
    runs = [("beauty", loss, seed) for seed in args.beauty_seeds for loss in LOSSES]
    return runs + [("amazon-books", loss, seed) for seed in args.books_seeds for loss in LOSSES]


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


def table(work: Path, args) -> str:
    lines = [
        "# Sampled softmax vs full softmax: quality to early stopping",
        "",
        f"Verified as of {time.strftime('%Y-%m-%d')} with `python -m bench.bench_losses_quality` on this project's",
        "2-core CPU machine, two runs at a time with 1 torch thread each. SASRec, ID embeddings only (the default",
        "`configs/train/beauty-sasrec.yaml` on each dataset), batch 256, hidden 128, lr 1e-3; the sampled softmax",
        "with its defaults (1,024 shared uniform negatives, logQ correction, sparse item tables). Each run selects",
        "its epoch on validation NDCG@10 and reads test once there. Budgets: Beauty "
        f"{args.beauty_budget[0]} epochs max, patience {args.beauty_budget[1]}; Amazon Books "
        f"{args.books_budget[0]} epochs max, patience {args.books_budget[1]}.",
        "",
        "| dataset | loss | seeds | test NDCG@10 | test Recall@10 | selected epochs | s / epoch "
        "| ratio to ce (NDCG@10) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        found = {}
        for loss in LOSSES:
            ms = {}
            for path in sorted((work / dataset).glob(f"{loss}-seed*/metrics.json")):
                ms[int(path.parent.name.rsplit("seed", 1)[1])] = json.loads(path.read_text())
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
    return "\n".join(lines) + "\n"


def _fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "losses")
    ap.add_argument("--beauty-seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--books-seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--beauty-budget", type=int, nargs=2, default=[40, 5], metavar=("EPOCHS", "PATIENCE"))
    ap.add_argument("--books-budget", type=int, nargs=2, default=[15, 3], metavar=("EPOCHS", "PATIENCE"))
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
