# medml developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
UV_VERSION ?= 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
PYTEST_ARGS ?=
# `make test` runs in parallel worker processes, a file per worker (a file's tests share its
# fixtures and keep their order); PYTEST_WORKERS=0 runs them in this process. The slow tests run
# one at a time: each keeps the cores busy (real Airflow stacks, TensorFlow), so two at once took
# as long in total and doubled each one's time against its own deadlines.
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile

.DEFAULT_GOAL := help

.PHONY: help setup demo airflow-ui test test-slow test-all lint format clean dvc-remote

help:  ## Show this help.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --extra dev --python 3.11 --compile-bytecode
	@touch $@

setup: $(VENV)/.installed  ## Create .venv and install medml + the pinned stack from uv.lock.

demo: setup  ## Synthesise a kidney-CT phantom set and run the medml_retrain DAG end to end.
	$(VENV)/bin/medml demo

airflow-ui: setup  ## Open the demo's Airflow UI (medml's DAGs, Models view, run logs) on :8080.
	$(VENV)/bin/medml airflow-ui

test: setup  ## Run the test suite (unit, data, DAG integrity, integration; ~10 min on 2 cores).
	$(VENV)/bin/pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

test-slow: setup  ## Run the slow tests: real Airflow runs (dags test per layout, back-fill, Celery workers).
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

test-all: setup  ## Run every test.
	$(VENV)/bin/pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

lint: setup  ## ruff lint and format check.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## Apply ruff fixes and formatting.
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

dvc-remote:  ## Point DVC at MEDML_DVC_REMOTE=s3://... [+ MEDML_S3_ENDPOINT_URL] (.dvc/config.local).
	@test -n "$(MEDML_DVC_REMOTE)" || { echo "set MEDML_DVC_REMOTE=s3://bucket/prefix"; exit 1; }
	$(VENV)/bin/dvc remote add --local --force --default storage "$(MEDML_DVC_REMOTE)"
	@if [ -n "$(MEDML_S3_ENDPOINT_URL)" ]; then \
		$(VENV)/bin/dvc remote modify --local storage endpointurl "$(MEDML_S3_ENDPOINT_URL)"; fi

# data/dvc-run and data/phantom hold tracked files (their .gitignore): only untracked ones go.
clean:  ## Remove the demo workspace, caches and generated data (keeps .venv and tracked files).
	rm -rf .medml .pytest_cache .ruff_cache
	git clean -fdxq -- data/dvc-run data/phantom
