"""The Keras backends on this machine: the reference UNet's train step under TensorFlow and under JAX, and
what JAX's persistent compilation cache saves a process at its start.

Each measurement runs in its own process (Keras picks its backend once per process; KERAS_BACKEND):
the same model, batch and image size as benchmarks/train_step.py (UNet, 8 base filters, depth 4, batch 8,
Adam, bce_dice, the run's metrics), `jit_compile: auto` as a run gets it: TensorFlow on a CPU runs its
graph without XLA, JAX always compiles with XLA.
- train step: best-of wall time after the first step; reference = the TensorFlow step in the same run,
  ratio = TensorFlow / JAX (>1: JAX is faster).
- start to first step done (imports, model build, the trace and compile of the train step: what every
  process start pays before its first epoch trains; the cache set by
  `harness.run.device.enable_compilation_cache`, as a run sets it): JAX with the persistent cache filled
  by an earlier process, reference = JAX without a cache, ratio = without / with (what a sweep's later
  runs save); a cold cache (the first process, which fills it), TensorFlow, and the first step alone are
  in the note.
- a run's first epoch: `python -m harness.train` for one epoch on generated data (64x96, 24 images, the
  same UNet, batch 8), the epoch's seconds in metrics.jsonl (the compiles of the train and validation steps
  and the metric updates included): JAX with a warm cache, reference = JAX without, ratio = without / with;
  a cold cache, TensorFlow and each process's wall time in the note.

    python -m benchmarks.backends [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 900


def child(size: tuple[int, int], steps: int, cache: str | None) -> dict:
    """In a process of one backend: the train step's timings (benchmarks.train_step.step_seconds)."""
    started = time.perf_counter()
    import keras

    from benchmarks import train_step
    from harness.run import device

    if cache:
        device.enable_compilation_cache(cache)
    model = train_step._compiled_model(size, jit_compile="auto")
    timing = train_step.step_seconds(model, size, steps)
    return {"backend": keras.config.backend(), "version": device.describe(_config()).get("backend_version"),
            "process_s": time.perf_counter() - started, **timing}


def _config():
    from harness import config as config_module

    return config_module.Config()


def measure(backend: str, size: tuple[int, int], steps: int, cache: str | None = None) -> dict:
    """`child` in a fresh process with KERAS_BACKEND=backend (and JAX's cache in `cache`, if given)."""
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "benchmarks.backends", "--child", f"{size[0]}x{size[1]}", "--steps", str(steps)]
    if cache:
        command += ["--cache", cache]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{backend} child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def run(quick: bool = False) -> list[dict]:
    size = (64, 96) if quick else (128, 192)
    steps = 3 if quick else 10
    name = f"{size[0]}x{size[1]} b8 f8"
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    tensorflow = measure("tensorflow", size, steps)
    if importlib.util.find_spec("jax") is None:
        return [_row(f"train step {name} jax", None, tensorflow["best"], None, "jax is not installed (extra `jax`)")]
    uncached = measure("jax", size, steps)
    with tempfile.TemporaryDirectory() as cache:
        cold = measure("jax", size, steps, cache)
        warm = measure("jax", size, steps, cache)
    epochs = first_epochs()
    return [
        _row(f"train step {name} jax", warm["best"], tensorflow["best"], tensorflow["best"] / warm["best"],
             f"reference: the TensorFlow {tensorflow['version']} step (no XLA), median {tensorflow['median']:.3f} s; "
             f"jax {warm['version']} (XLA) median {warm['median']:.3f} s, CPU {warm['cpu']:.3f} s; {load}"),
        _row(f"start to first step done {name} jax, warm compilation cache", _start(warm), _start(uncached),
             _start(uncached) / _start(warm),
             f"reference: jax without a cache; cold cache (the process filling it) {_start(cold):.1f} s, TensorFlow "
             f"{_start(tensorflow):.1f} s; the first step alone (trace + compile): jax {uncached['first']:.1f} s "
             f"uncached, {cold['first']:.1f} s cold, {warm['first']:.1f} s warm, TensorFlow {tensorflow['first']:.1f} s"),
        _row("a run's first epoch (tiny: 64x96, 24 images) jax, warm compilation cache", epochs["jax warm"],
             epochs["jax uncached"], epochs["jax uncached"] / epochs["jax warm"],
             f"reference: jax without a cache; cold cache {epochs['jax cold']:.1f} s, TensorFlow "
             f"{epochs['tensorflow']:.1f} s; `python -m harness.train` process wall time: " + ", ".join(
                 f"{name} {seconds:.1f} s" for name, seconds in epochs.items() if name.endswith("process"))),
    ]


def first_epochs() -> dict[str, float]:
    """A real one-epoch run (`python -m harness.train`, generated data at 64x96) per backend and cache state:
    the epoch's seconds from metrics.jsonl (the compiles of the train and validation steps included) and the
    whole process's wall time."""
    from harness.data import cache, synth

    found: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = synth.synthesize(work / "data", images=24, test_images=0, size=(96, 144), seed=0)
        cache_root = cache.prepare(data, (64, 96), workers=1, progress=False)
        for name, backend, jax_cache in (("tensorflow", "tensorflow", "off"), ("jax uncached", "jax", "off"),
                                         ("jax cold", "jax", str(work / "jax-cache")),
                                         ("jax warm", "jax", str(work / "jax-cache"))):
            environment = {**os.environ, "KERAS_BACKEND": backend, "HARNESS_JAX_CACHE": jax_cache,
                           "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
            run_id = name.replace(" ", "-")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "harness.train", f"--data-dir={data}",
                                   f"--cache-dir={cache_root}", "--image-size=64x96", "--epochs=1", "--batch-size=8",
                                   "--filters=8", "--depth=4", "--workers=1", "--run-id", run_id, "--root", str(work / "runs")],
                                  cwd=REPO, env=environment, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"harness.train ({name}) failed:\n{done.stderr[-3000:]}")
            found[f"{name} process"] = time.perf_counter() - started
            rows = (work / "runs" / "single" / run_id / "metrics.jsonl").read_text().splitlines()
            found[name] = float(json.loads(rows[0])["seconds"])
    return found


def _start(result: dict) -> float:
    """Seconds from the process's start (imports, model build) to its first train step done (compile included)."""
    return result["process_s"] - result["total"]


def _row(case: str, value: float | None, reference: float | None, ratio: float | None, note: str) -> dict:
    return {"benchmark": "backends", "case": case, "value": None if value is None else round(value, 4), "unit": "s",
            "reference": None if reference is None else round(reference, 4),
            "ratio": None if ratio is None else round(ratio, 3), "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x96, fewer steps")
    parser.add_argument("--child", metavar="HxW", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        height, width = (int(part) for part in args.child.split("x"))
        print(json.dumps(child((height, width), args.steps, args.cache)))
        return
    from benchmarks.run import format_table

    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
