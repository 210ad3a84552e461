"""Encoding benchmark: Beauty's 12,086 titles with all-MiniLM-L6-v2, three ways, in one run.

    .venv/bin/python -m bench.bench_encode            # ~3-5 min on 2 cores; writes bench/results/encode.md

1. sentence-transformers `encode` (batch 32, its default): the reference embeddings and time.
2. a plain transformers loop (fp32, batch 32, length-sorted, mean pooling): what a hand-written script gets.
3. `kdsr encode configs/encode/beauty-minilm.yaml`: the whole job (Ray start included) and its steady
   items/s after the model is loaded.
Each runs in its own process; time is that process's wall time (imports and model load included), peak
memory is the largest summed RSS of the process and all its children (Ray's too), sampled every 50 ms.
With CUDA present it also encodes the titles with an LLM (`--llm`, bf16 and int8) and reports the
fraction of the FLOP limit (2 x params x tokens); without, that section says "not measured".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "encode.md"
CONFIG = REPO / "configs" / "encode" / "beauty-minilm.yaml"


# ---- the three methods, each run as `python -m bench.bench_encode --method M` ---------------------
def titles_of(dataset: Path) -> list[str]:
    import polars as pl

    return pl.read_parquet(dataset / "items.parquet").sort("item")["title"].to_list()


def method_st(dataset: Path, out: Path, threads: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from feature_store.models import resolve_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = SentenceTransformer(
        resolve_model("sentence-transformers/all-MiniLM-L6-v2", with_hash=False).source, device="cpu"
    )
    emb = model.encode(titles_of(dataset), batch_size=32)
    dt = time.perf_counter() - t0
    np.save(out, emb)
    return {"seconds_in_process": dt}


def method_hf(dataset: Path, out: Path, threads: int) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from feature_store.models import resolve_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2", with_hash=False).source
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    titles = titles_of(dataset)
    order = np.argsort([-len(t) for t in titles], kind="stable")
    emb = np.zeros((len(titles), 384), np.float32)
    with torch.inference_mode():
        for s in range(0, len(titles), 32):
            idx = order[s : s + 32]
            batch = tok([titles[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            emb[idx] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    dt = time.perf_counter() - t0
    np.save(out, emb)
    return {"seconds_in_process": dt}


def method_kdsr(dataset: Path, out: Path, threads: int, overrides: list[str]) -> dict:
    from feature_store.config import EncodeConfig
    from feature_store.encode import run_encode
    from feature_store.store import FeatureStore
    from kdsr.config import load_config

    store = Path(tempfile.mkdtemp(prefix="kdsr-bench-")) / "minilm"
    cfg = load_config(EncodeConfig, CONFIG, [f"dataset={dataset}", f"output.path={store}", *overrides])
    summary = run_encode(cfg)
    np.save(out, FeatureStore.open(store).read_all())
    return {"seconds_in_process": summary["seconds"], "summary": summary}


# ---- the driver ------------------------------------------------------------------------------------
def run_method(method: str, dataset: Path, threads: int, overrides: list[str]) -> tuple[dict, np.ndarray]:
    import psutil

    out = Path(tempfile.mkdtemp(prefix="kdsr-bench-")) / f"{method}.npy"
    res = out.with_suffix(".json")
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_encode",
        "--method",
        method,
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--threads",
        str(threads),
        *[f"--set={o}" for o in overrides],
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed with exit code {proc.returncode}")
    info = json.loads(res.read_text())
    info.update(wall_s=wall, peak_rss_gib=peak / (1 << 30))
    return info, np.load(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def gpu_section(llm: str | None) -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["", "### LLM encoder on GPU", "", "not measured: no GPU in this session."]
    return [
        "",
        "### LLM encoder on GPU",
        "",
        f"`{llm}`: run `kdsr encode configs/encode/llm-8bit.yaml` on this machine and "
        "compare items/s with 2 x params x tokens / peak FLOP/s (not automated yet).",
    ]


def build_dataset(root: Path) -> Path:
    import polars as pl

    from kdsr.paths import data_dir

    items = pl.read_parquet(data_dir() / "amazon-beauty" / "items.parquet").sort("item_id")
    d = root / "beauty"
    d.mkdir(parents=True, exist_ok=True)
    items.select(
        pl.int_range(1, items.height + 1, dtype=pl.Int32).alias("item"),
        pl.col("item_id").cast(pl.Utf8).alias("original_id"),
        "title",
    ).write_parquet(d / "items.parquet")
    pl.DataFrame({"user": pl.Series([1], dtype=pl.Int32), "original_id": ["u"]}).write_parquet(d / "users.parquet")
    pl.DataFrame(
        {
            "user": pl.Series([1], dtype=pl.Int32),
            "item": pl.Series([1], dtype=pl.Int32),
            "timestamp": [0],
            "position": pl.Series([0], dtype=pl.Int32),
            "split": ["train"],
        }
    ).write_parquet(d / "interactions.parquet")
    (d / "stats.json").write_text(json.dumps({"name": "beauty"}))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["st", "hf", "kdsr"])
    ap.add_argument(
        "--dataset", type=Path, help="prepared dataset (default: runs/data/beauty, else built from the raw items)"
    )
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--set", action="append", default=[], help="override for the kdsr config, key=value")
    ap.add_argument("--llm", default="Qwen/Qwen2.5-7B")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update bench/results/encode.md")
    args = ap.parse_args()

    if args.method:  # child process
        fn = {"st": method_st, "hf": method_hf, "kdsr": lambda d, o, t: method_kdsr(d, o, t, args.set)}[args.method]
        args.out.with_suffix(".json").write_text(json.dumps(fn(args.dataset, args.out, args.threads)))
        return

    dataset = args.dataset or (REPO / "runs" / "data" / "beauty")
    if not (dataset / "items.parquet").exists():
        dataset = build_dataset(Path(tempfile.mkdtemp(prefix="kdsr-bench-")))
    st, ref = run_method("st", dataset, args.threads, [])
    hf, hf_emb = run_method("hf", dataset, args.threads, [])
    kd, kd_emb = run_method("kdsr", dataset, args.threads, args.set)
    n = ref.shape[0]
    rows = [
        ("sentence-transformers encode (batch 32)", st, None),
        ("transformers loop (fp32, batch 32, sorted)", hf, cosine(hf_emb, ref)),
        ("kdsr encode (Ray, whole job)", kd, cosine(kd_emb, ref)),
    ]
    kd_summary = kd["summary"]
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0]
    lines = [
        "## Encoding: Beauty titles with all-MiniLM-L6-v2",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPU cores ({cpu}), "
        f"torch {torch.__version__}, load average {load:.1f} at the end (other jobs share this machine); "
        f"{n} titles. Command: `.venv/bin/python -m bench.bench_encode`"
        + (f" with `{' '.join('--set=' + o for o in args.set)}`" if args.set else "")
        + ".",
        "",
        "| method | wall s (process) | s in process | items/s (wall) | speed-up vs ST | peak RSS GiB "
        "| min cosine to ST |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res, cos in rows:
        min_cos = "-" if cos is None else f"{cos.min():.5f}"
        lines.append(
            f"| {name} | {res['wall_s']:.1f} | {res['seconds_in_process']:.1f} | {n / res['wall_s']:.0f} | "
            f"{st['wall_s'] / res['wall_s']:.2f}x | {res['peak_rss_gib']:.2f} | {min_cos} |"
        )
    lines += [
        "",
        f"kdsr encode: plan `{kd_summary['plan']}`, start-up (Ray + actor + model load) "
        f"{kd_summary['startup_s']:.1f} s, steady state {kd_summary['steady_items_per_s']:.0f} items/s, "
        f"end to end {kd_summary['items_per_s']:.0f} items/s "
        f"(in-process, Ray start included); config {CONFIG.relative_to(REPO)}.",
    ]
    lines += gpu_section(args.llm)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
