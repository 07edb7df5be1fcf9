"""A bad node on the REAL multi-node test SLURM (scripts/test_slurm.sh multinode: 3 nodes x 2 fake GPUs,
each slurmd in its own network namespace): every run that starts on node1 fails at once (the fake trainer,
tests/fakes/fake_train.py, exits 1 when SLURMD_NODENAME matches the marker file the test writes: a node
whose GPU, driver or mount is broken). The controller must quarantine node1 (after 3 failures at start in a
row there while runs succeed on the other nodes), send no job there afterwards (--exclude), give the runs it
failed back, and finish the sweep on node2 and node3 with every run finished once, histories exact; and
record every job's attempt with SLURM's own accounting (NodeList, ElapsedRaw, AllocTRES gres/gpu)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from harness.sweep.store import Store
from tests.launch.conftest import create_sweep, epochs_logged, fake_sweep_spec, launch, starts
from tests.launch.test_slurm_multinode import _sacct

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BAD = "node1"
VALUES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
EPOCHS = 3


def test_a_node_whose_runs_fail_at_start_is_quarantined_and_the_sweep_finishes_elsewhere(tmp_path, slurm_multinode):
    cluster = slurm_multinode
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec(VALUES, epochs=EPOCHS, epoch_s=1.0))
    marker = tmp_path / "bad-places"
    marker.write_text(f"SLURMD_NODENAME={BAD}\n")
    log = tmp_path / "launch.log"
    launched_at = time.time()
    launcher = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "6"], root, log,
                      env={**cluster.env, "FAKE_FAIL_AT_START": str(marker)})
    try:
        assert launcher.wait(timeout=300) == 0, log.read_text()
        finished_at = time.time()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    text = log.read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
        attempts = store.attempts(sweep_id)
        quarantined = store.quarantined(sweep_id)
    (found,) = quarantined
    assert (found.place, found.host, found.gpu) == (BAD, BAD, None) and len(found.runs) >= 3
    assert f"[slurm] node {BAD} quarantined for sweep {sweep_id}" in text and f"--exclude={BAD}" in text, text

    # Nothing lost, nothing doubled: every cell once, finished, each epoch logged once.
    assert sorted(run.config["quality"] for run in runs) == VALUES
    assert all(run.state == "finished" for run in runs), [(run.id, run.state) for run in runs]
    failed_there = [attempt for attempt in attempts if attempt.host == BAD]
    assert failed_there and all(attempt.kind == "start_failure" and attempt.outcome == "failed" for attempt in failed_there)
    bad_runs = {attempt.run_id for attempt in failed_there}
    assert set(found.runs) <= bad_runs
    for run in runs:
        assert epochs_logged(root, sweep_id, run.id) == list(range(1, EPOCHS + 1))
        hosts = [start["host"] for start in starts(root, sweep_id, run.id)]
        if run.id in bad_runs:
            # Failed at start on node1 once, given back (no failure counted), finished by one job elsewhere.
            assert hosts[0] == BAD and len(hosts) == 2 and hosts[1] != BAD, hosts
            assert run.attempts == 2 and run.failures == 0 and run.host == hosts[1]
        else:
            assert len(hosts) == 1 and hosts[0] != BAD and run.attempts == 1

    # No job of the sweep started on node1 after the quarantine (SLURM's own accounting says where each ran).
    jobs = sorted({attempt.job_id for attempt in attempts})
    accounted = _sacct(cluster, jobs, duplicates=True, rows=len(attempts))
    for row in accounted:
        if row["nodes"] == BAD:
            assert _stamp(row["start"]) <= found.since, (row, found)
    assert len([row for row in accounted if row["nodes"] != BAD]) == len(VALUES)

    # Every attempt carries SLURM's accounting: its node, its wall time (ElapsedRaw), its GPU (gres/gpu=1).
    elapsed = {line.split("|")[0]: int(line.split("|")[1]) for line in cluster.slurm(
        "sacct", "-X", "-n", "-P", "-o", "JobID,ElapsedRaw", "-j", ",".join(jobs)).split() if "|" in line}
    for attempt in attempts:
        assert attempt.accounting == "sacct" and attempt.gpus == 1.0 and attempt.launcher == "slurm", attempt
        assert attempt.wall_s == elapsed[attempt.job_id]
        assert attempt.host == next(row["nodes"] for row in accounted if row["job_id"] == attempt.job_id)
    total_gpu_hours = sum(elapsed.values()) / 3600.0
    status = subprocess.run([sys.executable, "-m", "harness", "status", "--sweep", sweep_id, "--root", str(root)],
                            capture_output=True, text=True, timeout=60, env=cluster.env)
    assert status.returncode == 0 and f"quarantined: {BAD}: " in status.stdout, status.stdout + status.stderr
    assert f"cost: {total_gpu_hours:.3g} GPU-h in {len(attempts)} attempt(s)" in status.stdout, status.stdout

    failures = sorted(attempt.ended - launched_at for attempt in failed_there)
    resumed = sorted(min(start["time"] for start in starts(root, sweep_id, run_id)[1:]) - launched_at
                     for run_id in bad_runs)
    print(f"\n[quarantine] {len(failed_there)} run(s) failed at start on {BAD} at "
          f"{', '.join(f'+{when:.1f}' for when in failures)} s; first success elsewhere at "
          f"+{min(a.ended for a in attempts if a.kind == 'success') - launched_at:.1f} s; {BAD} quarantined "
          f"(--exclude) at +{found.since - launched_at:.1f} s; its runs restarted elsewhere at "
          f"{', '.join(f'+{when:.1f}' for when in resumed)} s; sweep finished at +{finished_at - launched_at:.1f} s; "
          f"{total_gpu_hours:.4f} GPU-h in {len(attempts)} attempts")


def _stamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()
