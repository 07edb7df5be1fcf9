"""Killing a run and starting it again: kill -9 and SIGTERM in mid-epoch, in real subprocesses.

The child runs on a pseudo-terminal, so it shows Keras's live progress bar; the test reads it to act
inside the second epoch instead of guessing with sleeps. The SIGTERM lands at a known batch:
HARNESS_PAUSE_AT holds the trainer still after it (and meanwhile a second trainer is started on the
same folder, and must back off at once).
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
    """32 generated images cached at 96x144: epochs of 12 two-image batches, long enough to act inside."""
    from harness.data import cache, synth

    data_dir = synth.synthesize(tmp_path_factory.mktemp("resume") / "data", images=32, size=(96, 144), seed=1)
    return data_dir, cache.prepare(data_dir, (96, 144), workers=1, progress=False)


class Child:
    """`python -m harness.train` on a pseudo-terminal, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "harness.train", *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
            cwd=REPO, start_new_session=True, env={**os.environ, **(env or {})},
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
        "--image_size=96x144", "--filters=4", "--depth=2", "--batch_size=2", "--val_fraction=0.25",
        "--augment=flips", "--workers=1", f"--epochs={EPOCHS}", "--learning_rate=0.003",
    ]


def _steps_per_epoch(run_dir: Path) -> int:
    return io.read_jsonl(run_dir / "metrics.jsonl")[0]["step"]


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
def test_a_run_killed_with_9_then_stopped_with_sigterm_continues_to_one_history(slow_data, tmp_path):
    """One run, started three times: kill -9 in epoch 2, SIGTERM in epoch 3, then to the end.

    (One scenario rather than two tests: every start of a training process costs about 20 s of
    imports and graph tracing on 2 cores, and the second start checks both kinds of resume.)
    """
    run_dir = tmp_path / "single" / "run1"

    # 1. kill -9 in the second epoch: nothing can be saved, the epoch-1 checkpoint stays in force.
    first = Child(_args(tmp_path, "run1", slow_data))
    first.wait_for_batch(epoch=2, batch=3)
    first.process.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    steps = _steps_per_epoch(run_dir)
    state = checkpoint.load_state(run_dir)
    assert (state.epoch, state.batch, state.iterations) == (1, 0, steps)
    best_after_first = json.loads((run_dir / "summary.json").read_text())["best"]

    # 2. Started again: continues at epoch 2 with the optimizer's step count; SIGTERM after epoch 3's
    #    third batch exactly (held there by HARNESS_PAUSE_AT).
    second = Child(_args(tmp_path, "run1", slow_data), env={"HARNESS_PAUSE_AT": "3:3"})
    deadline = time.monotonic() + 240
    while not (run_dir / "paused.json").exists() and second.process.poll() is None and time.monotonic() < deadline:
        second._read(0.05)
    assert (run_dir / "paused.json").exists(), second.output[-3000:]
    # Meanwhile a second trainer on the same folder backs off at once, touching nothing.
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    intruder = subprocess.run([sys.executable, "-m", "harness.train", *_args(tmp_path, "run1", slow_data)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    assert intruder.returncode == 75, intruder.stderr[-2000:]
    assert f"is in use by pid {second.process.pid}" in intruder.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before
    second.process.send_signal(signal.SIGTERM)
    assert second.finish() == 128 + signal.SIGTERM, second.output[-3000:]
    assert f"resuming run run1 at epoch 2, optimizer step {steps}" in second.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["signal"], summary["exit_code"]) == ("preempted", "SIGTERM", 143)
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, steps), (2, 2 * steps)]
    # Saved at the signal, not at the last epoch end: inside epoch 3, after exactly 3 batches.
    state = checkpoint.load_state(run_dir)
    assert (state.epoch, state.batch, state.reason, state.iterations) == (2, 3, "signal:SIGTERM", 2 * steps + 3)

    # 3. Started again: epoch 3 from its fourth batch (the first three are skipped, not retrained).
    third = Child(_args(tmp_path, "run1", slow_data))
    assert third.finish() == 0, third.output[-3000:]
    assert "resuming run run1 at epoch 3 batch 4 (its first 3 batches were trained before: skipped)" in third.output
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, steps), (2, 2 * steps), (3, 3 * steps)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["epochs_completed"]) == ("finished", EPOCHS)
    best_row = max(rows, key=lambda row: row["val_dice_coef"])
    assert (summary["best"]["value"], summary["best"]["epoch"]) == (best_row["val_dice_coef"], best_row["epoch"])
    assert summary["best"]["value"] >= best_after_first["value"]
    assert _best_model_scores(run_dir, slow_data) == pytest.approx(summary["best"]["value"], abs=1e-4)

    # 4. Started once more, the finished run only reports.
    pointer = (run_dir / "checkpoint" / "LATEST").read_text()
    fourth = subprocess.run([sys.executable, "-m", "harness.train", "--root", str(tmp_path), "--run_id=run1"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert fourth.returncode == 0 and "already finished" in fourth.stdout
    assert (run_dir / "checkpoint" / "LATEST").read_text() == pointer
    assert [row["epoch"] for row in io.read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, EPOCHS + 1))

    # 5. A LATEST that names a missing checkpoint: the run stops, naming the file and the way out;
    #    nothing is restarted from epoch 0 and the history stays as it is.
    (run_dir / "checkpoint" / "LATEST").write_text("ckpt-000099\n")
    damaged = subprocess.run([sys.executable, "-m", "harness.train", "--root", str(tmp_path), "--run_id=run1"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert damaged.returncode == 1, damaged.stderr[-2000:]
    assert "LATEST names ckpt-000099, which is missing" in damaged.stderr and "--restart" in damaged.stderr
    assert [row["epoch"] for row in io.read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, EPOCHS + 1))
