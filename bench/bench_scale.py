"""Catalog-scale benchmark: a generated 1,000,000-item catalog through the real stages, then one epoch of
SASRec with correlation distillation and sampled softmax, and an exact full-ranking validation in item chunks.

    python -m bench.bench_scale                     # everything; finished steps are skipped on a re-run
    python -m bench.bench_scale --items 100000      # a smaller catalog (its own work folder)
    python -m bench.bench_scale --ce-limit          # also step N up to find where the full softmax stops fitting

Steps (each one a subprocess through the same entry points a user runs, each skipped when its output exists):
1. generate: item popularity ~ rank^-0.9 (every item at least twice), user histories of lognormal length
   (median ~7, clipped to [5, 200]) that drift through neighbouring topics, 5,200,000 interactions; item
   features 768-d float16 around one centroid per topic of 50 ids.
2. `kdsr prepare` (no k-core: the catalog stays at N items), `kdsr import`, `kdsr dissect` (PCA 128, F 8, K 50).
3. `kdsr train`: SASRec + holistic and code distillation + `optim.loss: sampled_softmax`, 1 epoch, validation
   on a sample of users, peak RSS of the whole process tree (DataLoader workers included) polled every 0.5 s.
Results: bench/results/scale.md (+ scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def generate(work: Path, n_items: int, min_interactions: int, dim: int, seed: int = 0) -> None:
    """raw/interactions.parquet, raw/items.parquet, raw/features.npy + raw/feature_ids.txt."""
    import polars as pl

    raw = work / "raw"
    if (raw / "features.npy").exists():
        return
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    # popularity: a power law over a random order of the items, every item at least twice
    pop = np.maximum(2.0, (n_items / np.arange(1, n_items + 1)) ** 0.9)
    pop = (pop - 2) * (min_interactions - 2 * n_items) / max(1.0, pop.sum() - 2 * n_items) + 2  # sums to the target
    counts = np.zeros(n_items, np.int64)
    counts[rng.permutation(n_items)] = np.round(pop).astype(np.int64)  # popularity rank of each item id: random
    items = np.repeat(np.arange(n_items), counts)
    # sequential structure: the stream is ordered by the items' topic (id // 50, the features' topics) plus
    # wide noise, then cut into users, so a history drifts through neighbouring topics
    items = items[np.argsort((items // 50) + rng.normal(0, 400, size=len(items)), kind="stable")]
    n = len(items)
    lengths = np.clip(np.round(rng.lognormal(np.log(7.0), 0.8, size=n // 5)), 5, 200).astype(np.int64)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n))]
    lengths[-1] += n - int(lengths.sum())  # the last user takes the remainder
    users = np.repeat(np.arange(len(lengths)), lengths)
    ts = np.arange(n, dtype=np.int64)
    pl.DataFrame({"user_id": users, "item_id": items, "timestamp": ts}).write_parquet(raw / "interactions.parquet")
    ids = np.arange(n_items)
    pl.DataFrame({"item_id": ids, "title": [f"item {i}" for i in ids]}).write_parquet(raw / "items.parquet")
    topics = rng.standard_normal((n_items // 50 + 1, dim)).astype(np.float32)
    feats = np.empty((n_items, dim), np.float16)
    for s in range(0, n_items, 100_000):
        e = min(n_items, s + 100_000)
        x = topics[ids[s:e] // 50] + 0.7 * rng.standard_normal((e - s, dim)).astype(np.float32)
        feats[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    (raw / "feature_ids.txt").write_text("\n".join(map(str, ids)) + "\n")
    np.save(raw / "features.tmp.npy", feats)
    os.replace(raw / "features.tmp.npy", raw / "features.npy")
    print(
        f"generated {n:,} interactions, {len(lengths):,} users, {n_items:,} items in {time.perf_counter() - t0:.0f} s"
    )


def write_configs(work: Path, n_items: int, args) -> dict[str, Path]:
    import yaml

    cfgs = {
        "prepare": {
            "name": f"scale-{n_items}",
            "output_dir": str(work / "data"),
            "table": {
                "interactions": str(work / "raw/interactions.parquet"),
                "items": str(work / "raw/items.parquet"),
                "columns": {"integer_ids": True},
            },
            "filter": {"kcore": 0},
        },
        "import": {
            "source": str(work / "raw/features.npy"),
            "ids": str(work / "raw/feature_ids.txt"),
            "dataset": str(work / "data"),
            "output": {"path": str(work / "features/text")},
        },
        # a rerun of the bench replaces the dissection it wrote before
        "dissect": {"features": str(work / "features/text"), "dataset": str(work / "data"), "overwrite": True},
        "train": {
            "dataset": str(work / "data"),
            "out_dir": str(work / "train"),
            "modalities": [{"name": "text", "features": str(work / "features/text.dissect.zarr")}],
            "optim": {"loss": "sampled_softmax", "n_negatives": args.negatives},
            "eval": {"sample_users": args.eval_users, "item_chunk": args.item_chunk},
            "epochs": 1,
            "progress": False,
            "num_workers": 1,
        },
    }
    paths = {}
    for stage, cfg in cfgs.items():
        paths[stage] = work / f"{stage}.yaml"
        paths[stage].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


class PeakRSS:
    """Peak memory of a process and its descendants, polled in a thread: the sum of their PSS (proportional
    set size: a page shared by a forked DataLoader worker counts once, not once per process)."""

    def __init__(self, pid: int, every: float = 0.5):
        self.proc, self.every, self.peak, self._stop = psutil.Process(pid), every, 0, False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self._stop:
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_full_info().pss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(self.every)

    def stop(self) -> float:
        self._stop = True
        self.thread.join()
        return self.peak / 2**30


def run_stage(stage: str, config: Path, log: Path, *overrides: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", stage, str(config), *overrides], cwd=REPO, env=env, stdout=f, stderr=f
        )
        rss = PeakRSS(proc.pid)
        rc = proc.wait()
        peak = rss.stop()
    if rc != 0:
        raise SystemExit(f"kdsr {stage} failed ({rc}); see {log}")
    seconds = time.perf_counter() - t0
    print(f"{stage}: {seconds:.0f} s, peak RSS {peak:.2f} GiB")
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2)}


def one_step(n_items: int, loss: str, sparse: bool, positions: int, steps: int = 3) -> dict:
    """Steps of a SASRec student with a 128-d modality table over n_items, full-length batches (256 x 50:
    the worst case of a batch): seconds per step after the first, and peak RSS of this process."""
    import resource

    import torch

    from trainer.config import TrainConfig
    from trainer.optim import build_optimizers
    from trainer.student import Student

    torch.manual_seed(0)
    cfg = TrainConfig(dataset="-", out_dir="-", optim={"loss": loss, "sparse_tables": sparse if loss != "ce" else None})
    model = Student(n_items, cfg.model, {"text": torch.randn(n_items + 1, 128) * 0.05}, loss=loss, sparse=sparse)
    optimizers = build_optimizers(model, cfg)
    B, L = 256, 50
    times = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        inputs = torch.randint(1, n_items + 1, (B, L), generator=gen)
        batch = {"inputs": inputs, "targets": torch.randint(1, n_items + 1, (B, L), generator=gen), "items": inputs}
        if loss == "sampled_softmax":
            batch |= {
                "negative_ids": torch.randint(1, n_items + 1, (1024,), generator=gen),
                "negative_log_q": torch.zeros(1024),
                "target_log_q": torch.zeros(B, L),
            }
        t0 = time.perf_counter()
        model(batch)["rec"].backward()
        for o in optimizers:
            o.step()
            o.zero_grad()
        times.append(time.perf_counter() - t0)
    return {
        "n_items": n_items,
        "loss": loss,
        "sparse_tables": sparse,
        "positions": B * L,
        "seconds_per_step": round(sum(times[1:]) / max(1, len(times) - 1), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def probe(n_items: int, loss: str, sparse: bool) -> dict | None:
    """one_step in a fresh process (its own peak RSS); None when it dies (out of memory)."""
    code = (
        "import json, sys; from bench.bench_scale import one_step; "
        f"print(json.dumps(one_step({n_items}, {loss!r}, {sparse}, 0, steps=2)))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  N={n_items:,} {loss}: died ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        return None
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {row}")
    return row


def ce_limit(work: Path) -> dict:
    """Step N up (doubling) with the full-softmax ce step until the estimate or a measured point passes 90% of
    this machine's memory; also
    the step time of sampled softmax with dense vs sparse tables at 1M items (the optimizer choice)."""
    from trainer.memory import ce_step_bytes

    budget = psutil.virtual_memory().total / 2**30
    rows, n = [], 50_000
    while n <= 1_600_000:
        est = ce_step_bytes(n, 128, [128], "gate") / 2**30
        if est > 0.9 * budget:  # would not fit: the estimate speaks; no probe is run into the OOM killer
            rows.append({"n_items": n, "loss": "ce", "estimate_gib": round(est, 1), "measured": "not run"})
            break
        row = probe(n, "ce", False)
        rows.append({**(row or {"n_items": n, "loss": "ce", "measured": "died"}), "estimate_gib": round(est, 1)})
        if row is None or row["peak_rss_gib"] > 0.9 * budget:
            break
        n *= 2
    optim = [probe(1_000_000, "sampled_softmax", sparse) for sparse in (False, True)]
    return {"ce": rows, "optimizer_at_1m": optim}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--interactions", type=int, default=5_200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--negatives", type=int, default=1024)
    p.add_argument("--eval-users", type=int, default=10_000)
    p.add_argument("--item-chunk", type=int, default=65536)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--until", choices=["generate", "dissect", "train"], default="train")
    p.add_argument("--ce-limit", action="store_true", help="also step N up with the full softmax (minutes)")
    args = p.parse_args(argv)
    work = args.work or REPO / "runs" / "bench" / f"scale-{args.items}"
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}

    def step(name: str, fn) -> None:
        if name in record:
            print(f"{name}: done before, skipped")
            return
        record[name] = fn()
        record_path.write_text(json.dumps(record, indent=2))

    if args.ce_limit:
        step("ce_limit", lambda: ce_limit(work))
    step("generate", lambda: _timed(generate, work, args.items, args.interactions, args.dim))
    if args.until == "generate":
        return 0
    cfgs = write_configs(work, args.items, args)
    step("prepare", lambda: run_stage("prepare", cfgs["prepare"], work / "prepare.log"))
    step("import", lambda: run_stage("import", cfgs["import"], work / "import.log"))
    step("dissect", lambda: run_stage("dissect", cfgs["dissect"], work / "dissect.log"))
    if args.until == "dissect":
        return 0
    step("train", lambda: run_stage("train", cfgs["train"], work / "train.log", "resume=false"))
    write_results(work, record, args)
    return 0


def _timed(fn, *a) -> dict:
    t0 = time.perf_counter()
    fn(*a)
    return {"seconds": round(time.perf_counter() - t0, 1)}


def write_results(work: Path, record: dict, args) -> None:
    """bench/results/scale.json (everything) and scale.md (the table the README links)."""
    stats = json.loads((work / "data" / "stats.json").read_text())
    metrics = json.loads((work / "train" / "metrics.json").read_text())
    epoch = metrics["valid_history"][0]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    )
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "command": f"python -m bench.bench_scale --items {args.items}" + (" --ce-limit" if args.ce_limit else ""),
        "dataset": {k: stats[k] for k in ("n_users", "n_items", "n_interactions")},
        "steps": record,
        "epoch": epoch,
        "counts": metrics.get("counts"),
        "protocol": metrics.get("protocol"),
    }
    (RESULTS / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "scale.md").write_text(scale_markdown(out) + "\n")
    print((RESULTS / "scale.md").read_text())


def scale_markdown(r: dict) -> str:
    d, st, ep = r["dataset"], r["steps"], r["epoch"]
    train = st["train"]
    lines = [
        "# Catalog scale: 1,000,000 items on one 2-core machine",
        "",
        f"Verified as of {r['date']} with `{r['command']}` on {r['machine']}, torch threads 2, alone on the machine.",
        f"Generated catalog: {d['n_items']:,} items, {d['n_users']:,} users, {d['n_interactions']:,} interactions",
        "(power-law popularity, lognormal history lengths, 768-d float16 features), through the real stages.",
        "Peak memory: the summed PSS of the stage's process tree (DataLoader workers included), polled every 0.5 s.",
        "",
        "| stage | wall s | peak memory GiB |",
        "|---|---|---|",
    ]
    for name in ("prepare", "import", "dissect", "train"):
        if name in st:
            lines.append(f"| {name} | {st[name]['seconds']:.0f} | {st[name]['peak_rss_gib']:.2f} |")
    steps = ep["step"]
    lines += [
        "",
        "The train stage: SASRec (hidden 128, 2 layers, max len 50, batch 256) with holistic + code distillation",
        "(PCA-128 features, 8 facets, 50 codes), `optim.loss: sampled_softmax` (1,024 shared uniform negatives,",
        "logQ correction), sparse item tables (lazy Adam), 1 epoch, then an exact full-ranking validation over all",
        f"1,000,000 items in chunks of 65,536 on {r['counts']['eval_users']['valid']:,} sampled users.",
        "",
        "| epoch | value | goal |",
        "|---|---|---|",
        f"| training time (1 epoch, {steps:,} optimizer steps) | **{ep['seconds'] / 60:.1f} min** | < 20 min |",
        f"| steps / s | {steps / ep['seconds']:.2f} | |",
        f"| validation pass (full ranking) | {ep['eval_seconds']:.0f} s | |",
        f"| peak memory of the train stage | **{train['peak_rss_gib']:.2f} GiB** | < 12 GiB |",
        f"| validation NDCG@10 / HR@10 after 1 epoch | {ep['ndcg@10']:.4f} / {ep['hr@10']:.4f} | |",
    ]
    if "ce_limit" in st:
        lines += ["", "## Where the full softmax (`optim.loss: ce`) stops fitting", ""]
        lines += [
            "One training step of the same student on a full-length batch (256 x 50 positions), a fresh process per",
            "catalog size N, doubling N; `estimate` is `trainer/memory.py: ce_step_bytes`, the pre-flight check",
            "that refuses a run which would not fit (it errs high). Sizes whose estimate passes 90% of memory are",
            "not started.",
            "",
            "| N | s / step | peak RSS GiB | estimate GiB |",
            "|---|---|---|---|",
        ]
        from trainer.memory import BASELINE, ce_step_bytes

        for row in st["ce_limit"]["ce"]:
            measured = row.get("peak_rss_gib", row.get("measured", "-"))
            est = (BASELINE + ce_step_bytes(row["n_items"], 128, [128], "gate")) / 2**30
            lines.append(f"| {row['n_items']:,} | {row.get('seconds_per_step', '-')} | {measured} | {est:.1f} |")
        measured = [r for r in st["ce_limit"]["ce"] if "peak_rss_gib" in r]
        if len(measured) >= 2:
            a, b = measured[-2], measured[-1]
            slope = (b["peak_rss_gib"] - a["peak_rss_gib"]) / (b["n_items"] - a["n_items"])
            total = psutil.virtual_memory().total / 2**30
            limit = b["n_items"] + (total - b["peak_rss_gib"]) / slope
            lines += [
                "",
                f"Memory grows linearly, {slope * 1e5:.2f} GiB per 100,000 items: extrapolated from the last two",
                f"points, **the full softmax stops fitting this machine's {total:.0f} GiB at about "
                f"{limit / 1e3:,.0f}k items** (on full-length batches; the step time grows linearly too). The",
                "pre-flight check refuses a ce run whose estimate passes 90% of memory, naming",
                "`optim.loss=sampled_softmax`. RecBole's SASRec (CE) limit was not measured: its environment",
                "(bench/recbole_env.sh) is not installed on this machine.",
            ]
        lines += ["", "Sampled softmax at N = 1,000,000 on the same batch, item tables dense vs sparse:", ""]
        lines += ["| item tables | s / step | peak RSS GiB |", "|---|---|---|"]
        for row in st["ce_limit"]["optimizer_at_1m"]:
            if row:
                kind = "sparse (lazy Adam)" if row["sparse_tables"] else "dense (Adam)"
                lines.append(f"| {kind} | {row['seconds_per_step']} | {row['peak_rss_gib']} |")
        lines += [
            "",
            "Dense Adam reads and writes every row of the ID table, V^m and both moment buffers each step; the lazy",
            "Adam only the rows the step looked up. Hence `optim.sparse_tables` defaults to sparse with the row-lookup",
            "losses (bce, sampled_softmax).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
