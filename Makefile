# Every target sets itself up on a fresh machine: it creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
DATA ?= ../shared/data

.PHONY: run test lint test-reliability demo bench train evaluate predict-samples clean-state setup setup-dev

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# The worker: no torch, no MONAI.
$(VENV)/.worker: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Development: training extra (torch) and test tools.
$(VENV)/.dev: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,test]'
	touch $@ $(VENV)/.worker

setup: $(VENV)/.worker
setup-dev: $(VENV)/.dev

## The main job: the node with the bundled model and embedded defaults (SQLite, local spool, outbox in ./var).
run: $(VENV)/.worker
	$(BIN)/cxr-triage serve

## Style and types: ruff over the tree, mypy (strict on the worker's packages), the import rules.
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python .ci/typecheck.py
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

## The whole test suite (real dcmtk, Orthanc, dicom3tools peers; see .ci/run for the Debian packages), after lint.
test: lint
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-reliability: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m reliability; rc=$$?; if [ $$rc -eq 5 ]; then echo "no reliability tests collected: failing"; exit 1; fi; exit $$rc

## Triage the sample DICOM films offline.
predict-samples: $(VENV)/.worker
	$(BIN)/cxr-triage predict $(DATA)/dicom/*.dcm

## Send the sample films to a running node (make run) and print each study's decision.
demo: $(VENV)/.worker
	$(BIN)/python -m cxr_triage.dicom_node.tools.demo $(DATA)/dicom

## Reproduce the bundled model (CPU, under 60 minutes on 2 cores).
train: $(VENV)/.dev
	$(BIN)/python -m cxr_triage.training.make_default --data $(DATA) --out runs/default

evaluate: $(VENV)/.dev
	$(BIN)/python -m cxr_triage.evaluation.bundled_report --data $(DATA) --out runs/report

bench: $(VENV)/.dev
	$(BIN)/python bench/run_all.py

clean-state:
	rm -rf var
