"""The documented 2-process command really starts two ranks that share one model (gloo on CPU)."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsr.paths import REPO_ROOT
from toydata import synthetic, toy_features


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "sampled_softmax"])  # sampled: sparse item-table gradients over gloo
def test_two_cpu_processes_train_one_model(tmp_path, loss):
    data = synthetic(tmp_path / "data", n_users=41, n_items=30)  # odd: rank 1 gets a padded shard
    feats = toy_features(data, tmp_path / "feat")
    cfg = {
        "dataset": str(data),
        "out_dir": str(tmp_path / "run"),
        "epochs": 2,
        "num_workers": 1,
        "progress": False,
        "model": {"hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 8},
        "modalities": [{"name": "text", "features": str(feats)}],
        "optim": {"batch_size": 8, "loss": loss},
        "eval": {"ks": [5, 10], "batch_size": 8},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    env["KDSR_TEST_PROCESS_REPORT"] = "1"  # the trainer's test hook: each rank writes processes/rank<i>.json
    cmd = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "-m",
        "jobs.train",
        str(tmp_path / "cfg.yaml"),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # INFO lines from the main process only; the run's summary printed once
    assert len(re.findall(r"epoch \d+: valid ndcg@10", proc.stderr)) == 2, proc.stderr[-3000:]
    assert proc.stderr.count("done: epoch") == 1, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["output"] == str(tmp_path / "run")
    ranks = [json.loads((tmp_path / "run" / "processes" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # one model, kept in sync
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["valid_history"]) == 2
    # both ranks' users were gathered, each exactly once: the rows after the gather (eval_users is counted
    # before sharding) equal the users, the padding duplicates dropped
    assert m["counts"]["eval_users"] == {"valid": 41, "test": 41}
    assert m["counts"]["eval_rows_gathered"] == {"valid": 41, "test": 41}
