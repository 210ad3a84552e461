"""Scale benchmark of `kdsr dissect`: a synthetic 1,000,000 x 4096 float16 store (8 GB, written chunk by chunk,
never in memory at once) -> PCA 128 + clustered facets + K = 50 codebook; wall time and peak RSS per phase.
Also Beauty-size runs and the Teacher's per-step cost. Writes bench/results/dissect.md.

    python bench/bench_dissect.py --rows 1000000 --dim 4096 --work /tmp/dissect-bench \
        [--beauty-store runs/features/beauty/text/minilm]
    python bench/bench_dissect.py --rows 100000 --dim 4096 --out /tmp/dissect-small.md   # a quick try

Each phase runs in its own process so its peak RSS (ru_maxrss) is its own. The synthetic store is deleted
afterwards unless --keep. Needs rows * dim * 2 bytes of free disk under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def generate(path: str, rows: int, dim: int, seed: int = 0, block: int = 16384) -> dict:
    """Low-rank features with facet structure: 8 groups of dims, each driven by 8 latent factors whose
    strength varies per item (so both PCA and the energy statistic have something to find), plus noise."""
    import torch

    from feature_store.store import FeatureStore

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(seed)
    groups, per = 8, 8
    owner = torch.randperm(dim, generator=g) % groups  # dim -> its group
    w = torch.zeros(groups * per, dim)
    for k in range(groups):
        cols = torch.nonzero(owner == k).squeeze(1)
        w[k * per : (k + 1) * per, cols] = torch.randn(per, len(cols), generator=g)
    w /= (groups * per) ** 0.5
    t = time.perf_counter()
    store = FeatureStore.create(
        path,
        [f"s{i}" for i in range(rows)],
        dim,
        dtype="float16",
        shard_size=1024,
        overwrite=True,
        attrs={"model": "synthetic", "seed": seed},
    )
    step = block // store.shard_size * store.shard_size
    for start in range(0, rows, step):
        n = min(step, rows - start)
        z = torch.randn(n, groups * per, generator=g)
        strength = torch.rand(n, groups, generator=g).pow(2) * 2  # per-item activity of each group
        z = z * strength.repeat_interleave(per, dim=1)
        x = (z @ w + 0.1 * torch.randn(n, dim, generator=g)).to(torch.float16).numpy()
        for shard in range(start // store.shard_size, (start + n - 1) // store.shard_size + 1):
            a, b = store.shard_rows(shard)
            store.write_shard(shard, x[a - start : b - start])
        if (start // step) % 10 == 0:
            print(f"  generate: {start + n:,}/{rows:,} rows, {time.perf_counter() - t:.0f}s", flush=True)
    return {"seconds": time.perf_counter() - t, "peak_rss_gib": peak_rss_gib()}


def dissect_phase(features: str, output: str, overrides: list[str]) -> dict:
    from dissect.config import DissectConfig
    from dissect.run import run_dissect
    from feature_store.store import FeatureStore
    from kdsr.config import apply_overrides, validate_config
    from kdsr.logs import setup_logging

    setup_logging()  # progress on stderr; stdout carries the phase's JSON line
    raw = {"features": features, "output": output, "overwrite": True}  # the benchmark's own output, rewritten
    cfg = validate_config(DissectConfig, apply_overrides(raw, overrides, DissectConfig))
    t = time.perf_counter()
    run_dissect(cfg)
    meta = FeatureStore.open(output).attrs["dissect"]
    return {
        "seconds": time.perf_counter() - t,
        "peak_rss_gib": peak_rss_gib(),
        "timings_s": meta["timings_s"],
        "explained_variance": meta["reduction"].get("explained_variance_ratio"),
        "quality": meta["facets"]["quality"],
        "pairs": meta["codebook"]["pairs"],
    }


def time_teacher(path: str, threads: int) -> dict:
    import torch

    from feature_store.teacher import Teacher

    torch.set_num_threads(threads)
    teacher = Teacher.from_store(path)
    n = teacher.features.shape[0] - 1
    g = torch.Generator().manual_seed(0)
    full = torch.randint(1, n + 1, (256, 50), generator=g)
    lens = torch.randint(1, 20, (256,), generator=g)  # Beauty: mean train length ~9, so most positions pad
    padded = full.masked_fill(torch.arange(50)[None] < (50 - lens)[:, None], 0)
    out = {}
    for name, seqs in (("full", full), ("padded", padded)):
        for _ in range(3):
            teacher.targets(seqs)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            r = teacher.targets(seqs)
            times.append(time.perf_counter() - t)
        out[name] = {"ms_median": 1000 * float(np.median(times)), "pairs": int(r.pair_mask.sum())}
    return out


def child(args: list[str]) -> dict:
    """Run one phase in a fresh process; it prints progress and, last, one JSON line."""
    proc = subprocess.run([sys.executable, __file__, "--phase", *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line)
    if proc.returncode:
        raise SystemExit(f"phase {args} failed with exit {proc.returncode}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/dissect-bench")
    ap.add_argument("--beauty-store", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-generate", action="store_true", help="reuse the synthetic store under --work")
    ap.add_argument("--out", default=str(ROOT / "bench/results/dissect.md"))
    args, extra = ap.parse_known_args()
    if args.phase:
        kind, *rest = args.phase
        if kind == "generate":
            res = generate(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "dissect":
            res = dissect_phase(rest[0], rest[1], rest[2:])
        else:
            res = time_teacher(rest[0], int(rest[1]))
        print(json.dumps(res))
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    big = str(work / f"synthetic-{args.rows}x{args.dim}.zarr")
    free = shutil.disk_usage(work).free / 2**30
    print(
        f"disk free under {work}: {free:.0f} GiB; store needs ~{args.rows * args.dim * 2 / 2**30:.1f} GiB", flush=True
    )
    results = {}
    if not args.skip_generate:
        results["generate"] = child(["generate", big, str(args.rows), str(args.dim)])
    results["dissect_big"] = child(["dissect", big, big.replace(".zarr", ".dissect.zarr")])
    results["teacher_big"] = {th: child(["teacher", big.replace(".zarr", ".dissect.zarr"), str(th)]) for th in (1, 2)}
    small = str(work / "synthetic-12086x4096.zarr")
    child(["generate", small, "12086", "4096"])
    results["dissect_beauty_4096"] = child(["dissect", small, small.replace(".zarr", ".dissect.zarr")])
    if args.beauty_store:
        results["dissect_beauty_minilm"] = child(
            ["dissect", args.beauty_store, str(work / "beauty-minilm.dissect.zarr")]
        )
    if not args.keep:
        for p in work.glob("synthetic-*"):
            shutil.rmtree(p)
    write_results(args, results)
    return 0


def write_results(args, results: dict) -> None:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    big = results["dissect_big"]
    lines = [
        "# `kdsr dissect` scale benchmark",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({cpu}), {ram_gib:.0f} GiB RAM, "
        "shared with other work while it ran (load average noted below), by:",
        "",
        f"    python bench/bench_dissect.py --rows {args.rows} --dim {args.dim} --work {args.work}"
        + (f" --beauty-store {args.beauty_store}" if args.beauty_store else ""),
        "",
        f"Load average at the end: {os.getloadavg()[0]:.1f} (1 min). Defaults: PCA to 128 dims fitted on 262,144 "
        "rows (whole chunks at random), clustered facets (energy statistic, 100k items), F = 8, K = 50, "
        "1M uniform pairs, MiniBatchKMeans n_init = 3.",
        "",
        "| run | items x dims | wall | peak RSS | reduce fit | reduce write | facets | codebook |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if "generate" in results:
        gen = results["generate"]
        lines.append(
            f"| write synthetic store (float16) | {args.rows:,} x {args.dim} | {gen['seconds'] / 60:.1f} min "
            f"| {gen['peak_rss_gib']:.2f} GiB | | | | |"
        )
    for key, label, shape in (
        ("dissect_big", "dissect", f"{args.rows:,} x {args.dim}"),
        ("dissect_beauty_4096", "dissect, Beauty size (synthetic)", "12,086 x 4096"),
        ("dissect_beauty_minilm", "dissect, Beauty MiniLM (real)", "12,086 x 384"),
    ):
        if key in results:
            run, phases = results[key], results[key]["timings_s"]
            lines.append(
                f"| {label} | {shape} | {run['seconds'] / 60:.1f} min ({run['seconds']:.0f} s) "
                f"| {run['peak_rss_gib']:.2f} GiB | {phases['reduce_fit']:.0f} s | {phases['reduce_write']:.0f} s "
                f"| {phases['facets']:.1f} s | {phases['codebook']:.0f} s |"
            )
    goal_met = big["peak_rss_gib"] < 24 and big["seconds"] < 1800
    lines += [
        "",
        f"Synthetic {args.rows:,} x {args.dim}: PCA explained variance {big['explained_variance']:.1%}; "
        "facet affinity within / across: "
        + ", ".join(f"{k} {v['within']:.3f} / {v['across']:.3f}" for k, v in big["quality"].items())
        + ".",
        f"Goal (issue 4): under 24 GiB and 30 min on 2 cores -> {'met' if goal_met else 'NOT met'}.",
        "",
        "## Teacher.targets per training step (B = 256, L = 50, d = 128, F = 8, K = 50, CPU)",
        "",
        f"Features of the {args.rows:,}-item dissection above. `full`: every position a distinct item (worst case); "
        "`padded`: 1-19 items per sequence, as in Beauty (mean train length 8.9). Median of 20 calls.",
        "",
        "| torch threads | full: ms (pairs) | padded: ms (pairs) |",
        "|---|---|---|",
    ]
    for threads, res in results["teacher_big"].items():
        full, padded = res["full"], res["padded"]
        lines.append(
            f"| {threads} | {full['ms_median']:.1f} ({full['pairs']:,}) "
            f"| {padded['ms_median']:.1f} ({padded['pairs']:,}) |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
