# Shortcuts for the commands the README gives; each target is one of them, nothing more.
# `make check` is what CI runs after installing (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := settings.py errors.py metrics.py runtime.py schemas operators models rl learning training \
	connectors storage dataflows cli report deploy

.PHONY: install run test lint format typecheck check report bench clean

install:            ## a virtual environment with the test extras
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -e '.[test]'

run:                ## the live flow on the embedded defaults (the bundled sample)
	$(PY) -m bytewax.run dataflows.live

test:               ## the whole suite, docstring examples included
	$(VENV)/bin/pytest

lint:               ## ruff: rules and formatting
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:             ## rewrite files in the enforced format
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

typecheck:          ## mypy over the packages (configuration in pyproject.toml)
	$(VENV)/bin/mypy

check: lint typecheck test

report:             ## the HTML report of the last run
	$(PY) -m cli.report

bench:              ## the benchmarks (slow; figures go to the issue notes, not to tests)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf .qt .pytest_cache .ruff_cache .mypy_cache
