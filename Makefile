# msk-triton — the command contract: `make setup`, `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
PYTRITON_PIN := nvidia-pytriton==0.7.0

TEST_STAMP := $(VENV)/.test-setup-stamp
# The wheels of the client part (and the project's build tools), downloaded once by `make
# setup-test`: tests/test_install_parts.py installs the part into a fresh venv from here, offline.
WHEELHOUSE := .cache/wheelhouse
WHEELHOUSE_STAMP := $(WHEELHOUSE)/.stamp

.PHONY: setup setup-test lock demo test lint proof-mura proof-wrist bench clean

# `make setup`: what the main job needs, nothing else. No Debian package: tritonserver comes
# from PyPI's nvidia-pytriton wheel, and the demo needs no PACS, browser or Prometheus.
setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Everything pinned in requirements.lock, installed without a resolver run (fast, reproducible).
	$(BIN)/pip install -q --no-deps -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	# Only the tritonserver binary is needed, not pytriton's Python API or its pins.
	$(BIN)/pip install -q --no-deps $(PYTRITON_PIN)
	$(BIN)/msk doctor
	touch $(STAMP)

# `make setup-test`: what the tests add: the Debian packages they talk to (Orthanc, dcmtk,
# dicom3tools, Prometheus, Chromium, ...) and the test tools (requirements-test.lock).
setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.lock scripts/install_test_packages.sh $(WHEELHOUSE_STAMP)
	bash scripts/install_test_packages.sh
	$(BIN)/pip install -q --no-deps -r requirements-test.lock
	touch $(TEST_STAMP)

$(WHEELHOUSE_STAMP): locks/client.lock pyproject.toml
	$(BIN)/pip download -q --no-deps -d $(WHEELHOUSE) -r locks/client.lock \
	  $$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')
	touch $(WHEELHOUSE_STAMP)

# Re-pin every lock file (requirements.lock, requirements-test.lock, locks/<part>.lock) after
# changing a part's dependencies in pyproject.toml (needs PyPI access): scripts/lock.py is their
# only writer.
lock:
	$(BIN)/pip install -q uv
	$(BIN)/python scripts/lock.py --uv $(BIN)/uv

demo: setup
	$(BIN)/msk demo

test: setup setup-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup-test
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
