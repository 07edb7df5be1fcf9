#!/usr/bin/env bash
# The GPU check under KERAS_BACKEND=jax on the accelerator this project is sometimes lent (the `device`
# tool: one NVIDIA H100 with PyTorch, JAX and CUDA for Python 3.12, no TensorFlow, nothing fetchable).
# What it needs beyond that machine's packages travels as wheels: keras and its two small dependencies
# (the harness's training path under JAX imports no TensorFlow, albumentations, wandb or sweeps).
#   here, once:   bash benchmarks/device_check.sh --fetch        # wheels into .whl/ (git-ignored, ~3 MB)
#   there:        device run, carry [".whl"], command "bash benchmarks/device_check.sh"
# It prints the device and the UNet's images/s at 384x576 batch 32 per precision (benchmarks/gpu_check.py
# --skip-agents: the two-agent part needs the launcher's wandb and sweeps, not carried), into $OUT.
# Not yet run on the accelerator: no machine was lent to the session that wrote it.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
if [ "${1:-}" = "--fetch" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" keras==3.15.1 namex==0.1.0 optree==0.20.0
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    ls -la "$WHEELS"
    exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1 HARNESS_JAX_CACHE="${TMPDIR:-/tmp}/jax-cache"
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
exec timeout --signal=TERM 480 python3 -m benchmarks.gpu_check --skip-agents --out "$OUT/gpu_check_jax.json" "$@"
