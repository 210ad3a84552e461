"""One SASRec training epoch, ours vs RecBole 1.2.1's, at the same size, data, loss, batch and threads.

    python bench/bench_peers_train.py [--dataset runs/data/beauty] [--threads 2] [--epochs 2]
        [--full-epochs 0 [--ours-epochs N]]   # > 0: also train both with validation every epoch and compare the
                                              # time each needs to reach the same validation NDCG@10

Both sides: hidden 128, 2 layers, 2 heads, inner 4 x hidden, dropout 0.5, max len 50, batch 256, Adam 1e-3,
full-softmax CE, gradient clipping 5, the same leave-one-out split (RecBole's split is checked target by
target against ours). RecBole trains one sample per prefix, we train every position of each window: both
see the same 131k training targets per epoch, so targets/s is the fair unit. The fastest epoch of each
side counts (the first includes warm-up). Writes bench/results/peers_train.md.
"""

from __future__ import annotations

import argparse
import itertools
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


def time_to(target: float, ndcg: list[float], seconds: list[float]) -> tuple[int, float] | None:
    """(epochs, cumulative training seconds) until validation NDCG@10 first reaches `target`; None: never."""
    total = 0.0
    for epoch, (v, t) in enumerate(zip(ndcg, seconds)):
        total += t
        if v >= target:
            return epoch + 1, total
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="runs/data/beauty")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--epochs", type=int, default=2, help="timing epochs per side; 0: time the full runs' epochs")
    ap.add_argument(
        "--full-epochs",
        type=int,
        default=0,
        help="> 0: also train RecBole for at most this many epochs (validation every epoch) and compare "
        "the time each side needs to reach the same validation NDCG@10",
    )
    ap.add_argument("--ours-epochs", type=int, default=None, help="cap of our full run (default: 4 x --full-epochs)")
    ap.add_argument("--work", default="/tmp/kdsr-bench-peers")
    ap.add_argument("--out", default=str(REPO / "bench/results/peers_train.md"))
    args = ap.parse_args()
    if not args.epochs and not args.full_epochs:
        ap.error("--epochs 0 needs --full-epochs > 0 (nothing would be timed)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    common = [
        f"model.hidden={SIZE['hidden']}",
        f"model.n_layers={SIZE['layers']}",
        f"model.n_heads={SIZE['heads']}",
        f"model.dropout={SIZE['dropout']}",
        f"optim.batch_size={SIZE['batch']}",
        f"optim.lr={SIZE['lr']}",
        "resume=false",
        f"dataset={args.dataset}",
    ]
    ours_epochs = args.ours_epochs or 4 * args.full_epochs
    if args.epochs:
        ours = train(
            REPO / "configs/train/beauty-sasrec.yaml",
            [f"out_dir={work}/ours-timing", f"epochs={args.epochs}", *common],
            work / "ours-timing.log",
        )
    if args.full_epochs:
        ours_full = train(
            REPO / "configs/train/beauty-sasrec.yaml",
            [f"out_dir={work}/ours-full", f"epochs={ours_epochs}", *common],
            work / "ours-full.log",
        )
        ours = ours if args.epochs else ours_full
    ours_epoch = min(ours["timing"]["epoch_seconds_this_session"])
    rb = run_recbole_sasrec(
        args.dataset,
        work / "recbole.json",
        hidden_size=SIZE["hidden"],
        layers=SIZE["layers"],
        heads=SIZE["heads"],
        dropout=SIZE["dropout"],
        batch=SIZE["batch"],
        lr=SIZE["lr"],
        timing_epochs=args.epochs,
        epochs=args.full_epochs,
        threads=args.threads,
    )
    rb_epoch = min(rb["timing_epoch_s"] if args.epochs else rb["full"]["epoch_s"])
    targets = rb["train_targets"]
    rows = [
        ("kdsr SASRec", ours_epoch, targets / ours_epoch, ours["timing"]["peak_rss_mib"]),
        ("RecBole 1.2.1 SASRec", rb_epoch, targets / rb_epoch, rb["peak_rss_mib"]),
    ]
    full = []
    if args.full_epochs:
        full = quality_section(ours_full, rb, args.full_epochs, ours_epochs)
    lines = [
        "# Training speed against RecBole: SASRec on Beauty",
        "",
        f"Verified as of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`python bench/bench_peers_train.py --threads {args.threads} --epochs {args.epochs}"
        f"{f' --full-epochs {args.full_epochs} --ours-epochs {ours_epochs}' if args.full_epochs else ''}` on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch threads each side, one side at a "
        "time. Same split (RecBole's validation and test cases checked against ours, target and history: "
        f"{'identical' if rb['split_check'].get('match') else 'DIFFERENT: ' + json.dumps(rb['split_check'])}), "
        f"size {SIZE}, full-softmax CE, {targets:,} training targets per epoch. RecBole runs with anomaly "
        "detection off (its `sine.py` switches it on at import, a 5x slow-down we do not count against it).",
        "",
        "| trainer | fastest epoch (s) | targets/s | peak RSS (MiB) |",
        "|---|---|---|---|",
        *[f"| {n} | {e:.1f} | {t:,.0f} | {m:,.0f} |" for n, e, t, m in rows],
        "",
        f"**Per epoch: {rb_epoch / ours_epoch:.1f}x** faster. An epoch is not the same work on both sides: RecBole "
        f"takes {rb['train_batches']} optimizer steps of one-target prefixes, kdsr {ours['valid_history'][0]['step']} "
        "steps of whole windows (every position predicted), so the fair speed figure is the time to the same "
        "quality" + (", below." if full else " (run with `--full-epochs`)."),
        *full,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def quality_section(ours: dict, rb: dict, rb_cap: int, ours_cap: int) -> list[str]:
    """Validation NDCG@10 against cumulative training seconds on both sides, the time each needs to reach
    the best validation NDCG@10 both reach, and the selected checkpoints' test metrics."""
    o_ndcg = [h["ndcg@10"] for h in ours["valid_history"]]
    o_sec = [h["seconds"] for h in ours["valid_history"]]
    r_ndcg, r_sec = rb["full"]["valid_ndcg10_history"], rb["full"]["epoch_s"]
    target = min(max(o_ndcg), max(r_ndcg))
    o_hit, r_hit = time_to(target, o_ndcg, o_sec), time_to(target, r_ndcg, r_sec)
    t_o, t_r = ours["test"], rb["full"]["test"]

    def curve(ndcg, sec):
        return ", ".join(f"{v:.4f} ({t:.0f}s)" for v, t in zip(ndcg, itertools.accumulate(sec)))

    out = [
        "",
        f"## Time to the same quality (RecBole capped at {rb_cap} epochs, kdsr at {ours_cap}; "
        "validation every epoch, training seconds only)",
        "",
        f"- kdsr valid NDCG@10 by epoch (cumulative s): {curve(o_ndcg, o_sec)}",
        f"- RecBole valid NDCG@10 by epoch (cumulative s): {curve(r_ndcg, r_sec)}",
        f"- Both reach validation NDCG@10 {target:.4f}: kdsr after {o_hit[0]} epochs, {o_hit[1]:.0f} s; "
        f"RecBole after {r_hit[0]} epochs, {r_hit[1]:.0f} s. **Time to equal quality: "
        f"{r_hit[1] / o_hit[1]:.1f}x faster** (goal >= 3x).",
        "",
        "Test metrics of each side's selected checkpoint (best validation NDCG@10 within its cap):",
        "",
        "| | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 | epochs run | best valid NDCG@10 |",
        "|---|---|---|---|---|---|---|",
        f"| kdsr | {t_o['ndcg@10']:.4f} | {t_o['hr@10']:.4f} | {t_o['ndcg@20']:.4f} | {t_o['hr@20']:.4f} | "
        f"{len(o_ndcg)} | {max(o_ndcg):.4f} |",
        f"| RecBole | {t_r['ndcg@10']:.4f} | {t_r['recall@10']:.4f} | {t_r['ndcg@20']:.4f} | {t_r['recall@20']:.4f} | "
        f"{rb['full']['epochs_run']} | {max(r_ndcg):.4f} |",
    ]
    return out


if __name__ == "__main__":
    main()
