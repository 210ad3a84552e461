# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing and
# install torch==2.13.0 first (see constraints.txt), then this package with its extras. Re-running is
# fast: the install is redone only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kdsr-installed
DATA   ?= ../shared/data
export KDSR_DATA_DIR ?= $(abspath $(DATA))
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install lint format test test-fast demo bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# ruff (lint + format check) and the layer contracts of pyproject.toml's [tool.importlinter]
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/kdsr pipeline configs/pipeline/beauty-minilm.yaml

bench: $(STAMP)
	$(PY) -m bench.run_all

# On a CUDA machine: the prepared GPU check (about 8 minutes on one GPU) -> bench/results/gpu.md
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check

clean:
	rm -rf runs .pytest_cache
