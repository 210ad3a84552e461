"""`make bench`: every benchmark in one run on this machine, then bench/RESULTS.md from their result files.

    python -m bench.run_all                 # inputs, encode, train overhead, RecBole peer, dissect at 1M x 4096
    python -m bench.run_all --quick         # dissect scale at 100k x 4096 instead (minutes, not half an hour)
    python -m bench.run_all --only encode train
    python -m bench.run_all --collect       # only rebuild RESULTS.md from bench/results/*.md

Each benchmark writes its own bench/results/<name>.md with the date, command and machine it ran on, so
RESULTS.md never mixes a number with the wrong provenance. Run it on a quiet machine: timings taken while
other jobs share the cores are not comparable.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
KDSR = [sys.executable, "-m", "jobs.cli"]

# name -> (result file, command); in the order they run and appear in RESULTS.md
BENCHES = {
    "encode": ("encode.md", [sys.executable, "-m", "bench.bench_encode"]),
    "train": ("train.md", [sys.executable, "bench/bench_train.py", "--epochs", "2"]),
    # RecBole 2 epochs (~10 min on 2 cores) with validation, ours up to 10: epoch speed and time to equal quality
    "peers": (
        "peers_train.md",
        [sys.executable, "bench/bench_peers_train.py", "--epochs", "0", "--full-epochs", "2", "--ours-epochs", "10"],
    ),
    "dissect": ("dissect.md", [sys.executable, "bench/bench_dissect.py"]),
    # 1M-item catalog: generate, prepare, import, dissect, one epoch; plus where the full softmax stops fitting
    "scale": ("scale.md", [sys.executable, "-m", "bench.bench_scale", "--ce-limit"]),
    "train-losses": ("train.md", [sys.executable, "bench/bench_train.py", "--losses", "--epochs", "2"]),
    # using a run: loopback load on `kdsr serve`, the Python API floor, `kdsr recommend` in process vs over Ray
    "serve": ("serve.md", [sys.executable, "-m", "bench.bench_serve"]),
    "faults": ("faults.md", None),  # bench/bench_faults.py: SIGKILL at random moments, resume, compare (~30 min)
    "gpu": ("gpu.md", None),  # make gpu-check, on a CUDA machine
    "quality": ("quality.md", None),  # kdsr sweep configs/sweep/beauty-arms.yaml: hours on 2 cores, run alone
    # kdsr sweep configs/sweep/scientific-arms.yaml report=bench/results/quality-scientific.md (~20 min)
    "quality-scientific": ("quality-scientific.md", None),
    # kdsr sweep configs/sweep/beauty-variants.yaml: beauty-arms plus variants, reusing its trials
    "quality-variants": ("quality-variants.md", None),
    # the released protocol (ratio split, one case per test item): two kdsr train runs, by hand (the file says how)
    "quality-ratio": ("quality-ratio.md", None),
    # kdsr sweep configs/sweep/amazon-books-arms.yaml (Books, the configuration Beauty chose; ~2 h per trial here)
    "quality-books": ("quality-books.md", None),
    # kdsr sweep configs/sweep/beauty-graph.yaml (the released graph backbone on Beauty; ~30 s per epoch here)
    "quality-graph": ("quality-graph.md", None),
    # kdsr sweep configs/sweep/beauty-encoders.yaml (MiniLM vs MPNet on Beauty; the MiniLM trials reused)
    "quality-encoders": ("quality-encoders.md", None),
    # kdsr sweep configs/sweep/ml-1m-arms.yaml (ML-1M, the configuration Beauty chose; about 2 min per epoch here)
    "quality-ml-1m": ("quality-ml-1m.md", None),
    # earlier studies (bench/run_quality.py, replaced by `kdsr sweep`; configs/sweep/ holds the studies now)
    "quality-8epochs": ("quality-8epochs.md", None),  # the 8-epoch study of 2026-11-26 (and Scientific-mm)
    "quality-long": ("quality-long.md", None),  # longer budget, fused vs distilled
    "quality-ablations": ("quality-ablations.md", None),  # SASRec ablations and why-probes, more seeds
    "quality-backbones": ("quality-backbones.md", None),  # GRU4Rec / BERT4Rec: ID only, fused, distilled
    "quality-ae": ("quality-ae.md", None),  # the same SASRec pair on autoencoder-reduced features
    "quality-reading": ("quality_reading.md", None),  # by hand: what the quality runs say
    "quality-reading-8epochs": ("quality_reading-8epochs.md", None),  # by hand: the 8-epoch study's reading
    "recbole": ("recbole.md", None),  # bench/recbole_sasrec.py notes from its first measurement
}


def run(cmd: list[str]) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def ensure_inputs() -> None:
    """The Beauty dataset, its MiniLM store and the dissection: cached, so cheap when already there."""
    run([*KDSR, "prepare", "configs/prepare/beauty.yaml"])
    run([*KDSR, "encode", "configs/encode/beauty-minilm.yaml"])
    if not (REPO / "runs/features/beauty/text/minilm.dissect.zarr").exists():
        run([*KDSR, "dissect", "configs/dissect/beauty-minilm.yaml"])


def collect() -> Path:
    parts = [
        "# Benchmark results",
        "",
        f"Assembled {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make bench` (`python -m bench.run_all`)",
        "from the files in [bench/results/](results/). Each section states when, where and with which command its",
        'numbers were measured; goals are in docs/METHOD.md, "Performance targets".',
        "",
    ]
    seen: set[str] = set()
    for name, (file, _) in BENCHES.items():
        path = RESULTS / file
        if file in seen:  # two benchmarks write sections of one file
            continue
        seen.add(file)
        if path.exists():
            text = path.read_text().strip()
            # shift headings so each file's top heading is a section (##) of this page
            levels = [len(line) - len(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")]
            shift = 2 - min(levels, default=2)
            text = "\n".join(
                ("#" * (len(line) - len(line.lstrip("#")) + shift) + line.lstrip("#")) if line.startswith("#") else line
                for line in text.splitlines()
            )
            # links between result files are relative to bench/results/; this page sits one level up
            text = re.sub(r"\]\((?!https?:|/|#|results/)([^)]+)\)", r"](results/\1)", text)
            parts += [text, ""]
        else:
            parts += [f"## {name}", "", f"Not measured yet (`bench/results/{file}` is missing).", ""]
    out = REPO / "bench" / "RESULTS.md"
    out.write_text("\n".join(parts))
    print(f"wrote {out}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=[k for k, (_, c) in BENCHES.items() if c])
    ap.add_argument("--quick", action="store_true", help="dissect scale at 100k rows instead of 1M")
    ap.add_argument("--collect", action="store_true", help="only rebuild RESULTS.md")
    args = ap.parse_args()
    if not args.collect:
        ensure_inputs()
        for name, (_, cmd) in BENCHES.items():
            if cmd is None or (args.only and name not in args.only):
                continue
            if name == "dissect":
                cmd = [*cmd, "--beauty-store", "runs/features/beauty/text/minilm"]
                if args.quick:
                    cmd += ["--rows", "100000"]
            run(cmd)
    collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
