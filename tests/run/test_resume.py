"""Killing a run and starting it again: kill -9 and SIGTERM in the second epoch, in real subprocesses.

The child runs on a pseudo-terminal, so it shows Keras's live progress bar; the test reads it to act
at a known point (the second epoch, after its first batches) instead of guessing with sleeps.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness import io
from harness.run import checkpoint

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3
PROGRESS = re.compile(r"(\d+)/(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 generated images cached at 96x144: epochs of 24 one-image batches, long enough to act inside."""
    from harness.data import cache, synth

    data_dir = synth.synthesize(tmp_path_factory.mktemp("resume") / "data", images=32, size=(96, 144), seed=1)
    return data_dir, cache.prepare(data_dir, (96, 144), workers=1, progress=False)


class Child:
    """`python -m harness.train` on a pseudo-terminal, its output collected as it comes."""

    def __init__(self, args: list[str]):
        master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "harness.train", *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
            cwd=REPO, start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.output = ""

    def _read(self, timeout: float) -> bool:
        """Collect what the child wrote within `timeout`; False once it has closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: no writer on the terminal (the child exited)
            return self.process.poll() is None
        self.output += ANSI.sub("", chunk.decode("utf-8", "replace"))
        return bool(chunk)

    def wait_for_batch(self, epoch: int, batch: int, timeout: float = 240) -> None:
        """Return once the progress bar shows `batch` or more batches done in `epoch`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self._read(0.02)
            marker = self.output.rfind(f"Epoch {epoch}/")
            if marker >= 0:
                done = [int(match.group(1)) for match in PROGRESS.finditer(self.output[marker + 9:])]
                if done and max(done) >= batch:
                    return
            if not alive or self.process.poll() is not None:
                break
        raise AssertionError(
            f"epoch {epoch} batch {batch} not seen (exit code {self.process.poll()}); output:\n{self.output[-3000:]}"
        )

    def finish(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05) and select.select([self.master], [], [], 0)[0]:
            pass
        os.close(self.master)
        if self.process.poll() is None:
            self.process.kill()
            raise AssertionError(f"child still running after {timeout} s; output:\n{self.output[-3000:]}")
        return self.process.returncode


def _args(root: Path, run_id: str, data: tuple[Path, Path]) -> list[str]:
    data_dir, cache_dir = data
    return [
        "--root", str(root), f"--run_id={run_id}", f"--data_dir={data_dir}", f"--cache_dir={cache_dir}",
        "--image_size=96x144", "--filters=4", "--depth=3", "--batch_size=1", "--val_fraction=0.25",
        "--augment=flips", "--workers=1", f"--epochs={EPOCHS}", "--learning_rate=0.003",
    ]


def _steps_per_epoch(run_dir: Path) -> int:
    return io.read_jsonl(run_dir / "metrics.jsonl")[0]["step"]


def _assert_one_continuous_history(run_dir: Path) -> list[dict]:
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == EPOCHS
    best_row = max(rows, key=lambda row: row["val_dice_coef"])
    assert (summary["best"]["value"], summary["best"]["epoch"]) == (best_row["val_dice_coef"], best_row["epoch"])
    return rows


def _best_model_scores(run_dir: Path, data: tuple[Path, Path]) -> float:
    """val_dice_coef of best.keras, measured again on the run's validation split."""
    from harness import config as config_module
    from harness.data import dataset
    from harness.run import losses

    saved = json.loads((run_dir / "config.json").read_text())
    config = config_module.from_dict({key: saved[key] for key in config_module.config_keys()})
    val = dataset.make_datasets(config).val
    model = checkpoint.load_best(run_dir)
    values = [float(losses.dice_coef(y, model.predict(x, verbose=0))) for x, y in (val[i] for i in range(len(val)))]
    return float(np.mean(values))


@pytest.mark.slow
def test_kill_9_in_the_second_epoch_resumes_at_that_epoch(slow_data, tmp_path):
    run_dir = tmp_path / "single" / "kill9"
    first = Child(_args(tmp_path, "kill9", slow_data))
    first.wait_for_batch(epoch=2, batch=3)
    first.process.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    state = checkpoint.load_state(run_dir)
    assert (state.epoch, state.batch) == (1, 0)  # the last checkpoint: the end of epoch 1
    steps = _steps_per_epoch(run_dir)
    assert state.iterations == steps
    best_before = json.loads((run_dir / "summary.json").read_text())["best"]

    second = Child(_args(tmp_path, "kill9", slow_data))
    assert second.finish() == 0, second.output[-3000:]
    assert "resuming run kill9 at epoch 2, optimizer step %d" % steps in second.output
    rows = _assert_one_continuous_history(run_dir)
    # The optimizer's step count went on from the checkpoint: no step was counted twice or lost.
    assert [row["step"] for row in rows] == [steps * epoch for epoch in range(1, EPOCHS + 1)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["value"] >= best_before["value"]
    assert _best_model_scores(run_dir, slow_data) == pytest.approx(summary["best"]["value"], abs=1e-4)


@pytest.mark.slow
def test_sigterm_saves_the_moment_exits_143_and_resumes(slow_data, tmp_path):
    run_dir = tmp_path / "single" / "term1"
    first = Child(_args(tmp_path, "term1", slow_data))
    first.wait_for_batch(epoch=2, batch=3)
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() == 128 + signal.SIGTERM, first.output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["signal"], summary["exit_code"]) == ("preempted", "SIGTERM", 143)
    steps = _steps_per_epoch(run_dir)
    state = checkpoint.load_state(run_dir)
    # Saved at the signal, not at the last epoch end: inside epoch 2, past the batches already seen.
    assert state.epoch == 1 and state.reason == "signal:SIGTERM"
    assert 3 <= state.batch < steps
    assert state.iterations == steps + state.batch
    assert [row["epoch"] for row in io.read_jsonl(run_dir / "metrics.jsonl")] == [1]

    second = Child(_args(tmp_path, "term1", slow_data))
    assert second.finish() == 0, second.output[-3000:]
    assert f"resuming run term1 at epoch 2 (saved at its batch {state.batch}" in second.output
    rows = _assert_one_continuous_history(run_dir)
    # Epoch 2 was run again from its start with the weights and optimizer state of the signal.
    assert [row["step"] for row in rows] == [steps, 2 * steps + state.batch, 3 * steps + state.batch]
    best = json.loads((run_dir / "summary.json").read_text())["best"]
    assert _best_model_scores(run_dir, slow_data) == pytest.approx(best["value"], abs=1e-4)

    # Started once more, the finished run only reports.
    checkpoint_before = (run_dir / "checkpoint" / "LATEST").read_text()
    third = subprocess.run([sys.executable, "-m", "harness.train", "--root", str(tmp_path), "--run_id=term1"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert third.returncode == 0 and "already finished" in third.stdout
    assert (run_dir / "checkpoint" / "LATEST").read_text() == checkpoint_before
    assert [row["epoch"] for row in io.read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, EPOCHS + 1))
