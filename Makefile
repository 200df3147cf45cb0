# headend: the two commands are `make demo` and `make test`.
# Both set up everything they need (venv, PostgreSQL+TimescaleDB, Mosquitto) idempotently.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check unit integration services venv bench clean

$(STAMP): pyproject.toml scripts/venv
	bash scripts/venv
	touch $(STAMP)

venv: $(STAMP)

services:
	bash scripts/services

demo: venv services
	$(BIN)/headend demo $(DEMO_ARGS)

test: venv services
	bash scripts/check

unit: venv
	$(BIN)/pytest -q tests/unit

bench: venv services
	bash scripts/bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
