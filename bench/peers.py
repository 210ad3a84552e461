"""Peers run in their own environments: build the environment, run the peer's script, read back its JSON.

Called from bench/run_all.py (in .venv); nothing here imports a peer's package.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RECBOLE_ENV = BENCH / "recbole_env.sh"
RECBOLE_PY = BENCH / ".env" / "bin" / "python"
RECBOLE_SCRIPT = BENCH / "recbole_sasrec.py"


def ensure_recbole_env() -> Path:
    """Create bench/.env when missing (minutes, once; seconds when it is already there)."""
    subprocess.run(["bash", str(RECBOLE_ENV)], check=True)
    return RECBOLE_PY


def _flags(kw: dict) -> list[str]:
    """{"hidden_size": 64, "keep_tmp": True} -> ["--hidden-size", "64", "--keep-tmp"]; None and False are left out."""
    out = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out


def run_recbole_sasrec(data_dir: str | Path, out_json: str | Path, timeout: float | None = None, **kw) -> dict:
    """RecBole 1.2.1's SASRec on a kdsr prepared dataset; kw are bench/recbole_sasrec.py's flags with
    underscores (hidden_size=64, layers=2, heads=2, batch=256, lr=1e-3, dropout=0.2, timing_epochs=2,
    epochs=0, stopping_step=10, seed=42, threads=None, device="auto"). Returns the script's JSON."""
    python = ensure_recbole_env()
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.unlink(missing_ok=True)  # never read back a stale result
    cmd = [str(python), str(RECBOLE_SCRIPT), "--data", str(Path(data_dir).resolve()), "--out", str(out_json.resolve())]
    proc = subprocess.run(cmd + _flags(kw), stdout=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{RECBOLE_SCRIPT.name} failed with exit code {proc.returncode} on {data_dir} "
            f"(its log is on stderr above): {' '.join(cmd + _flags(kw))}"
        )
    if not out_json.exists():
        raise RuntimeError(f"{RECBOLE_SCRIPT.name} exited 0 but wrote no {out_json}")
    return json.loads(out_json.read_text())
