"""The harness under KERAS_BACKEND=jax, in one process (tests/backends/test_jax.py starts it).

`python -m tests.backends.jax_program WORKDIR DATA_DIR CACHE_DIR` trains the tiny UNet twice into
WORKDIR/runs/single/: `straight` uninterrupted, `interrupted` stopped by a real SIGTERM mid-epoch (held
still there by HARNESS_PAUSE_AT) and resumed; then `harness postprocess` and `harness predict` on the
straight run. It writes WORKDIR/result.json (statuses, exit codes, the backend Keras ran on, seconds per
step); the test reads the run folders themselves. One process for all of it: one JAX start, and the
programs compiled for the first run serve the others (and the compilation cache, $HARNESS_JAX_CACHE).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from harness import config as config_module
from harness.run import train
from tests.conftest import tiny_overrides
from tests.run.test_exact_resume import sigterm_when_paused

PAUSE_AT = "1:2"  # after epoch 1's second training batch


def _timed(result: dict, name: str, action):
    started = time.monotonic()
    value = action()
    result["seconds"][name] = round(time.monotonic() - started, 2)
    return value


def _train_and_resume(config: config_module.Config, runs: Path, result: dict) -> None:
    os.environ.pop("HARNESS_PAUSE_AT", None)
    straight = _timed(result, "straight", lambda: train.train(config, runs / "straight", "straight", verbose=0))
    result["straight"] = {"status": straight["status"], "device": straight.get("device")}
    os.environ["HARNESS_PAUSE_AT"] = PAUSE_AT
    watcher = sigterm_when_paused(runs / "interrupted")
    stopped = _timed(result, "interrupted", lambda: train.train(config, runs / "interrupted", "interrupted", verbose=0))
    watcher.join(timeout=30)
    os.environ.pop("HARNESS_PAUSE_AT")
    resumed = _timed(result, "resumed", lambda: train.train(config, runs / "interrupted", "interrupted", verbose=0))
    result["interrupted"] = {"status": stopped["status"], "exit_code": stopped.get("exit_code")}
    result["resumed"] = {"status": resumed["status"]}


def _evaluate(run_dir: Path, data_dir: Path, out: Path, result: dict) -> None:
    from click.testing import CliRunner

    from harness.cli import main

    runner = CliRunner()
    tuned = _timed(result, "postprocess", lambda: runner.invoke(main, ["postprocess", str(run_dir)]))
    predicted = _timed(result, "predict", lambda: runner.invoke(main, [
        "predict", str(run_dir), "--images", str(data_dir / "test_images"), "--out", str(out),
        "--sample-submission", str(data_dir / "sample_submission.csv")]))
    result["postprocess"] = {"exit_code": tuned.exit_code, "output": tuned.output[-2000:]}
    result["predict"] = {"exit_code": predicted.exit_code, "output": predicted.output[-2000:]}


def main(workdir: Path, data_dir: Path, cache_dir: Path) -> None:
    import keras

    result: dict = {"backend": keras.config.backend(), "seconds": {}}
    values = tiny_overrides(data_dir, cache_dir, epochs=2, deterministic=True, val_fraction=0.25)
    config = config_module.build_config(overrides=values)
    runs = workdir / "runs" / "single"
    try:
        _train_and_resume(config, runs, result)
        _evaluate(runs / "straight", data_dir, workdir / "submission.csv", result)
    finally:
        (workdir / "result.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main(*(Path(argument) for argument in sys.argv[1:4]))
