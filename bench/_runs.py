"""Shared by the training benchmarks: derive a config with local paths, run the trainer in a subprocess
(so each run's peak memory is its own), read its metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def derive(config: str, out: Path, dataset: str | None = None, features: dict[str, str] | None = None) -> Path:
    """A copy of `config` with the dataset and per-modality feature paths replaced (None: keep)."""
    raw = yaml.safe_load((REPO / config).read_text())
    if dataset:
        raw["dataset"] = dataset
    for m in raw.get("modalities", []):
        if features and m["name"] in features:
            m["features"] = features[m["name"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def train(config: Path, overrides: list[str], log: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.train", str(config), "progress=false", *overrides],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}); see {log}")
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("out_dir="))
    m = json.loads((Path(out) / "metrics.json").read_text())
    m["wall_seconds"] = time.perf_counter() - t
    return m


def kill_session(proc: subprocess.Popen, sig: int = 9) -> bool:
    """Signal (SIGKILL by default) the process group of `proc` (started with start_new_session: the job and the
    Ray processes it spawned), then kill anything left in its session; nothing outside it. True if the job was
    still running."""
    import psutil

    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == proc.pid:
                p.kill()
        except (ProcessLookupError, psutil.Error, PermissionError):
            pass
    return alive
