# The README's commands. `make setup` is idempotent; the others set it up first if needed.
VENV ?= .venv
CORES ?= 2
BIN := $(CURDIR)/$(VENV)/bin
# Snakemake's shell rules and the tests call `frernn` and `jupyter` from the venv.
export PATH := $(BIN):$(PATH)

.PHONY: setup test quick lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

test: setup
	$(BIN)/pytest -q

quick: setup
	$(BIN)/snakemake --cores $(CORES) --config scale=quick dataset_substitute=fashion_mnist

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint
