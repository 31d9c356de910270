# Two commands for a fresh machine with Python 3.11:
#   make run    — build the environment (first time) and regenerate the paper at the default scale
#   make test   — build the environment (first time), lint, and run the test suite
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
SCALE ?= mini
BIN = $(VENV)/bin

.PHONY: run test lint env snapshot clean-outputs

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: env
	$(BIN)/snakemake --cores $(CORES) --config scale=$(SCALE) --rerun-incomplete

lint: env
	$(BIN)/ruff check .

test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -q

# Copy the outputs of the last run into the committed snapshot the README shows (results/<scale>/,
# paper_figures/<scale>/). DAG outputs themselves are git-ignored so a fresh checkout regenerates them.
# Refused (one line, nothing copied) when the last run was another scale: tools/snapshot.py.
snapshot: env
	$(BIN)/python tools/snapshot.py $(SCALE)

clean-outputs:
	rm -rf work .snakemake
