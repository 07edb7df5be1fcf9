#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): on a machine with one NVIDIA GPU, under 8 minutes end to end,
# it prints the device, float32 vs mixed-precision images/s of the UNet at 384x576 batch 32, runs 2 agents
# on the one GPU, and writes one JSON (default benchmarks/results/gpu_check.json).
#   bash benchmarks/gpu_check.sh [--out FILE] [--steps N] [--skip-agents]
#   bash benchmarks/gpu_check.sh --dry-run      # any machine: tiny sizes, on the CPU, about a minute
# PYTHON picks the interpreter (default: the project's .venv, else python3); KERAS_BACKEND=jax works too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
# The script keeps its own time budget per part; this only stops a hang (and still leaves the JSON so far).
exec timeout --signal=TERM 540 "$PYTHON" -m benchmarks.gpu_check "$@"
