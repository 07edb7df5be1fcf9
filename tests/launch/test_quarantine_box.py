"""A bad GPU on a box: the local launcher (one agent per GPU slot) with three GPU ids that exist only as
CUDA_VISIBLE_DEVICES values (nothing here needs a GPU), and the fake trainer failing at start whenever it
is given GPU 2 (tests/fakes/fake_train.py's FAKE_FAIL_AT_START). GPU 2 must be retired for the sweep (its
agent exits, is not restarted; the launcher and `harness status` say so), its runs given back and finished
on the other GPUs, each once, with exact histories; every attempt recorded with its GPU and cost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from harness.sweep import quarantine
from harness.sweep.store import Store
from tests.launch.conftest import create_sweep, epochs_logged, fake_sweep_spec, launch, starts

VALUES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


@pytest.mark.slow
def test_a_gpu_whose_runs_fail_at_start_is_retired_and_its_runs_finish_on_the_others(tmp_path):
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec(VALUES, epochs=2, epoch_s=0.4))
    marker = tmp_path / "bad-places"
    marker.write_text("CUDA_VISIBLE_DEVICES=2\n")
    log = tmp_path / "launch.log"
    process = launch(["--gpus", "0,1,2", "--sweep", sweep_id, "--stagger", "0.2"], root, log,
                     env={**os.environ, "FAKE_FAIL_AT_START": str(marker)})
    assert process.wait(timeout=180) == 0, log.read_text()
    text = log.read_text()
    host = socket.gethostname()
    place = f"{host} GPU 2"
    assert "[agent-2-0] retired: GPU 2 is quarantined for this sweep" in text, text
    assert "[agent-2-0] died" not in text and "(restart" not in text  # retired, never restarted
    assert "[launch] retired for sweep" in text and "agent-2-0" in text

    with Store(root) as store:
        runs = store.runs(sweep_id)
        attempts = store.attempts(sweep_id)
        (found,) = store.quarantined(sweep_id)
    assert (found.place, found.host, found.gpu) == (place, host, "2") and len(found.runs) >= quarantine.DEFAULT_AFTER
    assert sorted(run.config["quality"] for run in runs) == VALUES  # none lost, none added
    assert all(run.state == "finished" for run in runs)
    bad_runs = {attempt.run_id for attempt in attempts if attempt.gpu == "2"}
    assert bad_runs and set(found.runs) <= bad_runs
    for run in runs:
        assert epochs_logged(root, sweep_id, run.id) == [1, 2]  # every epoch once
        gpus = [start["cuda_visible_devices"] for start in starts(root, sweep_id, run.id)]
        if run.id in bad_runs:
            # It failed at start on GPU 2 (once: given back, never sent there again), then ran once elsewhere.
            assert gpus[0] == "2" and gpus[1:] in (["0"], ["1"]) and run.attempts == 2 and run.gpu in ("0", "1")
        else:
            assert gpus in (["0"], ["1"]) and run.attempts == 1
    # One attempt per process start, each with its GPU; the bad ones failed at start, cost their whole time.
    assert len(attempts) == sum(len(starts(root, sweep_id, run.id)) for run in runs)
    for attempt in attempts:
        assert attempt.launcher == "agent" and attempt.host == host and attempt.gpus == 1.0
        if attempt.gpu == "2":
            assert attempt.kind == "start_failure" and attempt.lost_s == attempt.wall_s > 0
        else:
            assert attempt.outcome == "finished" and attempt.new_epochs == 2 and attempt.lost_s == 0
    status = subprocess.run([sys.executable, "-m", "harness", "status", "--sweep", sweep_id, "--root", str(root)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"quarantined: {place}: " in status.stdout and "its agents claim no runs" in status.stdout
    assert "cost: " in status.stdout and " GPU-h in " in status.stdout and "best val_dice_coef by GPU-h" in status.stdout

    # A restarted launcher keeps the quarantine: GPU 2's agent retires at once, the others find nothing to do.
    again = launch(["--gpus", "0,1,2", "--sweep", sweep_id, "--stagger", "0"], root, log)
    assert again.wait(timeout=120) == 0, log.read_text()
    assert log.read_text().count("[agent-2-0] retired") == 2
