"""Augmentation on the device (`augment_device`) against albumentations in the loader, and no augmentation.

All cases serve `CloudDataset` training batches of 384x576 images with their four masks from a prepared
cache (generated images; the pixels do not matter to the speed), with `default` augmentation (flips +
affine, p=0.5 each) and with `flips` alone; each ratio is against albumentations with the same pipeline:

- unaugmented: the loader's read + standardise (the reference: the speed augmentation should reach);
- albumentations: today's path, per image on the CPU in the loader;
- device: `augment_device: true`, the uint8 batch transformed and standardised by keras.ops on the
  backend's default device (here the CPU: this machine has no GPU);
- the same per-sample matrices through OpenCV's warpAffine per image, standardised: what a lean CPU
  path would cost without albumentations' per-call overhead (for comparison only; not a harness path).

Two measures per case: images per CPU second of one loader thread (best of repeated passes: the work
per image, least disturbed by other processes; the device case counts every thread TensorFlow uses), and
images per wall-clock second through a pool of `workers` threads, as Keras' PyDataset enqueuer runs them
(on a shared machine this one moves with the load, which is printed).

    python -m benchmarks.device_augment [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.data_pipeline import _rate

SIZE = (384, 576)
BATCH = 8
WORKERS = 2


def run(quick: bool = False) -> list[dict]:
    import keras

    from harness.data import cache, synth

    load_before = os.getloadavg()[0]
    count = 16 if quick else 48
    min_seconds = 0.5 if quick else 2.0
    with tempfile.TemporaryDirectory(prefix="bench-device-augment-") as scratch:
        data_dir = synth.synthesize(Path(scratch) / "synth", images=count, size=SIZE, seed=0)
        root = cache.prepare(data_dir, SIZE, cache_dir=Path(scratch) / "cache", workers=1, progress=False)
        opened = cache.open_cache(root, SIZE)
        cases = _cases(opened, count)
        measured = {name: (_rate(_cpu_pass(fetch, batches), min_seconds), _wall_rate(fetch, batches, min_seconds))
                    for name, (fetch, batches) in cases.items()}
    load = (f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared); "
            f"backend {keras.backend.backend()}, device {_device_name()}")
    return _rows(measured, count, load)


def _cases(opened: Any, count: int) -> dict[str, tuple[Callable[[int], Any], int]]:
    """name -> (fetch one batch by index, number of batches), each on the same images and order."""
    from harness.data.dataset import CloudDataset

    indices = np.arange(count)

    def dataset(**options: Any) -> Any:
        return CloudDataset(opened, indices, BATCH, shuffle=True, seed=0, **options)

    plain = dataset(augment="none")
    batches = len(plain)
    cases: dict[str, tuple[Callable[[int], Any], int]] = {"unaugmented": (lambda index: plain[index], batches)}
    for name in ("default", "flips"):
        cpu, device = dataset(augment=name), dataset(augment=name, augment_on_device=True)
        cases[f"{name}: albumentations (CPU, per image)"] = (cpu.__getitem__, batches)
        cases[f"{name}: device (keras.ops, batched)"] = (lambda index, data=device: _materialise(data[index]), batches)
        if name == "default":
            cases[f"{name}: same matrices, cv2.warpAffine per image"] = (
                lambda index, data=device: _opencv_batch(data, index), batches)
    return cases


def _materialise(batch: Any) -> Any:
    # The device case's tensors are asynchronous on a GPU: wait for the values (a host copy, as the
    # TensorFlow fit loop makes) so the clock covers the work.
    return tuple(np.asarray(part) for part in batch)


def _opencv_batch(data: Any, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from harness.data import device_augment
    from harness.data.dataset import standardize

    chosen = data._order[batch_index * BATCH : (batch_index + 1) * BATCH]
    height, width = SIZE
    images = np.empty((len(chosen), height, width, 3), dtype=np.uint8)
    masks = np.empty((len(chosen), height, width, 4), dtype=np.float32)
    for slot, image_index in enumerate(chosen):
        matrix = device_augment.sample_matrix("default", data._sample_seed(int(image_index)), height, width)[:2]
        images[slot] = cv2.warpAffine(data.cache.images[image_index], matrix, (width, height),
                                      flags=cv2.INTER_LINEAR, borderValue=0)
        masks[slot] = cv2.warpAffine(np.asarray(data.cache.masks[image_index]), matrix, (width, height),
                                     flags=cv2.INTER_NEAREST, borderValue=0)
    return standardize(images), masks


def _cpu_pass(fetch: Callable[[int], Any], batches: int) -> Callable[[], int]:
    def one_pass() -> int:
        for index in range(batches):
            fetch(index)
        return batches * BATCH

    return one_pass


def _wall_rate(fetch: Callable[[int], Any], batches: int, min_seconds: float) -> float:
    """Images per wall-clock second, best pass, with WORKERS threads fetching batches (the enqueuer's way)."""
    best = float("inf")
    spent = 0.0
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(fetch, range(batches)))  # warm-up: traces, caches
        passes = 0
        while passes < 3 or spent < min_seconds:
            started = time.perf_counter()
            list(pool.map(fetch, range(batches)))
            elapsed = time.perf_counter() - started
            best, spent, passes = min(best, elapsed), spent + elapsed, passes + 1
    return batches * BATCH / best


def _rows(measured: dict[str, tuple[float, float]], count: int, load: str) -> list[dict]:
    plain_cpu, plain_wall = measured["unaugmented"]
    height, width = SIZE
    rows = []
    for name, (cpu, wall) in measured.items():
        augmentation = name.split(":")[0] if ":" in name else "default"
        reference_cpu, reference_wall = measured[f"{augmentation}: albumentations (CPU, per image)"]
        case = f"{height}x{width} batch {BATCH}: {name}"
        base = {"benchmark": "device_augment", "unit": "images/s"}
        rows.append({**base, "case": f"{case}, per CPU second (1 loader thread)", "value": round(cpu, 1),
                     "reference": round(reference_cpu, 1), "ratio": round(cpu / reference_cpu, 2),
                     "note": f"{cpu / plain_cpu:.2f}x unaugmented; {load}"})
        rows.append({**base, "case": f"{case}, wall clock ({WORKERS} threads)", "value": round(wall, 1),
                     "reference": round(reference_wall, 1), "ratio": round(wall / reference_wall, 2),
                     "note": f"{wall / plain_wall:.2f}x unaugmented; {count} images; {load}"})
    return rows


def _device_name() -> str:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend().upper()
    return "default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and shorter timings")
    args = parser.parse_args()
    from benchmarks.run import format_table

    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
