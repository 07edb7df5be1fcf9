# cloudsweep: every target sets up what it needs itself (a fresh machine needs only python3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CUDA=1: TensorFlow for NVIDIA GPUs (extra `cuda`) instead of tensorflow-cpu (extra `cpu`, the default and
# what CI runs); see docs/gpu.md. The two are one import package, so switching removes the other first.
# JAX (extra `jax`, CPU build) comes with either, so `make test` runs the JAX tests too (docs/backends.md).
CUDA   ?=
TF_EXTRA := $(if $(filter 1 yes true,$(CUDA)),cuda,cpu)
TF_OTHER := $(if $(filter cuda,$(TF_EXTRA)),tensorflow-cpu,tensorflow)
STAMP  := $(VENV)/.installed-$(TF_EXTRA)
DATA   ?=
# Where the demo writes everything (data, cache, runs); `make demo DEMO_DIR=/tmp/x` to move it.
DEMO_DIR ?= demo

.PHONY: help venv test test-fast test-repeat demo bench clean

help:
	@echo "make demo   # generate data, run a local sweep with two CPU agents, evaluate the best run"
	@echo "make test   # the whole test suite (includes a real single-node SLURM when root on Debian)"
	@echo "make bench  # the benchmark table (benchmarks/results/latest.json)"
	@echo "make venv CUDA=1  # .venv with TensorFlow for NVIDIA GPUs (docs/gpu.md); any target takes CUDA=1"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if $(BIN)/python -m pip show --quiet $(TF_OTHER) >/dev/null 2>&1; then \
	    $(BIN)/python -m pip uninstall --quiet --yes $(TF_OTHER); fi
	$(BIN)/python -m pip install --quiet -e ".[test,library,jax,$(TF_EXTRA)]"
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

# Flake hunt: run the tests matching K (a pytest -k expression) N times in a row; stops at the first failure.
#   make test-repeat N=10 K=slurm        (the SLURM tests; the test cluster starts itself)
N ?= 10
K ?= slurm or agent
test-repeat: $(STAMP)
	@pass=0; for i in $$(seq 1 $(N)); do \
	    echo "== round $$i of $(N): pytest -k '$(K)'"; \
	    $(BIN)/python -m pytest -q -k "$(K)" || { echo "== failed in round $$i ($$pass of $(N) passed)"; exit 1; }; \
	    pass=$$((pass + 1)); \
	done; echo "== $$pass of $(N) rounds passed"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh "$(DEMO_DIR)" "$(DATA)"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache
