"""One SASRec training epoch, ours vs RecBole 1.2.1's, at the same size, data, loss, batch and threads.

    python bench/bench_peers_train.py [--dataset runs/data/beauty] [--threads 2] [--epochs 2]
        [--full-epochs 0]      # > 0: also train both to early stopping (capped) and compare test NDCG@10

Both sides: hidden 128, 2 layers, 2 heads, inner 4 x hidden, dropout 0.5, max len 50, batch 256, Adam 1e-3,
full-softmax CE, gradient clipping 5, the same leave-one-out split (RecBole's split is checked target by
target against ours). RecBole trains one sample per prefix, we train every position of each window: both
see the same 131k training targets per epoch, so targets/s is the fair unit. The fastest epoch of each
side counts (the first includes warm-up). Writes bench/results/peers_train.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._runs import REPO, train  # noqa: E402
from bench.peers import run_recbole_sasrec  # noqa: E402

SIZE = {"hidden": 128, "layers": 2, "heads": 2, "dropout": 0.5, "batch": 256, "lr": 1e-3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="runs/data/beauty")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--epochs", type=int, default=2, help="timing epochs per side")
    ap.add_argument("--full-epochs", type=int, default=0, help="also train both to early stopping, capped")
    ap.add_argument("--work", default="/tmp/kdsr-bench-peers")
    ap.add_argument("--out", default=str(REPO / "bench/results/peers_train.md"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    common = [f"model.hidden={SIZE['hidden']}", f"model.n_layers={SIZE['layers']}", f"model.n_heads={SIZE['heads']}",
              f"model.dropout={SIZE['dropout']}", f"optim.batch_size={SIZE['batch']}", f"optim.lr={SIZE['lr']}",
              "resume=false", f"dataset={args.dataset}"]
    ours = train(REPO / "configs/train/beauty-sasrec.yaml",
                 [f"out_dir={work}/ours-timing", f"epochs={args.epochs}", *common], work / "ours-timing.log")
    ours_epoch = min(ours["timing"]["epoch_seconds_this_session"])
    rb = run_recbole_sasrec(args.dataset, work / "recbole-timing.json", hidden_size=SIZE["hidden"],
                            layers=SIZE["layers"], heads=SIZE["heads"], dropout=SIZE["dropout"], batch=SIZE["batch"],
                            lr=SIZE["lr"], timing_epochs=args.epochs, epochs=args.full_epochs, threads=args.threads)
    rb_epoch = min(rb["timing_epoch_s"])
    targets = rb["train_targets"]
    rows = [("kdsr SASRec", ours_epoch, targets / ours_epoch, ours["timing"]["peak_rss_mib"]),
            ("RecBole 1.2.1 SASRec", rb_epoch, targets / rb_epoch, rb["peak_rss_mib"])]
    full = ""
    if args.full_epochs:
        ours_full = train(REPO / "configs/train/beauty-sasrec.yaml",
                          [f"out_dir={work}/ours-full", f"epochs={args.full_epochs}", *common], work / "ours-full.log")
        t_ours, t_rb = ours_full["test"], rb["full"]["test"]
        full = "\n".join([
            "", f"After training to early stopping (patience 10, at most {args.full_epochs} epochs), test, full ranking:", "",
            "| | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 | epochs run |", "|---|---|---|---|---|---|",
            f"| kdsr | {t_ours['ndcg@10']:.4f} | {t_ours['hr@10']:.4f} | {t_ours['ndcg@20']:.4f} | {t_ours['hr@20']:.4f} | {len(ours_full['valid_history'])} |",
            f"| RecBole | {t_rb['ndcg@10']:.4f} | {t_rb['recall@10']:.4f} | {t_rb['ndcg@20']:.4f} | {t_rb['recall@20']:.4f} | {rb['full']['epochs_run']} |",
        ])
    lines = [
        "# Training speed against RecBole: SASRec on Beauty",
        "",
        f"Verified as of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`python bench/bench_peers_train.py --threads {args.threads} --epochs {args.epochs}"
        f"{f' --full-epochs {args.full_epochs}' if args.full_epochs else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {args.threads} torch threads each side, one side at a time. Same split "
        f"(RecBole's validation and test cases checked against ours, target and history: "
        f"{'identical' if rb['split_check'].get('match') else 'DIFFERENT: ' + json.dumps(rb['split_check'])}), "
        f"size {SIZE}, full-softmax CE, {targets:,} training targets per epoch. RecBole runs with anomaly "
        "detection off (its `sine.py` switches it on at import, a 5x slow-down we do not count against it).",
        "",
        "| trainer | fastest epoch (s) | targets/s | peak RSS (MiB) |",
        "|---|---|---|---|",
        *[f"| {n} | {e:.1f} | {t:,.0f} | {m:,.0f} |" for n, e, t, m in rows],
        "",
        f"**Speed-up: {rb_epoch / ours_epoch:.1f}x** (goal: >= 3x at equal quality, DESIGN.md section 5).",
        full,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
