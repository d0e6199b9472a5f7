# msk-triton — the command contract: `make setup`, `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTRITON_PIN := nvidia-pytriton==0.7.0

.PHONY: setup demo test lint proof-mura proof-wrist bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_system_packages.sh Makefile
	bash scripts/install_system_packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	# Only the tritonserver binary is needed, not pytriton's Python API or its pins.
	$(BIN)/pip install -q --no-deps $(PYTRITON_PIN)
	# Ultralytics pulls the GUI OpenCV (needs libGL); swap to headless (order matters, see FACTS).
	-$(BIN)/pip uninstall -q -y opencv-python
	$(BIN)/pip install -q -c constraints.txt --force-reinstall --no-deps opencv-python-headless
	$(BIN)/msk doctor
	touch $(STAMP)

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

clean:
	rm -rf .cache runs artifacts samples test-artifacts
	find model_repository -mindepth 2 -maxdepth 2 -type d -name '[0-9]*' -exec rm -rf {} +
