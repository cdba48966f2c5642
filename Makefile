# Two commands for a fresh machine: `make run` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test lint typecheck install install-dev browser-deps bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Start the app on 127.0.0.1:7860 with embedded defaults (SQLite, disk cache, assets/models).
run: install
	$(BIN)/python app.py

## Lint, type-check and run the whole test suite (the same command CI runs).
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy .

## Debian's Chromium for the browser tests (Playwright drives it via executable_path).
browser-deps:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

bench: install-dev
	$(BIN)/python bench/bench_inference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
