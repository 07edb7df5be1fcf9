# cloudsweep: every target sets up what it needs itself (a fresh machine needs only python3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?=
# Where the demo writes everything (data, cache, runs); `make demo DEMO_DIR=/tmp/x` to move it.
DEMO_DIR ?= demo

.PHONY: help venv test test-fast demo bench clean

help:
	@echo "make demo   # generate data, run a local sweep with two CPU agents, evaluate the best run"
	@echo "make test   # the whole test suite (includes a real single-node SLURM when root on Debian)"
	@echo "make bench  # the benchmark table (benchmarks/results/latest.json)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,library]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh "$(DEMO_DIR)" "$(DATA)"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache
