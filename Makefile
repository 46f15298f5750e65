# The README's commands. Every target builds its own virtual environment first, so a fresh
# clone with only Python 3.11 needs nothing else. Packages come from the hash-locked files in
# requirements/ (every version and file hash pinned); `make lock` regenerates them after a
# change to pyproject.toml, `make lock UPGRADE=1` moves every pin to the newest allowed release.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet
# Stamps: what is installed. `.installed` is the test set (a superset of what running needs).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
UV_VERSION := 0.13.9

.PHONY: demo test lint bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Install one lock file, then syncsvc itself (editable, with the locked build backend).
define install_lock
	$(PIP) install --require-hashes -r $(1)
	$(PIP) install --no-deps --no-build-isolation -e .
endef

$(RUN_STAMP): $(BIN)/python requirements/run.txt pyproject.toml
	$(call install_lock,requirements/run.txt)
	touch $@

$(STAMP): $(BIN)/python requirements/test.txt pyproject.toml
	$(call install_lock,requirements/test.txt)
	touch $@

$(BENCH_STAMP): $(BIN)/python requirements/bench.txt pyproject.toml
	$(call install_lock,requirements/bench.txt)
	touch $@

demo: $(RUN_STAMP)
	$(BIN)/syncsvc demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BENCH_STAMP)
	$(BIN)/syncsvc bench

lock: $(BIN)/python
	$(PIP) install "uv==$(UV_VERSION)"
	$(BIN)/python requirements/lock.py $(if $(UPGRADE),--upgrade)

clean:
	rm -rf $(VENV) .syncsvc-demo .pytest_cache .mypy_cache .ruff_cache
