# The README's commands. `make setup` is idempotent; the others set it up first if needed.
VENV ?= .venv
CORES ?= 2
BIN := $(CURDIR)/$(VENV)/bin
# Snakemake's shell rules and the tests call `frernn` and `jupyter` from the venv.
export PATH := $(BIN):$(PATH)

# Debian packages: Fashion-MNIST for the offline run; Slurm and munge for the Slurm test;
# Chromium for the test that renders results/report.html in a real browser.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y
RUN_PACKAGES := python3-venv dataset-fashion-mnist
TEST_PACKAGES := $(RUN_PACKAGES) slurmctld slurmd munge chromium

.PHONY: setup system-run system-test test quick lint

setup: $(VENV)/.installed

system-run:
	@dpkg -s $(RUN_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update && $(APT_INSTALL) $(RUN_PACKAGES); }

system-test:
	@dpkg -s $(TEST_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update && $(APT_INSTALL) $(TEST_PACKAGES); }

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

test: system-test setup
	$(BIN)/pytest -q

# pack=seeds: one process per configuration, not per seed (on CPU it saves start-ups; README)
quick: system-run setup
	$(BIN)/snakemake --cores $(CORES) --config scale=quick dataset_substitute=fashion_mnist pack=seeds

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint
