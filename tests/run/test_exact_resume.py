"""Exact resume: a run interrupted N times (mid-epoch and in validation) trains exactly what an
uninterrupted run trains: the same optimizer step count, the same metrics rows and, with
deterministic ops on CPU and the same seed, the same final weights.

Runs in this process (one TensorFlow import for all four starts) with the real `train()`. The
interruption points are exact, not lucky windows: HARNESS_PAUSE_AT holds the run still after a
known batch and a helper thread then sends it a real SIGTERM (the handler runs on the main thread).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness import config as config_module
from harness import io, runfolder
from harness.run import checkpoint, train
from tests.conftest import tiny_overrides

EPOCHS = 3


def _config(synth_dir: Path, prepared_cache: Path) -> config_module.Config:
    # 18 training images in batches of 4 = 5 steps an epoch (the last one short), 6 validation
    # images in 2 batches; dropout on, so the saved seed-generator state matters too.
    values = tiny_overrides(synth_dir, prepared_cache, epochs=EPOCHS, deterministic=True, dropout=0.2,
                            val_fraction=0.25, augment="flips", workers=2)
    return config_module.build_config(overrides=values)


def _interrupt_at(run_dir: Path, point: str, monkeypatch: pytest.MonkeyPatch) -> threading.Thread:
    """SIGTERM this process once the run is paused at `point` (HARNESS_PAUSE_AT syntax)."""
    monkeypatch.setenv("HARNESS_PAUSE_AT", point)
    return sigterm_when_paused(run_dir)


def sigterm_when_paused(run_dir: Path) -> threading.Thread:
    """SIGTERM this process once the run in `run_dir` holds still at $HARNESS_PAUSE_AT (its PAUSED_FILE);
    also used by tests/backends/jax_program.py, a child process without pytest's monkeypatch."""
    marker = run_dir / runfolder.PAUSED_FILE

    def watch() -> None:
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _weights(run_dir: Path) -> list[np.ndarray]:
    import h5py

    folder = checkpoint.latest_checkpoint(run_dir)
    arrays: list[np.ndarray] = []
    with h5py.File(folder / checkpoint.WEIGHTS_FILE, "r") as handle:
        handle.visititems(lambda name, item: arrays.append(np.asarray(item)) if hasattr(item, "shape") else None)
    return arrays


@pytest.mark.slow
def test_a_run_interrupted_three_times_ends_as_an_uninterrupted_one(synth_dir, prepared_cache, tmp_path, monkeypatch):
    config = _config(synth_dir, prepared_cache)
    monkeypatch.delenv("HARNESS_PAUSE_AT", raising=False)
    straight = train.train(config, tmp_path / "straight", "straight", verbose=0)
    assert straight["status"] == "finished"
    steps = io.read_jsonl(tmp_path / "straight" / "metrics.jsonl")[0]["step"]
    assert steps == 5

    run_dir = tmp_path / "interrupted"
    # Mid-epoch in epoch 1, in epoch 2's validation, mid-epoch in epoch 3 (a second resume of one epoch).
    for point, expected in (("1:2", (0, 2)), ("2:v1", (1, 5)), ("3:1", (2, 1)), ("3:4", (2, 4))):
        watcher = _interrupt_at(run_dir, point, monkeypatch)
        summary = train.train(config, run_dir, "interrupted", verbose=0)
        watcher.join(timeout=30)
        assert (summary["status"], summary["exit_code"]) == ("preempted", 128 + signal.SIGTERM)
        state = checkpoint.load_state(run_dir)
        assert (state.epoch, state.batch) == expected
        assert state.iterations == state.epoch * steps + state.batch  # nothing trained twice
    monkeypatch.delenv("HARNESS_PAUSE_AT")
    assert train.train(config, run_dir, "interrupted", verbose=0)["status"] == "finished"

    straight_rows = io.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert [(row["epoch"], row["step"]) for row in rows] == [(epoch, epoch * steps) for epoch in (1, 2, 3)]
    assert [(row["epoch"], row["step"]) for row in straight_rows] == [(row["epoch"], row["step"]) for row in rows]
    # Tolerance: none (exact equality). The same float32 ops in the same order on CPU with
    # TensorFlow's deterministic ops give bit-identical results, and everything a resume carries
    # (weights, Adam moments and step, dropout seed states, metric sums) is saved exactly (HDF5
    # float32, JSON integers and float32 values written as exact decimals). So any difference is a
    # resume bug (a skipped or repeated step, another dropout mask, a lost moment), never rounding;
    # such a bug moves the weights by about the learning rate (1e-3) and the metrics visibly.
    for name in ("loss", "dice_coef", "val_loss", "val_dice_coef"):
        assert [row[name] for row in rows] == [row[name] for row in straight_rows], name
    for mine, theirs in zip(_weights(run_dir), _weights(tmp_path / "straight")):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=0)
