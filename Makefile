# Two commands do everything on a fresh machine:
#   make run    set up .venv and run the offline default experiment
#   make test   set up .venv and run the test suite (what CI runs)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The CPU wheel of torch, installed before anything else so that no dependency pulls CUDA.
TORCH   ?= torch==2.13.0

.PHONY: install install-flower run compare test lint bench clean

$(BIN)/flexlora: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/flexlora

# The Flower extra (flwr, Ray) only for what needs it: the tests and --engine flower.
$(VENV)/.flower: $(BIN)/flexlora
	$(BIN)/pip install -q -e ".[dev,flower]"
	touch $(VENV)/.flower

install: $(BIN)/flexlora

install-flower: $(VENV)/.flower

run: install
	$(BIN)/flexlora run

compare: install
	$(BIN)/flexlora compare

test: install-flower
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: install-flower
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
