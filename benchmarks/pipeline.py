"""Pipeline efficiency: a harness training epoch against bare `model.fit` on the same tensors in memory.

What a run adds around the train steps (the cache-backed `CloudDataset` and its worker threads, the run
folder's callback: metrics rows, the lease heartbeat, the per-epoch checkpoint and best-model save) is
measured as the ratio of two epoch times, in one process, on the same generated images, split, model
(`train._compiled_model`, as a run builds it) and number of steps:

- harness: `harness.run.train.train` of a run of EPOCHS epochs; an epoch's time is its metrics.jsonl
  `seconds` (train steps, validation, checkpoint), the first epoch left out (tracing);
- reference: `model.fit` on NumPy arrays holding exactly the batches the harness loader serves
  (unaugmented, standardised), with the same validation arrays, timed per epoch the same way.

efficiency = reference epoch / harness epoch (1: the pipeline costs nothing; the target is >= 0.9). With
`augment: default` the harness epoch also pays the CPU augmentation (albumentations in the loader
threads) against the same unaugmented reference: what augmentation costs a run on this machine.

    python -m benchmarks.pipeline [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZE = (128, 192)
BATCH = 8
IMAGES = 80  # 60 train / 20 validation at val_fraction 0.25: 8 train steps and 3 validation steps an epoch
EPOCHS = 6


def run(quick: bool = False) -> list[dict]:
    import os

    from harness.data import synth

    os.environ.setdefault("WANDB_SILENT", "true")  # a run logs offline to W&B, as runs do: part of its cost

    images, epochs = (24, 3) if quick else (IMAGES, EPOCHS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        folder = Path(scratch)
        data_dir = synth.synthesize(folder / "synth", images=images, size=SIZE, seed=0)
        for augment in ("none", "default"):
            config = _config(data_dir, folder / "cache", augment, epochs)
            harness_s = _harness_epoch(config, folder / f"run-{augment}")
            reference_s = _bare_fit_epoch(config)
            rows.append({"benchmark": "pipeline", "case": f"epoch at {SIZE[0]}x{SIZE[1]}, batch {BATCH}, augment "
                         f"{augment}: harness run vs bare model.fit in memory", "value": round(harness_s, 3),
                         "unit": "s", "reference": round(reference_s, 3), "ratio": round(reference_s / harness_s, 3),
                         "note": f"median of epochs 2..{epochs}; ratio = pipeline efficiency (target >= 0.9)"})
    return rows


def _config(data_dir: Path, cache_dir: Path, augment: str, epochs: int) -> Any:
    from harness import config as config_module

    return config_module.build_config(overrides={
        "data_dir": str(data_dir), "cache_dir": str(cache_dir), "image_size": f"{SIZE[0]}x{SIZE[1]}",
        "batch_size": BATCH, "filters": 8, "depth": 4, "epochs": epochs, "augment": augment, "workers": 2,
        "val_fraction": 0.25, "steps_per_epoch": 0})


def _harness_epoch(config: Any, run_dir: Path) -> float:
    from harness import io
    from harness.run import train

    summary = train.train(config, run_dir, run_dir.name, verbose=0)
    assert summary["status"] == "finished", summary
    seconds = [row["seconds"] for row in io.read_jsonl(run_dir / "metrics.jsonl")]
    return statistics.median(seconds[1:])


def _bare_fit_epoch(config: Any) -> float:
    """model.fit on the loader's own unaugmented batches, held in memory, with the same validation."""
    import dataclasses

    import keras

    from harness.data import dataset
    from harness.run import train

    plain = dataset.make_datasets(dataclasses.replace(config, augment="none"))
    x, y = _in_memory(plain.train)
    x_val, y_val = _in_memory(plain.val)
    model = train._compiled_model(config, len(plain.train))
    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.started)

    model.fit(x, y, batch_size=config.batch_size, epochs=config.epochs, validation_data=(x_val, y_val),
              validation_batch_size=config.batch_size, shuffle=True, verbose=0, callbacks=[EpochTimer()])
    return statistics.median(times[1:])


def _in_memory(data: Any) -> tuple[np.ndarray, Any]:
    """Every batch of one epoch of `data` (a CloudDataset), concatenated: images and targets."""
    batches = [data[index] for index in range(len(data))]
    images = np.concatenate([np.asarray(batch[0]) for batch in batches])
    targets = batches[0][1]
    if isinstance(targets, dict):  # the presence head's two outputs
        return images, {name: np.concatenate([np.asarray(batch[1][name]) for batch in batches]) for name in targets}
    return images, np.concatenate([np.asarray(batch[1]) for batch in batches])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 images, 3 epochs")
    args = parser.parse_args(argv)
    for row in run(quick=args.quick):
        print(f"{row['case']}: harness {row['value']} s, bare fit {row['reference']} s, efficiency {row['ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
