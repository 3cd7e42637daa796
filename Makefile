# Two commands matter: `make test` and `make demo`. Both create .venv on first use
# (torch==2.13.0 is installed before anything that depends on it, so no CUDA build is pulled),
# install the project, and then run. Reruns reuse the venv until pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
PYTEST_ARGS ?=
# The default suite runs in this many pytest processes, a test module per process at a time (its module fixtures
# are built once): most tests wait on subprocesses, servers and Beam workers, so two halve the time on 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: test test-slow lint format typecheck demo bench-shard clean help system-packages render-packages

help:
	@echo "make test    - install if needed, then lint, type-check and run the default test suite"
	@echo "make demo    - install if needed, then shard and label the bundled sample corpus and write its report"
	@echo "make test-slow, make bench-shard, make format, make clean, make system-packages (Mesa EGL, Chromium)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy schemas dpmesh_core

# Debian packages (Mesa EGL for the report's mesh rendering, Chromium for its browser test); installs only what is
# missing (see .ci/system_packages.sh). The demo and the default suite need the renderer only; the slow suite's
# browser test needs Chromium too.
system-packages:
	.ci/system_packages.sh render browser

render-packages:
	.ci/system_packages.sh render

test: render-packages lint typecheck
	$(PY) -m pytest -m "not slow and not gpu" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-slow: system-packages $(STAMP)
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: render-packages $(STAMP)
	$(PY) -m pipelines.demo

bench-shard: $(STAMP)
	$(PY) benchmarks/shard_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo_output
