"""Training cost on this machine: one train step of the reference UNet, and what a checkpoint adds.

Cases (batch 8, UNet with 8 base filters and depth 4, Adam, bce_dice, the run's metrics):
- train step at 128x192 and 384x576 (`train_on_batch`, after the first traced step; best-of wall
  time, with the median and the CPU time in the note). The reference
  is the same step compiled with XLA (`jit_compile=True`), measured in the same run at 128x192 only
  (at 384x576 XLA on CPU takes minutes); ratio = XLA time / default time (>1: leaving XLA off wins).
- the same 128x192 step under each mixed-precision policy (`precision: mixed_float16` / `mixed_bfloat16`);
  reference = the float32 step measured in the same run, ratio = float32 time / mixed time (>1: mixed wins).
  On a CPU without 16-bit matrix units mixed precision only adds casts; on a GPU `benchmarks/gpu_check.py`.
- the same 128x192 step with the presence head (`presence_head: true`: the head on the bottleneck, the
  presence loss and metrics); reference = the step without it, ratio = with / without (the head's cost).
- the step of the two models of the real-imagery results (docs/evaluation.md) at their settings: the
  library UNet-ResNet34 with the presence head, batch 16 at 128x192; reference = the UNet (8 filters,
  depth 4) with the head at the same batch and size; ratio = ResNet34 / UNet (what a ResNet34 epoch
  costs in UNet epochs).
- checkpoint save (`harness.run.checkpoint.save_checkpoint`: weights + optimizer state + state.json,
  fsync'd, renamed atomically) and the best-model save (`stage_best` + `commit_best`, a full .keras
  file), at 384x576. The reference is one train step at that size: ratio = step time / save time, so
  a ratio of 0.5 means a checkpoint costs two steps. A run saves one checkpoint per epoch (plus one on
  a stop signal), and best.keras only when the monitored metric improves.

    python -m benchmarks.train_step [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

BATCH = 8
FILTERS = 8
DEPTH = 4


def _compiled_model(size: tuple[int, int], jit_compile: bool | str = False, presence_head: bool = False, model: str = "unet",
                    precision: str = "float32"):
    """The model a run config builds (`harness.model.build_model`: for the UNet, FILTERS and DEPTH), compiled
    with Adam and the run's loss and metrics, under `precision` (a Keras dtype policy) and `jit_compile`
    (True/False, or "auto": Keras' own choice, what a run gets by default)."""
    import keras

    from harness import config as config_module
    from harness.model import build_model
    from harness.run import device, losses

    keras.utils.set_random_seed(0)
    jit_word = jit_compile if isinstance(jit_compile, str) else str(jit_compile).lower()
    config = config_module.Config(model=model, image_size=f"{size[0]}x{size[1]}", filters=FILTERS, depth=DEPTH,
                                  loss="bce_dice", presence_head=presence_head, precision=precision,
                                  jit_compile=jit_word).validate()
    with device.precision_policy(precision):
        compiled = build_model(config)
        compiled.compile(optimizer=keras.optimizers.Adam(1e-3), **device.compile_options(config),
                         **losses.compile_arguments(config))
    return compiled


def _batch(size: tuple[int, int], batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    from harness.data.dataset import standardize

    rng = np.random.default_rng(0)
    images = standardize(rng.integers(0, 256, size=(batch, *size, 3), dtype=np.uint8))
    masks = (rng.random((batch, *size, 4)) > 0.85).astype(np.float32)
    return images, masks


def step_seconds(model, size: tuple[int, int], steps: int, batch: int = BATCH, warmup: int = 1,
                 on_device: bool = False) -> dict[str, float]:
    """Seconds of one train step after `warmup` first ones (the first traces and compiles the step):
    best-of and median wall time, CPU time, the total of the timed steps, and the first step's time.

    The best-of wall time is the number to compare: on a shared machine other processes only ever
    make a step slower. CPU time (all threads) shows the work itself. `on_device`: the batch is made a
    backend tensor once (on the GPU where there is one), so the steps time the training, not the copy
    of the batch from the host.
    """
    images, masks = _batch(size, batch)
    if on_device:
        import keras

        images, masks = keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(masks)
    if len(model.outputs) > 1:
        masks = {name: masks for name in model.output_names}  # the presence head derives its target from the mask
    first = time.perf_counter()
    model.train_on_batch(images, masks)  # traces the step function
    first = time.perf_counter() - first
    for _ in range(warmup - 1):
        model.train_on_batch(images, masks)
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        model.train_on_batch(images, masks)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"best": min(walls), "median": statistics.median(walls), "cpu": statistics.median(cpus), "total": sum(walls),
            "first": first}


def precision_rows(size: tuple[int, int] = (128, 192), steps: int = 5, float32_step: dict[str, float] | None = None) -> list[dict]:
    """The step under each mixed-precision policy beside the float32 one (measured here unless given)."""
    from harness.config import PRECISIONS

    reference = float32_step or step_seconds(_compiled_model(size), size, steps)
    rows = []
    for precision in PRECISIONS[1:]:
        timing = step_seconds(_compiled_model(size, precision=precision), size, steps)
        rows.append(_row(f"train step {size[0]}x{size[1]} b{BATCH} f{FILTERS} {precision}", timing["best"], reference["best"],
                         reference["best"] / timing["best"],
                         f"reference: the float32 step (jit_compile off); {_spread(timing)}"))
    return rows


def save_seconds(model, repeats: int) -> tuple[float, float]:
    """Median seconds of a checkpoint save and of a best-model save (in a temporary run folder)."""
    from harness.run import checkpoint

    checkpoint_times, best_times = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        for epoch in range(1, repeats + 1):
            state = checkpoint.TrainState(epoch=epoch, iterations=int(model.optimizer.iterations.numpy()))
            started = time.perf_counter()
            checkpoint.save_checkpoint(run_dir, model, state)
            checkpoint_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            checkpoint.stage_best(run_dir, model, epoch)
            checkpoint.commit_best(run_dir, epoch)
            best_times.append(time.perf_counter() - started)
    return statistics.median(checkpoint_times), statistics.median(best_times)


def run(quick: bool = False) -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    steps = 3 if quick else 5
    small, large = (128, 192), (384, 576)
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    rows = []

    small_step = step_seconds(_compiled_model(small), small, steps)
    xla_step = step_seconds(_compiled_model(small, jit_compile=True), small, 2)
    rows.append(_row("train step 128x192 b8 f8", small_step["best"], xla_step["best"], xla_step["best"] / small_step["best"],
                     f"reference: the same step with jit_compile=True (XLA); {_spread(small_step)}; {load}"))
    rows.extend(precision_rows(small, steps, small_step))

    headed = _compiled_model(small, presence_head=True)
    headed_step = step_seconds(headed, small, steps)
    rows.append(_row("train step 128x192 b8 f8 + presence head", headed_step["best"], small_step["best"],
                     headed_step["best"] / small_step["best"],
                     f"reference: the step without the head; {headed.count_params()} parameters vs "
                     f"{_compiled_model(small).count_params()}; {_spread(headed_step)}"))

    library = _compiled_model(small, presence_head=True, model="sm_unet_resnet34")
    library_step = step_seconds(library, small, steps, batch=16)
    unet_step = step_seconds(_compiled_model(small, presence_head=True), small, steps, batch=16)
    rows.append(_row("train step 128x192 b16 UNet-ResNet34 + presence head", library_step["best"], unet_step["best"],
                     library_step["best"] / unet_step["best"],
                     f"reference: the UNet f8 + head, same batch; {library.count_params()} parameters; "
                     f"{_spread(library_step)}"))

    large_model = _compiled_model(large)
    large_step = step_seconds(large_model, large, steps)
    per_pixel = small_step["best"] * (large[0] * large[1]) / (small[0] * small[1])
    rows.append(_row("train step 384x576 b8 f8", large_step["best"], per_pixel, per_pixel / large_step["best"],
                     f"reference: the 128x192 step scaled by pixels (9x); {_spread(large_step)}"))

    checkpoint_seconds, best_seconds = save_seconds(large_model, repeats=3 if quick else 5)
    step = large_step["best"]
    rows.append(_row("checkpoint save (weights+optimizer, atomic)", checkpoint_seconds, step, step / checkpoint_seconds,
                     f"reference: one 384x576 train step; a checkpoint costs {checkpoint_seconds / step:.2f} steps"))
    rows.append(_row("best.keras save (staged + renamed)", best_seconds, step, step / best_seconds,
                     f"reference: one 384x576 train step; costs {best_seconds / step:.2f} steps"))
    return rows


def _spread(timing: dict[str, float]) -> str:
    return f"median {timing['median']:.3f} s, CPU {timing['cpu']:.3f} s per step"


def _row(case: str, value: float, reference: float, ratio: float, note: str) -> dict:
    return {"benchmark": "train_step", "case": case, "value": round(value, 4), "unit": "s",
            "reference": round(reference, 4), "ratio": round(ratio, 3), "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and saves")
    args = parser.parse_args()
    from benchmarks.run import format_table

    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
