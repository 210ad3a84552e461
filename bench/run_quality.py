"""The evidence runs: test NDCG@10 / Recall@10 (mean +- std over seeds) of each backbone ID-only, with
features fused but no distillation (the two-stage baseline), and with distillation, plus the ablations.

    python bench/run_quality.py [--epochs 100 --patience 10 --seeds 0 1 2] [--only beauty-sasrec ...]
        [--beauty-data runs/data/beauty --beauty-text runs/features/beauty/text/minilm.dissect.zarr]
        [--sci-data runs/data/scientific-mm --sci-text ... --sci-image ...]

Every run selects its checkpoint on validation NDCG@10 and evaluates test once. Writes
bench/results/<name of --work>.md, e.g. quality.md (the table is rebuilt from all runs found under --work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m
from bench._runs import REPO, derive, train  # noqa: E402
from trainer.retention import run_knn, run_retention, trained_tables  # noqa: E402

BEAUTY = [
    "beauty-sasrec",
    "beauty-sasrec-fused",
    "beauty-sasrec-kd",
    "beauty-sasrec-kd-nocode",
    "beauty-sasrec-kd-noasync",
    "beauty-sasrec-kd-ramp-early",
    "beauty-sasrec-kd-w05",
    "beauty-sasrec-fused-sum",
    "beauty-sasrec-kd-sum",
    "beauty-sasrec-fused-idout",
    "beauty-sasrec-kd-idout",
    "beauty-gru4rec",
    "beauty-gru4rec-fused",
    "beauty-gru4rec-kd",
    "beauty-bert4rec",
    "beauty-bert4rec-fused",
    "beauty-bert4rec-kd",
    "beauty-bert4rec-fused-sum",
    "beauty-bert4rec-kd-sum",
]
SCIENTIFIC = ["scientific-mm-sasrec", "scientific-mm-sasrec-fused", "scientific-mm-sasrec-kd"]


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", help="config names to run (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beauty-data", default="runs/data/beauty")
    ap.add_argument("--beauty-text", default="runs/features/beauty/text/minilm.dissect.zarr")
    ap.add_argument("--sci-data", default="runs/data/scientific-mm")
    ap.add_argument("--sci-text", default="runs/features/scientific-mm/text/clip-vit-b32.dissect.zarr")
    ap.add_argument("--sci-image", default="runs/features/scientific-mm/image/clip-vit-b32.dissect.zarr")
    ap.add_argument("--work", default="runs/quality")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every run, e.g. max_steps=50")
    ap.add_argument("--collect", action="store_true", help="only rebuild the results file from the runs in --work")
    args = ap.parse_args()
    if args.collect:
        return write_table(Path(args.work))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.work)
    names = args.only or BEAUTY + SCIENTIFIC
    configs = {}
    for name in names:
        data, features = (
            (args.beauty_data, {"text": args.beauty_text})
            if name.startswith("beauty")
            else (args.sci_data, {"text": args.sci_text, "image": args.sci_image})
        )
        configs[name] = derive(f"configs/train/{name}.yaml", work / "configs" / f"{name}.yaml", data, features)
    for seed in args.seeds:  # seeds outermost: a cut-short session still has every config at the first seeds
        for name in names:
            out = work / f"{name}-s{seed}"
            done = out / "metrics.json"
            if done.exists() and json.loads(done.read_text()).get("test"):
                print(f"{name} seed {seed}: finished already ({done})", flush=True)
                continue
            out.mkdir(parents=True, exist_ok=True)
            (out / "bench.json").write_text(json.dumps({"threads": args.threads}))
            m = train(
                configs[name],
                [f"out_dir={out}", f"seed={seed}", f"epochs={args.epochs}", f"patience={args.patience}", *args.extra],
                work / f"{name}-s{seed}.log",
            )
            print(
                f"{name} seed {seed}: test ndcg@10 {m['test']['ndcg@10']:.4f} hr@10 {m['test']['hr@10']:.4f} "
                f"(epoch {m['selected_epoch']}, {m['wall_seconds']:.0f}s)",
                flush=True,
            )
    write_table(work)


MODEL_VARIANTS = {"-sum", "-concat", "-idout"}  # fusion, candidate scoring


def baselines(name: str) -> list[str]:
    """What a distilled run is compared with: the same backbone ID only, and fused without distillation;
    a variant that changes the model itself (beauty-sasrec-kd-sum) against the fused run with that change."""
    base, _, variant = name.partition("-kd")
    fused = f"{base}-fused{variant}" if variant in MODEL_VARIANTS else f"{base}-fused"
    return [base, fused]


def write_table(work: Path) -> None:
    """Rebuild bench/results/<work.name>.md from every finished run under `work` (budgets read from each run)."""
    runs: dict[str, list[dict]] = {}
    for p in sorted(work.glob("*-s*/metrics.json")):
        m = json.loads(p.read_text())
        if m.get("test"):
            cfg = yaml.safe_load((p.parent / "config.yaml").read_text())
            m["budget"] = f"{cfg['epochs']} / {cfg['patience']}"
            name, m["seed"] = p.parent.name.rsplit("-s", 1)
            info = p.parent / "bench.json"  # absent for runs made before it was written: they used 2 threads
            m["threads"] = json.loads(info.read_text())["threads"] if info.exists() else 2
            runs.setdefault(name, []).append(m)
    lines = [
        "# Quality: distillation vs the same backbone without it"
        + ("" if work.name == "quality" else f" ({work.name})"),
        "",
        f"Verified as of {time.strftime('%Y-%m-%d')} with `python bench/run_quality.py` (budgets per row; "
        "`--collect` rebuilds this file from the runs).",
        "Leave-one-out, full ranking over all items, history items stay candidates; checkpoint selected on",
        "validation NDCG@10, test evaluated once. Recall@10 = HR@10 with one target. mean +- std over seeds.",
        f"Budget = max epochs / patience. Threads per run (OMP_NUM_THREADS): "
        f"{', '.join(map(str, sorted({m['threads'] for ms in runs.values() for m in ms})))}; CPU only.",
        "",
        "| config | seeds | test NDCG@10 | test Recall@10 | valid NDCG@10 | selected epochs | budget | s / epoch "
        "| peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = BEAUTY + SCIENTIFIC
    names = sorted(runs, key=lambda n: order.index(n) if n in order else len(order))
    for name in names:
        ms = runs[name]
        secs = [statistics.mean(h["seconds"] for h in m["valid_history"]) for m in ms]
        peak_gib = max(m["timing"]["peak_rss_mib"] for m in ms) / 1024
        lines.append(
            f"| {name} | {len(ms)} | {fmt([m['test']['ndcg@10'] for m in ms])} | "
            f"{fmt([m['test']['hr@10'] for m in ms])} | "
            f"{fmt([m['best_valid_ndcg@10'] for m in ms])} | {', '.join(str(m['selected_epoch']) for m in ms)} | "
            f"{ms[0]['budget']} | {statistics.mean(secs):.1f} | {peak_gib:.2f} |"
        )
    lines += [
        "",
        "What the trained modality tables kept of the encoder (first seed of each run with features; "
        "`trainer/retention.py`): mean cos(V_i, X_i) of each item's trained row with its stored feature, and the "
        "Pearson r of item-pair cosines cos(V_i, V_j) vs cos(X_i, X_j) over 200k random pairs. "
        "1.0 = nothing forgotten. "
        "kNN: validation NDCG@10 of ranking items by cosine to the user's last item in the table alone (history "
        "excluded), for the stored features X and the trained V: how much next-item signal the table holds.",
        "",
        "| config | modality | row cos(V, X) | pair-cosine r | kNN NDCG@10 of X | kNN NDCG@10 of V |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        first = sorted(work.glob(f"{name}-s*/best/model.safetensors"))
        read = trained_tables(first[0].parent.parent) if first else (None, {})
        knn = run_knn(None, read=read) if read[1] else {}
        for modality, (row, pair) in run_retention(None, read[1]).items():
            lines.append(
                f"| {name} | {modality} | {row:.3f} | {pair:.3f} | {knn[f'stored {modality}']:.4f} | "
                f"{knn[f'trained {modality}']:.4f} |"
            )
    lines += [
        "",
        "Lift of distillation in test NDCG@10 (relative, of the means; seeds paired where both have them):",
        "",
    ]
    for name in names:
        if "-kd" not in name:
            continue
        for ref in baselines(name):
            if ref in runs:
                a, b = runs[name], runs[ref]
                ma, mb = (statistics.mean(m["test"]["ndcg@10"] for m in x) for x in (a, b))
                pairs = [(x, y) for x in a for y in b if x["seed"] == y["seed"]]
                wins = sum(x["test"]["ndcg@10"] > y["test"]["ndcg@10"] for x, y in pairs)
                lines.append(
                    f"- {name} vs {ref}: {ma:.4f} vs {mb:.4f} ({(ma / mb - 1) * 100:+.1f}%), "
                    f"higher in {wins} of {len(pairs)} seeds"
                )
    notes = REPO / "bench" / "results" / f"{work.name}_reading.md"  # written by hand: what the numbers say
    if not notes.exists():  # one reading covers the runs of every --work
        notes = REPO / "bench" / "results" / "quality_reading.md"
    if notes.exists():
        lines += ["", f"What these numbers say, and what was tried: [{notes.name}]({notes.name})."]
    out = REPO / "bench" / "results" / f"{work.name}.md"  # runs/quality -> quality.md
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
