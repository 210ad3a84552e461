#!/usr/bin/env bash
# Creates bench/.env: a bench-only venv with RecBole 1.2.1, kept apart from .venv because RecBole needs
# numpy < 2, pandas < 2.3 and setuptools < 70. Idempotent: when the stamp is there and RecBole imports, it
# exits at once. Usage: bash bench/recbole_env.sh   (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV="$ROOT/bench/.env"
PY="$ENV/bin/python"
STAMP="$ENV/.recbole-installed"
PYTHON="${PYTHON:-python3}"

check() { "$PY" -c "from recbole.config import Config; import pyarrow" 2>/dev/null; }

if [[ -f "$STAMP" ]] && check; then
    exit 0
fi

echo "recbole_env: creating $ENV" >&2
test -x "$PY" || "$PYTHON" -m venv "$ENV"
"$PY" -m pip install -q --upgrade pip
# Order matters (verified): torch alone first, so pip takes the CPU wheel; setuptools<70 last and without
# deps, since resolving it together with torch conflicts.
"$PY" -m pip install -q torch==2.13.0
# pyarrow: recbole_sasrec.py reads the prepared dataset's parquet files with pandas; pyarrow >= 20 needs
# numpy >= 2 at import time.
"$PY" -m pip install -q -c "$ROOT/constraints.txt" recbole==1.2.1 "numpy<2" "pandas<2.3" "pyarrow<20"
"$PY" -m pip install -q --no-deps "setuptools<70"

if ! check; then
    echo "recbole_env: $ENV was built but 'from recbole.config import Config' (or pyarrow) fails to import" >&2
    "$PY" -c "from recbole.config import Config; import pyarrow" >&2 || true
    exit 1
fi
"$PY" -c "import recbole, torch, numpy, pandas; print('recbole_env: recbole', recbole.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)" >&2
touch "$STAMP"
