# Two commands do everything on a fresh machine with Python >= 3.11:
#   make demo   sets up .venv and runs the main job on the embedded default
#   make test   sets up .venv and runs the whole test suite (lint, types, tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint pytest bench bench-ceiling bench-report bench-dashboard clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/kiro-activity demo

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

pytest: $(BIN)/.installed
	scripts/ensure-chromium
	scripts/ensure-postgres
	$(BIN)/python -m pytest

test: lint pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py

bench-ceiling: $(BIN)/.installed
	$(BIN)/python bench/ceiling.py

bench-report: $(BIN)/.installed
	$(BIN)/python bench/report.py

bench-dashboard: $(BIN)/.installed
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) kiro-data test-artifacts .pytest_cache .mypy_cache .ruff_cache .hypothesis
