"""Live W&B from the launcher (harness.launch.sync): the runs of a local sweep log offline and the
launcher uploads them while they train, with the real wandb client (`wandb beta sync --live`,
`wandb sync`) against tests/fakes/wandb_backend.py, the real `python -m harness.train` on tiny
generated data, on a box and under `--slurm local`.

Only the W&B service is faked (it cannot run here). The runs flush their `.wandb` file every second
(WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL=1) and the sync processes stream every second (the fake's
client_env), so a test sees an epoch arrive within seconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.launch import sync as sync_module
from harness.run import checkpoint as checkpoint_module
from harness.sweep.store import Store
from tests.conftest import tiny_overrides
from tests.fakes.wandb_backend import FakeWandbBackend
from tests.launch.conftest import wait_until

pytestmark = [pytest.mark.slow]
TRAIN_COMMAND = ["${env}", "${interpreter}", "-m", "harness.train", "${args}"]


# A process that used wandb: its wandb-core serves whoever inherits WANDB_SERVICE, until it exits.
SERVICE_HOLDER = ("import os, sys, wandb; wandb.setup(); print(os.environ['WANDB_SERVICE'], flush=True); "
                  "sys.stdin.read()")


@pytest.fixture
def inherited_wandb_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The launcher starts in an environment naming another process's wandb service (WANDB_SERVICE), as
    from a notebook or a test session that used wandb before (how CI failed the run-sigkill case: the
    killed run's stream stayed open in the test process's service, its .wandb file kept growing and
    its live sync never ended). The runs must start their own."""
    holder = subprocess.Popen([sys.executable, "-c", SERVICE_HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 120)
        token = holder.stdout.readline().strip() if ready else ""
        assert token, f"the service holder printed no WANDB_SERVICE within 120 s (exit {holder.poll()})"
        monkeypatch.setenv("WANDB_SERVICE", token)
        yield token
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


@pytest.fixture
def offline_runs(wandb_backend: FakeWandbBackend, inherited_wandb_service: str,
                 monkeypatch: pytest.MonkeyPatch) -> FakeWandbBackend:
    """The fake backend; runs log offline (as on compute nodes) and flush their .wandb every second;
    the launcher's environment names another process's wandb service (see inherited_wandb_service)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL", "1")
    return wandb_backend


def local_sweep(root: Path, workdir: Path, synth_dir: Path, cache: Path, rates: list[float], epochs: int,
                steps_per_epoch: int = 2) -> str:
    fixed = tiny_overrides(synth_dir, cache, epochs=epochs, steps_per_epoch=steps_per_epoch)
    fixed["validation_steps"] = 1
    fixed["allow_cpu"] = True  # SLURM hands the runs its fake GPUs: train on the CPU (else exit 2)
    spec = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"learning_rate": {"values": rates}, **{key: {"value": value} for key, value in fixed.items()}},
            "command": TRAIN_COMMAND}
    with Store(root) as store:
        return store.create_sweep(spec, workdir=workdir)


def launch(args: list[str], root: Path, log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.launch", *args, "--root", str(root)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(process: subprocess.Popen, log: Path, timeout_s: float = 300) -> int:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the launcher did not exit within {timeout_s:.0f} s:\n{log.read_text()}") from None


def harness_sync(sweep_id: str, root: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "sync", "--sweep", sweep_id, "--root", str(root)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def metric_rows(root: Path, sweep_id: str, run_id: str) -> list[dict[str, Any]]:
    path = root / sweep_id / run_id / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_ids(root: Path, sweep_id: str) -> list[str]:
    with Store(root) as store:
        return [run.id for run in store.runs(sweep_id)]


def assert_one_wandb_run_per_run(backend: FakeWandbBackend, root: Path, sweep_id: str, epochs: int) -> None:
    for run_id in run_ids(root, sweep_id):
        run = backend.run(run_id)
        assert run.received_steps() == list(range(1, epochs + 1)), (run_id, run.received_steps())
        assert run.steps() == list(range(1, epochs + 1))
        assert run.group == sweep_id and run.config["sweep_id"] == sweep_id
        assert run.config["device"]["device"] == "CPU" and run.config["device"]["backend"] == "tensorflow"
        assert run.complete and run.exitcode == 0
    assert backend.errors == [] and backend.unknown_operations == []


def test_history_arrives_while_the_run_trains_on_a_box(offline_runs, tmp_path, synth_dir, prepared_cache):
    """The run is paused (SIGSTOP) after its second epoch's checkpoint, mid-training: its first epoch
    reaches W&B while it is paused, so it came live, not from an upload after the run."""
    root, log = tmp_path / "runs", tmp_path / "launch.log"
    epochs = 6
    sweep_id = local_sweep(root, tmp_path, synth_dir, prepared_cache, [0.01], epochs=epochs)
    process = launch(["--gpus", "none", "--agents", "1", "--sync", "--sweep", sweep_id], root, log, tmp_path)
    paused = None
    try:
        wait_until(lambda: run_ids(root, sweep_id), 60, "the run's claim")
        (run_id,) = run_ids(root, sweep_id)
        folder = root / sweep_id / run_id

        def second_checkpoint() -> bool:  # written after epoch 2 was logged: epoch 1's row left long ago
            state = checkpoint_module.load_state(folder)
            return state is not None and state.epoch >= 2

        wait_until(second_checkpoint, 240, "the second epoch's checkpoint", poll_s=0.02)
        with Store(root) as store:
            paused = store.get_run(run_id).pid
        os.kill(paused, signal.SIGSTOP)
        trained = len(metric_rows(root, sweep_id, run_id))
        assert trained < epochs
        wait_until(lambda: run_id in offline_runs.runs and offline_runs.run(run_id).received_steps()[:1] == [1], 90,
                   f"the first epoch at the fake ({log.read_text()})", poll_s=0.1)
        assert len(metric_rows(root, sweep_id, run_id)) == trained  # still paused mid-training
        os.kill(paused, signal.SIGCONT)
        paused = None
        assert finish(process, log) == 0, log.read_text()
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        if process.poll() is None:
            process.kill()
    assert_one_wandb_run_per_run(offline_runs, root, sweep_id, epochs)
    assert "every offline W&B run of" in log.read_text()
    # Everything went live: a `harness sync` afterwards has nothing to upload and sends nothing.
    again = harness_sync(sweep_id, root, tmp_path)
    assert again.returncode == 0 and "nothing new to upload" in again.stdout, again.stdout + again.stderr
    assert offline_runs.run(run_id).received_steps() == list(range(1, epochs + 1))


@pytest.mark.parametrize("interruption", [
    "launcher-sigterm",
    "run-sigkill",
])
def test_an_interrupted_and_resumed_run_is_one_wandb_run_with_each_step_once(offline_runs, tmp_path, synth_dir,
                                                                             prepared_cache, interruption):
    """launcher-sigterm: the run saves and is recorded preempted. run-sigkill: the run's process is
    killed -9 right after its second epoch's checkpoint (frozen with SIGSTOP first, so the checkpoint
    and the epochs it logged are known to match, and killed once those reached W&B). Either way the resumed run writes a second offline
    folder with the same id, and W&B ends with one run, steps 1..N once each."""
    root, log = tmp_path / "runs", tmp_path / "launch.log"
    epochs = 5
    sweep_id = local_sweep(root, tmp_path, synth_dir, prepared_cache, [0.01], epochs=epochs, steps_per_epoch=6)
    first = launch(["--gpus", "none", "--agents", "1", "--count", "1", "--max-restarts", "0", "--sync",
                    "--sweep", sweep_id], root, log, tmp_path)
    try:
        wait_until(lambda: run_ids(root, sweep_id), 60, "the run's claim")
        (run_id,) = run_ids(root, sweep_id)
        folder = root / sweep_id / run_id
        if interruption == "launcher-sigterm":
            wait_until(lambda: len(metric_rows(root, sweep_id, run_id)) >= 2, 240, "two epochs", poll_s=0.05)
            first.send_signal(signal.SIGTERM)  # the run saves a checkpoint and is recorded preempted
            assert finish(first, log) == 128 + signal.SIGTERM, log.read_text()
        else:
            def second_checkpoint() -> bool:
                state = checkpoint_module.load_state(folder)
                return state is not None and state.epoch >= 2

            wait_until(second_checkpoint, 240, "the second epoch's checkpoint", poll_s=0.01)
            with Store(root) as store:
                pid = store.get_run(run_id).pid
            os.kill(pid, signal.SIGSTOP)
            assert len(metric_rows(root, sweep_id, run_id)) == checkpoint_module.load_state(folder).epoch == 2
            # A kill -9 loses what W&B had not flushed to the .wandb file yet (at most its flush
            # interval, documented): kill once both epochs are out, so the test knows what to expect.
            wait_until(lambda: run_id in offline_runs.runs and offline_runs.run(run_id).received_steps() == [1, 2],
                       90, "the killed process's two epochs at the fake", poll_s=0.1)
            os.kill(pid, signal.SIGKILL)
            # --count 1: the agent is done after the crash; the run is left to resume.
            assert finish(first, log) == 0, log.read_text()
            assert f"run {run_id} preempted" in log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    assert len(metric_rows(root, sweep_id, run_id)) < epochs
    second = launch(["--gpus", "none", "--agents", "1", "--sync", "--resume", "--sweep", sweep_id], root, log, tmp_path)
    assert finish(second, log) == 0, log.read_text()
    folders = sync_module.offline_folders(root, sweep_id)[run_id]
    assert len(folders) == 2 and all(sync_module.is_synced(folder) for folder in folders)
    assert_one_wandb_run_per_run(offline_runs, root, sweep_id, epochs)


@pytest.mark.slurm
def test_slurm_controller_syncs_through_an_outage_and_catches_up(offline_runs, tmp_path, synth_dir, prepared_cache,
                                                                 slurm_cluster):
    """The W&B service answers 503 to everything while the runs train; once it is back, every epoch of
    every run arrives, once."""
    root, log = tmp_path / "runs", tmp_path / "launch.log"
    epochs = 3
    sweep_id = local_sweep(root, tmp_path, synth_dir, prepared_cache, [0.01, 0.001], epochs=epochs)
    offline_runs.outage = True
    process = launch(["--slurm", "local", "--parallel", "2", "--sync", "--sweep", sweep_id], root, log, tmp_path)
    try:
        def epochs_done() -> int:
            return sum(len(metric_rows(root, sweep_id, run_id)) for run_id in run_ids(root, sweep_id))

        wait_until(lambda: epochs_done() >= 2, 240, f"epochs trained during the outage ({log.read_text()})")
        wait_until(lambda: offline_runs.refused > 0, 60, "a sync attempt during the outage")
        assert all(not run.received for run in offline_runs.runs.values())
        offline_runs.outage = False
        assert finish(process, log, 400) == 0, log.read_text()
    finally:
        offline_runs.outage = False
        if process.poll() is None:
            process.kill()
    assert len(run_ids(root, sweep_id)) == 2
    assert_one_wandb_run_per_run(offline_runs, root, sweep_id, epochs)


def test_harness_sync_uploads_a_fully_offline_sweep_once(offline_runs, tmp_path, synth_dir, prepared_cache):
    root, log = tmp_path / "runs", tmp_path / "launch.log"
    epochs = 2
    sweep_id = local_sweep(root, tmp_path, synth_dir, prepared_cache, [0.01, 0.001], epochs=epochs)
    process = launch(["--gpus", "none", "--agents", "1", "--sweep", sweep_id], root, log, tmp_path)  # no --sync
    assert finish(process, log) == 0, log.read_text()
    assert offline_runs.runs == {}  # air-gapped: nothing reached W&B
    # A process killed before W&B wrote anything leaves a header-only .wandb file, and `wandb sync` of
    # such a file fails the whole batch (issue 13's note): `harness sync` must leave it out.
    real = next(iter(sync_module.offline_folders(root, sweep_id).values()))[0]
    dead = root / sweep_id / "deadrun1" / "wandb" / "offline-run-20200101_000000-deadrun1"
    dead.mkdir(parents=True)
    sync_module.wandb_file(dead).write_bytes(sync_module.wandb_file(real).read_bytes()[:sync_module.HEADER_BYTES])
    first = harness_sync(sweep_id, root, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "uploaded 2 offline folder(s)" in first.stdout
    assert "1 folder(s) of processes that wrote nothing: skipped (deadrun1/" in first.stdout
    assert "deadrun1" not in offline_runs.runs
    assert_one_wandb_run_per_run(offline_runs, root, sweep_id, epochs)
    operations = len(offline_runs.operations)
    second = harness_sync(sweep_id, root, tmp_path)
    assert second.returncode == 0 and "nothing new to upload" in second.stdout, second.stdout + second.stderr
    assert len(offline_runs.operations) == operations  # not a single request
    assert_one_wandb_run_per_run(offline_runs, root, sweep_id, epochs)


def test_sync_is_refused_for_a_wandb_sweep_and_an_unknown_sweep(tmp_path):
    refused = subprocess.run([sys.executable, "-m", "harness.launch", "--gpus", "none", "--agents", "1", "--sync",
                              "--sweep", "team/project/abc123", "--root", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--sync is for local sweeps" in refused.stderr, refused.stderr
    missing = harness_sync("local-00000000", tmp_path / "runs", tmp_path)
    assert missing.returncode == 2 and "no run folders of sweep local-00000000" in missing.stderr, missing.stderr
