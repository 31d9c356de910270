# Two commands for a fresh machine with Python 3.11:
#   make run    — build the environment (first time) and regenerate the paper at the default scale
#                 (into results/$(SCALE)/ and paper_figures/$(SCALE)/: for mini, the committed snapshot itself)
#   make test   — build the environment (first time), lint, and run the test suite
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
SCALE ?= mini
BIN = $(VENV)/bin

.PHONY: run test lint env clean-outputs

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The committed outputs of a scale (results/mini/...) have no work files behind them in a fresh checkout, and
# Snakemake would take them as done: until a run has finished here ($(REGENERATED)), the cells, the sample grids
# and Fig. 3 are forced, so everything is regenerated from scratch (an interrupted first run keeps its finished
# training and sampling jobs).
REGENERATED ?= work/$(SCALE)/.regenerated
FIRST_RUN = $(if $(wildcard $(REGENERATED)),,--forcerun cell grids fig3)

run: env
	$(BIN)/snakemake --cores $(CORES) --config scale=$(SCALE) --rerun-incomplete $(FIRST_RUN)
	mkdir -p $(dir $(REGENERATED)) && touch $(REGENERATED)

lint: env
	$(BIN)/ruff check .

test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -q

# The work folder of one scale (checkpoints, latents, samples); the committed results stay.
clean-outputs:
	rm -rf work/$(SCALE)
