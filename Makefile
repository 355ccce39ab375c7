# The two commands of the README: `make run` and `make test`.
# `make run` installs only what the demo uses (the package and its runtime
# dependencies, bubblewrap); `make test` adds the test tools and every service the
# suite starts (PostgreSQL, etcd, Redis, QEMU, Node.js, ...).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test setup setup-run system-deps system-deps-run lint typecheck pytest bench clean

run: setup-run
	$(BIN)/aether up --demo

test: setup lint typecheck pytest

setup-run: system-deps-run $(RUN_STAMP)

setup: system-deps $(TEST_STAMP)

system-deps-run:
	@bash scripts/system-deps.sh run

system-deps:
	@bash scripts/system-deps.sh test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	@touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(TEST_STAMP) $(RUN_STAMP)

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest -q

bench: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
