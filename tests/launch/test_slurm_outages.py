"""The SLURM controller through scheduler outages and sbatch errors, against the REAL test SLURM
(scripts/test_slurm.sh): slurmctld and slurmdbd are really stopped and started again mid-sweep.

Only the transient-sbatch test puts a wrapper in front of the real `sbatch` (a fault injector that fails
its first calls, then runs the real one): a refusal that comes and goes cannot be produced on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.sweep.store import Store
from tests.launch.conftest import create_sweep, epochs_logged, fake_sweep_spec, launch, starts, wait_until
from tests.launch.test_slurm import _jobs_named

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STATE_DIR = Path(os.environ.get("CLOUDSWEEP_SLURM_STATE", "/tmp/cloudsweep-slurm"))
GRACE_S = 5  # the controller's grace for a job the scheduler does not list; the outage lasts 4x longer


def _pid(name: str) -> int | None:
    path = STATE_DIR / "pids" / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _stop_daemon(name: str) -> None:
    pid = _pid(name)
    assert pid is not None, f"{name} is not running (no live pid in {STATE_DIR / 'pids'})"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: _pid(name) is None, 30, f"{name} to stop")


def _start_daemon(name: str, ready: list[str]) -> None:
    if _pid(name) is None:
        subprocess.run([f"/usr/sbin/{name}"], check=True, timeout=60)  # no -i: slurmctld recovers its jobs
    wait_until(lambda: subprocess.run(ready, capture_output=True, timeout=30).returncode == 0, 60,
               f"{name} to answer `{' '.join(ready)}`", poll_s=0.5)


def _restore_cluster() -> None:
    _start_daemon("slurmdbd", ["sacctmgr", "-n", "list", "cluster"])
    _start_daemon("slurmctld", ["scontrol", "ping"])


def test_an_outage_of_slurmctld_and_slurmdbd_longer_than_the_grace_loses_and_doubles_nothing(
        tmp_path: Path, slurm_cluster, monkeypatch):
    monkeypatch.setenv("HARNESS_SLURM_UNKNOWN_GRACE_S", str(GRACE_S))
    root = tmp_path / "runs"
    values = [0.1, 0.2, 0.3]
    sweep_id = create_sweep(root, fake_sweep_spec(values, epochs=8, epoch_s=1.0))
    log = tmp_path / "launch.log"
    process = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "2"], root, log)
    try:
        def two_training() -> bool:
            with Store(root) as store:
                running = [run for run in store.runs(sweep_id) if run.job_id and run.state == "running"]
            return len(running) == 2 and all(epochs_logged(root, sweep_id, run.id) for run in running)

        wait_until(two_training, 120, "two jobs training")
        _stop_daemon("slurmctld")
        _stop_daemon("slurmdbd")
        wait_until(lambda: "the scheduler does not answer" in log.read_text(), 60, "the launcher to see the outage")
        outage_start = time.monotonic()
        # Hold the outage for 4x the grace: with sacct and squeue failing, the old controller counted the
        # jobs as over and resubmitted their runs beside the originals.
        wait_until(lambda: time.monotonic() - outage_start > 4 * GRACE_S, 4 * GRACE_S + 10, "the outage to last")
        assert process.poll() is None, log.read_text()
    finally:
        _restore_cluster()
    assert process.wait(timeout=240) == 0, log.read_text()
    text = log.read_text()
    assert "the scheduler answers again" in text and "not listed by SLURM any more" not in text
    with Store(root) as store:
        runs = store.runs(sweep_id)
    assert sorted(run.config["quality"] for run in runs) == values  # none lost, none added
    for run in runs:
        assert run.state == "finished" and run.attempts == 1, run
        assert len(starts(root, sweep_id, run.id)) == 1  # one process per run
        assert epochs_logged(root, sweep_id, run.id) == list(range(1, 9))
        assert _jobs_named(f"cs-{run.id}", run.job_id) == [run.job_id]  # no job submitted twice for a run


def _sbatch_wrapper(tmp_path: Path, fail_from: int, fail_until: int) -> Path:
    """A folder whose `sbatch` fails calls fail_from..fail_until (1-based), else runs the real sbatch."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    folder = tmp_path / "bin"
    folder.mkdir()
    counter = tmp_path / "sbatch-calls"
    script = folder / "sbatch"
    script.write_text(f"""#!/bin/bash
n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}
if (( n >= {fail_from} && n <= {fail_until} )); then
    echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation (injected)" >&2
    exit 1
fi
exec {real} "$@"
""")
    script.chmod(0o755)
    return folder


def test_transient_sbatch_errors_are_retried_and_spend_no_attempt(tmp_path: Path, slurm_cluster, monkeypatch):
    monkeypatch.setenv("PATH", f"{_sbatch_wrapper(tmp_path, fail_from=1, fail_until=2)}:{os.environ['PATH']}")
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.1, 0.2], epochs=1, epoch_s=0.2))
    log = tmp_path / "launch.log"
    process = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "1"], root, log)
    assert process.wait(timeout=180) == 0, log.read_text()
    text = log.read_text()
    assert text.count("sbatch failed for run") == 2 and "(try 2 of 4)" in text and "retrying in" in text
    with Store(root) as store:
        runs = store.runs(sweep_id)
    assert [(run.state, run.attempts) for run in runs] == [("finished", 1), ("finished", 1)]


def test_sbatch_that_keeps_failing_stops_submitting_keeps_the_running_job_and_exits_1(
        tmp_path: Path, slurm_cluster, monkeypatch):
    monkeypatch.setenv("PATH", f"{_sbatch_wrapper(tmp_path, fail_from=2, fail_until=10**6)}:{os.environ['PATH']}")
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.1, 0.2, 0.3], epochs=3, epoch_s=1.0))
    log = tmp_path / "launch.log"
    process = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "2"], root, log)
    assert process.wait(timeout=180) == 1, log.read_text()
    text = log.read_text()
    assert "error: sbatch failed 4 time(s) for run" in text and "watching the 1 job(s) in flight" in text
    with Store(root) as store:
        runs = store.runs(sweep_id)
    first, second = runs  # the third was never claimed: submitting stopped at the second
    assert first.state == "finished" and epochs_logged(root, sweep_id, first.id) == [1, 2, 3]
    # The claim that never became a job went back unspent: the run is resumable, 0 attempts, no job.
    assert (second.state, second.attempts, second.job_id) == ("preempted", 0, None)
