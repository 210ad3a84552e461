"""Kill tests: SIGKILL at random moments, resume, and compare with an uninterrupted run.

    python -m bench.bench_faults [--kills 10] [--seed 0] [--only encode train pipeline]

- encode: Beauty's 12,086 titles with MiniLM on an embedded Ray, killed `--kills` times (the job and every Ray
  process it started) at random moments, then run to the end; the store must equal an uninterrupted encode bit for
  bit (embeddings, mask, errors), every item present once.
- train: SASRec (ID only) on Beauty, 2 epochs, a checkpoint every 25 steps, killed `--kills` times: once inside
  the checkpoint swap (KDSR_TEST_KILL_IN_SWAP, between `last -> last.old` and `tmp -> last`), the others at
  random moments; the final metrics must equal an uninterrupted run's exactly.
- pipeline: the ml-100k pipeline killed after each stage it finishes, rerun each time; its comparison table must
  equal an uninterrupted pipeline's.

Not part of `make test` (about 15 minutes on 2 cores). Writes bench/results/faults.md and faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench._runs import REPO, derive, kill_session
from kdsr.files import write_json_atomic, write_text_atomic

WORK = REPO / "runs" / "bench" / "faults"


def env(**extra: str) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def start(args: list[str], log: Path, **extra: str) -> subprocess.Popen:
    with open(log, "a") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=REPO,
            env=env(**extra),
            stdout=f,
            stderr=f,
            start_new_session=True,
        )


def run(args: list[str], log: Path, **extra: str) -> float:
    t = time.perf_counter()
    proc = start(args, log, **extra)
    if proc.wait() != 0:
        raise RuntimeError(f"kdsr {' '.join(args)} failed; see {log}")
    return time.perf_counter() - t


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)  # under runs/bench/faults: written by this benchmark
    return path


def killed_until_done(args: list[str], log: Path, kills: int, window: tuple[float, float], rng, done) -> dict:
    """Start, kill at a random moment in `window` seconds, repeat until `kills` kills landed on a running job,
    then run to the end. `done()` says whether the output is complete (a kill that came too late is no kill)."""
    landed, late = 0, 0
    while landed < kills and not done():
        proc = start(args, log)
        time.sleep(rng.uniform(*window))
        if kill_session(proc):
            landed += 1
        else:
            late += 1
    finished = done()
    if not finished:
        run(args, log)
    return {"kills": landed, "finished_before_a_kill": late, "resumed_to_the_end": not finished}


def encode_section(work: Path, kills: int, rng) -> dict:
    from feature_store.store import FeatureStore

    data = "runs/data/beauty"
    common = [
        "encode",
        "configs/encode/beauty-minilm.yaml",
        f"dataset={data}",
        "output.shard_size=256",
        "resources.num_actors=1",
        "resources.torch_threads=2",
    ]
    clean, killed = work / "encode-clean", fresh(work / "encode-killed")
    if not (clean.exists() and FeatureStore.open(clean).is_complete()):
        fresh(clean)
        seconds = run([*common, f"output.path={clean}"], work / "encode-clean.log")
    else:
        seconds = None

    def done() -> bool:
        return killed.exists() and (killed / "zarr.json").exists() and FeatureStore.open(killed).is_complete()

    result = killed_until_done(
        [*common, f"output.path={killed}"], work / "encode-killed.log", kills, (2, 45), rng, done
    )
    a, b = FeatureStore.open(clean), FeatureStore.open(killed)
    b.check_items(a.item_ids())
    same = {
        "embeddings": bool(np.array_equal(np.asarray(a.embeddings[:]), np.asarray(b.embeddings[:]))),
        "mask": bool(np.array_equal(a.mask(), b.mask())),
        "errors": list(a.errors()) == list(b.errors()),
    }
    runs = b.attrs.get("encode_runs", [])
    shards = [s for r in runs for s in r["shards"]]
    return {
        **result,
        "clean_seconds": seconds,
        "items": a.n_items,
        "identical": same,
        "shards_encoded_twice": len(shards) - len(set(shards)),
    }


def train_section(work: Path, kills: int, rng) -> dict:
    cfg = derive("configs/train/beauty-sasrec.yaml", work / "train.yaml", "runs/data/beauty")
    common = ["train", str(cfg), "epochs=2", "checkpoint_every=25", "num_workers=0", "progress=false"]
    clean, killed = work / "train-clean", work / "train-killed"
    if not (clean / "metrics.json").exists() or not json.loads((clean / "metrics.json").read_text()).get("test"):
        fresh(clean)
        run([*common, f"out_dir={clean}"], work / "train-clean.log")
    record = work / "train-killed.json"  # the kill phase's record: a rerun of the bench reuses a finished one
    if record.exists() and (killed / "metrics.json").exists():
        result = json.loads(record.read_text())
    else:
        fresh(killed)
        args = [*common, f"out_dir={killed}"]
        proc = start(args, work / "train-killed.log", KDSR_TEST_KILL_IN_SWAP="2")  # the worst moment, deliberately
        proc.wait()
        in_swap = proc.returncode == -signal.SIGKILL
        swap_state = sorted(p.name for p in (killed / "checkpoints").iterdir())  # last.old and tmp, no `last`

        def done() -> bool:
            m = killed / "metrics.json"
            return m.exists() and bool(json.loads(m.read_text()).get("test"))

        result = killed_until_done(args, work / "train-killed.log", kills - 1, (3, 40), rng, done)
        result |= {"kills": result["kills"] + int(in_swap), "killed_inside_the_swap": in_swap}
        result["checkpoints_after_the_swap_kill"] = swap_state
        write_json_atomic(record, result)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (clean, killed))
    metric = [k for k in a["valid_history"][0] if k.split("@")[0] in ("ndcg", "hr", "mrr", "recall")]
    same_valid = [{k: h[k] for k in metric} for h in a["valid_history"]] == [
        {k: h[k] for k in metric} for h in b["valid_history"]
    ]
    losses = [(x[k], y[k]) for x, y in zip(a["valid_history"], b["valid_history"]) for k in x if k.startswith("loss/")]
    return {
        **result,
        "identical": {"test": a["test"] == b["test"], "valid_metrics_per_epoch": same_valid},
        "logged_epoch_loss_max_relative_difference": max((abs(x - y) / abs(x) for x, y in losses), default=0.0),
        "test": b["test"],
    }


def pipeline_section(work: Path) -> dict:
    pipe = {
        "name": "faults",
        "prepare": {"config": "configs/prepare/ml-100k.yaml"},
        "encode": {"config": "configs/encode/beauty-minilm.yaml", "overrides": ["encoder.template={movie_title}"]},
        "dissect": {"config": "configs/dissect/beauty-minilm.yaml", "overrides": ["codebook.n_codes=8"]},
        "train": [
            {"label": "ID only", "config": "configs/train/beauty-sasrec.yaml"},
            {"label": "distilled", "config": "configs/train/beauty-sasrec-kd.yaml"},
        ],
        "train_overrides": ["epochs=2", "progress=false", "model.hidden=32", "num_workers=0"],
    }
    results = {}
    record = work / "pipeline-killed.json"  # kills of a finished killed pipeline: a rerun of the bench reuses both
    for name in ("clean", "killed"):
        done = work / f"pipeline-{name}" / "out" / "comparison.json"
        if done.exists() and record.exists():
            results[name] = {"comparison": json.loads(done.read_text()), "kills": json.loads(record.read_text())[name]}
            continue
        root = fresh(work / f"pipeline-{name}")
        root.mkdir(parents=True)
        cfg = json.loads(json.dumps(pipe))
        cfg["out_dir"] = str(root / "out")
        cfg["prepare"]["overrides"] = [f"output_dir={root}/data"]
        cfg["encode"]["overrides"].append(f"output.path={root}/minilm")
        cfg["dissect"]["overrides"].append(f"output={root}/minilm.dissect.zarr")
        for t, slug in zip(cfg["train"], ("id", "kd")):
            t["overrides"] = [f"out_dir={root}/out/{slug}"]
        path = root / "pipeline.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = root / "pipeline.log"
        kills = 0
        if name == "killed":  # kill as soon as each stage is recorded done, rerun
            record = root / "out" / "stages.json"
            for n_done in range(1, 5):
                proc = start(["pipeline", str(path)], log)
                while proc.poll() is None:
                    if record.exists() and len(json.loads(record.read_text())) >= n_done:
                        kills += kill_session(proc)
                        break
                    time.sleep(0.2)
        run(["pipeline", str(path)], log)
        results[name] = {"comparison": json.loads((root / "out" / "comparison.json").read_text()), "kills": kills}
    write_json_atomic(record, {n: r["kills"] for n, r in results.items()})
    # the rows' metrics; their run folder and seconds per epoch differ by construction
    strip = lambda rows: [{k: v for k, v in r.items() if k != "run" and "sec" not in k} for r in rows]  # noqa: E731
    same = strip(results["clean"]["comparison"]) == strip(results["killed"]["comparison"])
    return {"kills": results["killed"]["kills"], "identical": {"comparison": same}}


def report(fig: dict) -> str:
    def ok(section: dict) -> str:
        return "yes" if all(section["identical"].values()) else "**no**"

    lines = [
        "# Kill tests: SIGKILL, resume, compare with an uninterrupted run",
        "",
        f"Verified as of {fig['date']} with `python -m bench.bench_faults --kills {fig['kills']} --seed {fig['seed']}`",
        "on",
        f"{fig['machine']}. Each kill is a SIGKILL of the job's whole process session (Ray's processes included).",
        "Kill moments: uniform in 2-45 s (encode) and 3-40 s (train) after each start; the pipeline is killed as soon",
        "as each stage is recorded done. Correctness only: no timing here is a benchmark figure.",
        "",
        "| stage | kills that landed | then resumed to the end | identical to the uninterrupted run | detail |",
        "|---|---|---|---|---|",
    ]
    if "encode" in fig:
        e = fig["encode"]
        detail = f"{e['items']:,} items; embeddings/mask/errors equal: {e['identical']}; shards encoded twice: "
        detail += str(e["shards_encoded_twice"])
        lines.append(f"| encode (Beauty, MiniLM) | {e['kills']} | {e['resumed_to_the_end']} | {ok(e)} | {detail} |")
    if "train" in fig:
        t = fig["train"]
        left = t["checkpoints_after_the_swap_kill"]
        detail = f"one kill inside the checkpoint swap: {t['killed_inside_the_swap']} (left {left}); "
        detail += f"test NDCG@10 {t['test']['ndcg@10']:.6f}, HR@10 {t['test']['hr@10']:.6f} in both; valid metrics per "
        detail += "epoch equal; the logged epoch-mean loss differs by at most "
        detail += f"{t['logged_epoch_loss_max_relative_difference']:.1e} (relative): float rounding of the resumed sums"
        lines.append(
            f"| train (SASRec, Beauty, 2 epochs) | {t['kills']} | {t['resumed_to_the_end']} | {ok(t)} | {detail} |"
        )
    if "pipeline" in fig:
        p = fig["pipeline"]
        lines.append(
            f"| pipeline (ml-100k), killed after each stage | {p['kills']} | True | {ok(p)} | comparison.json rows |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only", nargs="+", choices=["encode", "train", "pipeline"], default=["encode", "train", "pipeline"]
    )
    ap.add_argument("--work", type=Path, default=WORK)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if not (REPO / "runs/data/beauty/stats.json").exists():
        run(["prepare", "configs/prepare/beauty.yaml"], args.work / "prepare.log")
    rng = random.Random(args.seed)
    path = REPO / "bench" / "results" / "faults.json"
    fig = json.loads(path.read_text()) if path.exists() else {}
    fig |= {"date": time.strftime("%Y-%m-%d"), "kills": args.kills, "seed": args.seed}
    fig["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    for section in args.only:
        t = time.perf_counter()
        if section == "encode":
            fig["encode"] = encode_section(args.work, args.kills, rng)
        elif section == "train":
            fig["train"] = train_section(args.work, args.kills, rng)
        else:
            fig["pipeline"] = pipeline_section(args.work)
        fig[section]["bench_seconds"] = round(time.perf_counter() - t)
        print(section, json.dumps(fig[section]), flush=True)
        write_json_atomic(path, fig)
    write_text_atomic(REPO / "bench" / "results" / "faults.md", report(fig))
    print((REPO / "bench" / "results" / "faults.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
