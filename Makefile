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

.PHONY: run test install lint flow serve ui clean-outputs system-packages mlflow-server prefect-server deploy worker

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

## system-packages: what the tests drive besides Python (Debian): PostgreSQL (the tracking server's backend store),
## Chromium and its driver (the report and DVC's plots page in a real browser); apt-get installs what is missing
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

## test: install with test extras and system packages, lint, run the test suite (slow tests: pytest -m slow)
test: $(VENV)/.stamp-test system-packages
	ruff check src flows tests bench tools
	pytest

lint: $(VENV)/.stamp-test
	ruff check src flows tests bench tools

## flow: run the pipeline once as a Prefect flow (through DVC)
flow: $(VENV)/.stamp-base
	python flows/pipeline.py

## serve: serve the Prefect flow on a nightly schedule (03:00 UTC) on the Prefect server PREFECT_API_URL names,
## or else on a local one it starts (127.0.0.1:4200, or a free port) and stops on Ctrl-C
serve: $(VENV)/.stamp-base
	python flows/pipeline.py --serve --cron "0 3 * * *"

## mlflow-server: the team's MLflow tracking server: PostgreSQL backend store (MLFLOW_BACKEND, default
## postgresql://genlab@127.0.0.1/genlab), artifacts proxied to MLFLOW_ARTIFACTS (clients upload over HTTP), on
## MLFLOW_HOST:MLFLOW_PORT (default 127.0.0.1:5000; 0.0.0.0 to serve other machines)
MLFLOW_BACKEND ?= postgresql://genlab@127.0.0.1/genlab
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts-server
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
mlflow-server: $(VENV)/.stamp-base
	mlflow server --backend-store-uri $(MLFLOW_BACKEND) --artifacts-destination $(MLFLOW_ARTIFACTS) \
	  --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 1

## prefect-server: a Prefect server (UI and API) on PREFECT_HOST:PREFECT_PORT (default 127.0.0.1:4200); workers and
## clients on every machine set PREFECT_API_URL=http://<host>:<port>/api
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
prefect-server: $(VENV)/.stamp-base
	prefect server start --host $(PREFECT_HOST) --port $(PREFECT_PORT) --analytics-off

## deploy: prefect.yaml's deployments to the server PREFECT_API_URL names (the nightly pipeline; sweep points),
## creating the `genlab` process work pool if it is missing, and the automation that marks a flow run Crashed when
## its heartbeats stop (its machine died: flows/crashed_runs.py)
HEARTBEAT ?= 60
deploy: $(VENV)/.stamp-base
	@test -n "$$PREFECT_API_URL" || { echo "make deploy: set PREFECT_API_URL to the Prefect server's API" >&2; exit 2; }
	prefect work-pool inspect genlab >/dev/null 2>&1 || prefect work-pool create genlab --type process
	env -u GENLAB_CLONE prefect --no-prompt deploy --all
	$(PY) flows/crashed_runs.py --heartbeat $(HEARTBEAT)

## worker: a Prefect worker of the `genlab` pool that runs flows in this clone, one at a time; its flow runs send a
## heartbeat every HEARTBEAT seconds
worker: $(VENV)/.stamp-base
	@test -n "$$PREFECT_API_URL" || { echo "make worker: set PREFECT_API_URL to the Prefect server's API" >&2; exit 2; }
	GENLAB_CLONE=$(CURDIR) PREFECT_FLOWS_HEARTBEAT_FREQUENCY=$(HEARTBEAT) \
	  prefect worker start --pool genlab --type process --limit 1

## ui: the MLflow UI over the project's store
## (MLflow 3's UI opens an experiment on its GenAI page in a fresh browser; the link below opens the training runs)
ui: $(VENV)/.stamp-base
	@MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db python -c "import mlflow; e = mlflow.get_experiment_by_name('genlab'); \
	print('genlab training runs: http://127.0.0.1:5000/#/experiments/%s/runs?workflowType=machine_learning' \
	% (e.experiment_id if e else 1))" 2>/dev/null || true
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000
