"""End-to-end Ray behaviour: SIGKILL part way + resume, `ray job submit` to a local head, images via Ray.

Small catalogs (the real Beauty titles, first few hundred items), each test starts its own Ray.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_encode import CONFIG, make_prepared  # noqa: E402 (tests/ is on sys.path under pytest)

from bench._runs import kill_session
from feature_store.store import FeatureStore
from jobs import encode as encode_job
from kdsr.paths import REPO_ROOT

pytestmark = pytest.mark.slow
VENV_BIN = str(Path(sys.executable).parent)


def _env() -> dict:
    return {
        **os.environ,
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_AUTH_MODE": "token",
    }  # Ray 2.60 heads want a token; the CLI sends ~/.ray/auth_token only in token mode


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, data_dir, capsys):
    ds = make_prepared(tmp_path / "beauty", data_dir, limit=1200)
    out = tmp_path / "store"
    args = [
        CONFIG,
        f"dataset={ds.path}",
        f"output.path={out}",
        "output.shard_size=50",
        "encoder.batch_size=16",
        "resources.torch_threads=1",
        "progress_every_s=1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.encode", *args],
        cwd=REPO_ROOT,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done_before: list[int] = []
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "shards_done" / "zarr.json").exists():
            done = np.flatnonzero(FeatureStore.open(out).group["shards_done"][:])
            if len(done) >= 3:
                kill_session(proc)
                break
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGKILL, "the job finished (or failed) before it could be killed part way"
    store = FeatureStore.open(out)
    done_before, pending = np.flatnonzero(store.group["shards_done"][:]).tolist(), store.pending_shards()
    assert done_before and pending and "encode_runs" not in store.attrs

    capsys.readouterr()
    assert encode_job.main(args) == 0
    # progress lines (rate, ETA) every progress_every_s, and why a starved encode is slow, not hung
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "feature_store.encode: encode: " in line]
    assert lines and all("items/s, ETA" in line and "errors" in line for line in lines), err[-3000:]
    assert lines[-1].rsplit("encode: ", 1)[1].startswith(f"{len(pending) * 50:,}/{len(pending) * 50:,} items (100%)")
    if os.nice(0) < 19:  # Ray's workers start at nice 15 (capped at 19): below a driver at a higher priority
        assert "Ray runs the encode's workers at nice" in err and "RAY_worker_niceness=0" in err
    store = FeatureStore.open(out)
    store.check_items(ds.item_original_ids())
    (run,) = store.attrs["encode_runs"]  # the killed run never finished
    assert run["shards"] == pending and not set(run["shards"]) & set(done_before)  # no shard encoded twice

    # an uninterrupted encode of the same shards, same batches, same threads
    import torch

    from feature_store.config import EncoderConfig
    from feature_store.models import load_model, resolve_model
    from feature_store.text import TextEmbedder

    torch.set_num_threads(1)
    cfg = EncoderConfig(**{**yaml.safe_load(Path(CONFIG).read_text())["encoder"], "batch_size": 16})
    emb = TextEmbedder(*load_model(cfg, resolve_model(cfg.model)), cfg)
    titles = ds.items.sort("item")["title"].to_list()
    want = np.concatenate([emb.embed(titles[a : a + 50]) for a in range(0, len(titles), 50)])
    np.testing.assert_allclose(store.read_all(), want, atol=1e-6, rtol=0)
    assert store.mask().all()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_ray_job_submit_to_a_local_head(tmp_path, data_dir):
    ds = make_prepared(tmp_path / "beauty", data_dir, limit=200)
    out = tmp_path / "store"
    gcs, dash, client, agent, agent_grpc, metrics, rt_env, node, obj = _free_ports(9)
    head = subprocess.Popen(
        [
            f"{VENV_BIN}/ray",
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--num-gpus=0",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={rt_env}",
            f"--node-manager-port={node}",
            f"--object-manager-port={obj}",
            f"--temp-dir={tempfile.mkdtemp(prefix='/tmp/kr')}",
        ],
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:  # 401 without a token: the dashboard is up
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, "the Ray head did not come up"
                time.sleep(1)
        sub = subprocess.run(
            [
                f"{VENV_BIN}/ray",
                "job",
                "submit",
                f"--address={address}",
                "--working-dir",
                ".",
                "--",
                "python",
                "-m",
                "jobs.encode",
                CONFIG,
                f"dataset={ds.path}",
                f"output.path={out}",
                "output.shard_size=64",
            ],
            cwd=REPO_ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        assert "encode done: 200 items, 0 errors" in sub.stdout + sub.stderr
    finally:
        kill_session(head, signal.SIGTERM)
    store = FeatureStore.open(out)
    store.check_items(ds.item_original_ids())
    assert store.mask().all() and store.attrs["encode_runs"][0]["items"] == 200


def test_images_through_ray_record_broken_ones(tmp_path, data_dir):
    import transformers
    from PIL import Image

    vit = tmp_path / "vit"
    transformers.ViTModel(
        transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(vit)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    img = tmp_path / "img"
    img.mkdir()
    rng = np.random.default_rng(0)
    refs = []
    for i in range(12):
        if i == 3:
            refs.append(str(img / "gone.jpg"))
        elif i == 7:
            (img / "bad.jpg").write_bytes(b"GIF89a broken")
            refs.append(str(img / "bad.jpg"))
        elif i == 9:
            refs.append(None)
        else:
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(img / f"{i}.png")
            refs.append(f"../img/{i}.png")  # relative to the dataset folder
    ds = make_prepared(tmp_path / "beauty", data_dir, limit=12, extra={"image": refs})
    cfg = {
        "dataset": str(ds.path),
        "encoder": {"modality": "image", "model": str(vit), "pooling": "cls", "batch_size": 4},
        "output": {"path": str(tmp_path / "store"), "dtype": "float16", "shard_size": 5},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert encode_job.main([str(tmp_path / "c.yaml")]) == 0
    store = FeatureStore.open(tmp_path / "store")
    assert [r for r, _ in store.errors()] == [3, 7, 9]
    reasons = dict(store.errors())
    assert "missing image file" in reasons[3] and "unreadable image" in reasons[7] and reasons[9] == "no image"
    assert store.mask().sum() == 9 and store.attrs["encode_runs"][0]["errors"] == 3
    np.testing.assert_allclose(np.linalg.norm(store.read_all()[store.mask()], axis=1), 1.0, atol=2e-3)
