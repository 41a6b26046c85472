# genlab: the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# offline hygiene: no telemetry from DVC (see .dvc/config), MLflow, Prefect or the HF hub
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: run test install lint flow serve ui clean-outputs

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.stamp-base

## run: install, then reproduce the whole pipeline on the embedded digits data
run: $(VENV)/.stamp-base
	dvc repro
	@echo
	@echo "results: reports/comparison.md (table), metrics/*.json, samples/*.png (grids), models/*/"
	@echo "compare: dvc metrics show | dvc plots show | make ui (MLflow at http://127.0.0.1:5000)"
	@cat reports/comparison.md

## test: install with test extras, lint, run the test suite (slow tests excluded: pytest -m slow)
test: $(VENV)/.stamp-test
	ruff check src flows tests bench
	pytest

lint: $(VENV)/.stamp-test
	ruff check src flows tests bench

## flow: run the pipeline once as a Prefect flow (through DVC)
flow: $(VENV)/.stamp-base
	python flows/pipeline.py

## serve: serve the Prefect flow on a nightly schedule (03:00 UTC) on the Prefect server PREFECT_API_URL names,
## or else on a local one it starts (127.0.0.1:4200, or a free port) and stops on Ctrl-C
serve: $(VENV)/.stamp-base
	python flows/pipeline.py --serve --cron "0 3 * * *"

## ui: the MLflow UI over the project's store
ui: $(VENV)/.stamp-base
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000
