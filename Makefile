# msk-triton — the command contract: `make setup`, `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
PYTRITON_PIN := nvidia-pytriton==0.7.0

.PHONY: setup lock demo test lint proof-mura proof-wrist bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock scripts/install_system_packages.sh Makefile
	bash scripts/install_system_packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Everything pinned in requirements.lock, installed without a resolver run (fast, reproducible).
	$(BIN)/pip install -q --no-deps -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	# Only the tritonserver binary is needed, not pytriton's Python API or its pins.
	$(BIN)/pip install -q --no-deps $(PYTRITON_PIN)
	$(BIN)/msk doctor
	touch $(STAMP)

# Re-pin requirements.lock after changing dependencies (needs network access to PyPI).
lock:
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra test -c constraints.txt --python-version 3.11 \
	  --extra-index-url file:///opt/pypi/simple --extra-index-url file:///opt/pypi-more/simple \
	  --index-strategy unsafe-best-match --no-emit-package opencv-python --no-header \
	  --no-annotate -o requirements.lock

demo: setup
	$(BIN)/msk demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

proof-mura: setup
	$(BIN)/python bench/proof_mura.py

proof-wrist: setup
	$(BIN)/python bench/proof_wrist.py

# Serving benchmarks (each prints ratios against a baseline measured in the same run).
bench: setup
	$(BIN)/msk export --repository model_repository
	$(BIN)/python bench/bench_mura.py --repository model_repository
	$(BIN)/python bench/bench_batch.py
	$(BIN)/python bench/bench_wrist.py

clean:
	rm -rf .cache runs artifacts samples test-artifacts model_repository/manifest.json
	find model_repository -mindepth 2 -maxdepth 2 -type d -name '[0-9]*' -exec rm -rf {} +
