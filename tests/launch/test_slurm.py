"""Sweeps as jobs of a REAL single-node SLURM (scripts/test_slurm.sh: slurmctld, slurmd, slurmdbd,
4 fake GPUs that SLURM schedules). Nothing is mocked: sbatch, sacct, scancel, submitit's requeue.

Most runs are tests/fakes/fake_train.py (a real program keeping the run-folder contract, seconds per
run); `test_real_trainer_is_requeued_and_resumes_at_its_epoch` runs the real `harness.train`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from harness import runfolder
from harness.launch import jobs, profiles, slurm
from harness.sweep.store import Store
from tests.launch.conftest import create_sweep, epochs_logged, fake_sweep_spec, launch, real_trainer_spec, starts, wait_until

pytestmark = [pytest.mark.slurm]


FINAL_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")


def _sacct_once(job_ids: list[str]) -> list[dict[str, str]]:
    listing = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State,Start,End,AllocTRES",
                              "-j", ",".join(job_ids)], capture_output=True, text=True, check=True)
    names = ("job_id", "name", "state", "start", "end", "tres")
    return [dict(zip(names, line.split("|"))) for line in listing.stdout.splitlines() if line]


def _recorded(row: dict[str, str]) -> bool:
    """slurmdbd has the job's own record: its name (not the `allocation` placeholder slurmdbd writes when a
    step's record arrives first), a final state and an end time."""
    return row["name"] != "allocation" and row["state"].startswith(FINAL_STATES) and row["end"] not in ("", "Unknown")


def _sacct(job_ids: list[str], timeout_s: float = 60) -> list[dict[str, str]]:
    """Accounting rows of finished jobs, once slurmdbd has recorded all of them (it lags the controller by up to
    a few seconds: read too early, a job has no row, or a row named `allocation`)."""
    rows: list[dict[str, str]] = []

    def settled() -> bool:
        nonlocal rows
        rows = _sacct_once(job_ids)
        return {row["job_id"] for row in rows} >= set(job_ids) and all(_recorded(row) for row in rows)

    try:
        wait_until(settled, timeout_s, f"slurmdbd to record jobs {job_ids}", poll_s=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; last sacct rows: {rows}") from None
    return rows


def _jobs_named(name: str, expected_job: str, timeout_s: float = 60) -> list[str]:
    """Every job of the last hour named `name`, once slurmdbd lists `expected_job` under that name."""
    found: list[str] = []

    def listed() -> bool:
        nonlocal found
        listing = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "--name", name, "-S", "now-1hour"],
                                 capture_output=True, text=True, check=True)
        found = listing.stdout.split()
        return expected_job in found

    try:
        wait_until(listed, timeout_s, f"slurmdbd to list job {expected_job} as {name}", poll_s=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; last listing: {found}") from None
    return found


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in events:  # an end at the same second as a start counts first (SLURM's 1 s resolution)
        current += step
        best = max(best, current)
    return best


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_profiles_of_the_repository_match_the_test_cluster(slurm_cluster):
    profile = profiles.load_profile("local")
    assert profile.partition == slurm_cluster
    # Over 10 minutes: with less, submitit counts every USR2 (preemption) as a timeout.
    assert profile.time_min > 10 and profile.gpus_per_job == 1


@pytest.mark.slow
def test_local_sweep_runs_as_jobs_each_on_its_own_gpu_never_more_than_parallel(tmp_path, slurm_cluster):
    root = tmp_path / "runs"
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    sweep_id = create_sweep(root, fake_sweep_spec(values, epochs=2, epoch_s=0.7))
    log = tmp_path / "launch.log"
    process = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "2"], root, log)
    assert process.wait(timeout=180) == 0, log.read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
        assert store.get_sweep(sweep_id).state == "finished"
    assert sorted(run.config["quality"] for run in runs) == values
    assert all(run.state == "finished" and run.agent == "slurm" and run.attempts == 1 for run in runs)
    accounting = {row["job_id"]: row for row in _sacct([run.job_id for run in runs])}
    intervals = []
    for run in runs:
        row = accounting[run.job_id]
        assert row["name"] == f"cs-{run.id}" and row["state"] == "COMPLETED"
        assert "gres/gpu=1" in row["tres"]
        (start,) = starts(root, sweep_id, run.id)
        # SLURM gave the job one GPU; the run saw it as its only device, and the store recorded it.
        assert start["slurm_job_id"] == run.job_id
        assert start["cuda_visible_devices"] in ("0", "1", "2", "3")
        assert run.gpu == start["cuda_visible_devices"]
        assert json.loads((root / sweep_id / run.id / "slurm.json").read_text())["cuda_visible_devices"] == run.gpu
        assert len(run.metric_values) == 2 and run.best_metric == pytest.approx(run.config["quality"])
        intervals.append((_stamp(row["start"]), _stamp(row["end"])))
    # Never more than --parallel jobs at once (SLURM's own accounting). Whether two 1.4 s jobs also ran at
    # the same moment is up to SLURM's 2 s scheduling passes, so what is checked is that the launcher filled
    # both slots: two jobs submitted before the first one finished.
    assert _max_overlap(intervals) <= 2
    events = [line for line in log.read_text().splitlines() if "(new)" in line or " finished (" in line]
    assert "(new)" in events[0] and "(new)" in events[1], events[:3]
    # Jobs that overlapped in time had different GPUs.
    for first in runs:
        for second in runs:
            a, b = accounting[first.job_id], accounting[second.job_id]
            if first.id < second.id and _stamp(a["start"]) < _stamp(b["end"]) and _stamp(b["start"]) < _stamp(a["end"]):
                assert first.gpu != second.gpu
    text = log.read_text()
    assert "squeue" in text and "sacct" in text and f"harness status {sweep_id}" in text


@pytest.mark.slow
def test_interrupted_job_is_requeued_and_its_run_resumes_at_its_epoch(tmp_path, slurm_cluster, monkeypatch):
    import submitit

    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.5], epochs=4, epoch_s=1.0))
    log = tmp_path / "launch.log"
    # The interrupt lands at a known point: the job's program holds still after saving epoch 2.
    monkeypatch.setenv("FAKE_PAUSE_AFTER_EPOCH", "2")
    process = launch(["--slurm", "local", "--sweep", sweep_id], root, log)
    with Store(root) as store:
        wait_until(lambda: store.runs(sweep_id) and store.runs(sweep_id)[0].job_id, 60, "a submitted job")
        run = store.runs(sweep_id)[0]
    wait_until(lambda: (root / sweep_id / run.id / "paused.json").exists(), 90, "the run paused after epoch 2")
    assert epochs_logged(root, sweep_id, run.id) == [1, 2]
    job = submitit.SlurmJob(folder=runfolder.slurm_dir(root, sweep_id), job_id=run.job_id)
    job._interrupt()  # what SLURM preemption looks like to submitit: SIGTERM, then USR2
    assert process.wait(timeout=180) == 0, log.read_text()
    first, second = starts(root, sweep_id, run.id)
    # Same SLURM job, requeued once; the second process started after the epoch the first one saved.
    assert first["slurm_job_id"] == second["slurm_job_id"] == run.job_id
    assert second["restart_count"] == "1"
    assert second["start_epoch"] == 3  # exactly after the epoch saved at the interrupt
    assert epochs_logged(root, sweep_id, run.id) == [1, 2, 3, 4]
    with Store(root) as store:
        final = store.get_run(run.id)
    assert final.state == "finished" and final.attempts == 1 and final.job_id == run.job_id
    assert "restart 1" in log.read_text()
    assert _jobs_named(f"cs-{run.id}", run.job_id) == [run.job_id]  # requeued, not resubmitted


@pytest.mark.slow
def test_launcher_killed_and_restarted_reattaches_without_losing_or_duplicating_runs(tmp_path, slurm_cluster):
    root = tmp_path / "runs"
    values = [0.2, 0.4, 0.6, 0.8]
    sweep_id = create_sweep(root, fake_sweep_spec(values, epochs=3, epoch_s=1.0))
    log = tmp_path / "launch.log"
    first = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "2"], root, log)

    def two_jobs_running() -> bool:
        with Store(root) as store:
            return sum(1 for run in store.runs(sweep_id) if run.job_id and run.state == "running") == 2

    wait_until(two_jobs_running, 90, "two running jobs")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    time.sleep(1.0)
    second = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "2"], root, log)
    assert second.wait(timeout=180) == 0, log.read_text()
    assert log.read_text().count("re-attached to job") == 2
    with Store(root) as store:
        runs = store.runs(sweep_id)
    assert sorted(run.config["quality"] for run in runs) == values  # none lost, none added
    for run in runs:
        assert run.state == "finished" and run.attempts == 1
        assert len(starts(root, sweep_id, run.id)) == 1  # one process per run: nothing ran twice
        assert _jobs_named(f"cs-{run.id}", run.job_id) == [run.job_id]  # one job per run
        assert epochs_logged(root, sweep_id, run.id) == [1, 2, 3]


def _launch_with_setup(tmp_path: Path, root: Path, sweep_id: str, setup: str, parallel: int):
    """The launcher on a profile whose jobs run the shell line `setup` before their run; (process, log)."""
    profiles_file = tmp_path / "slurm.yaml"
    profiles_file.write_text("profiles:\n  with-setup:\n    partition: debug\n    cpus_per_job: 1\n    mem_gb: 1\n"
                             f"    time_min: 30\n    parallel: {parallel}\n    setup: [{json.dumps(setup)}]\n")
    log = tmp_path / "launch.log"
    return launch(["--slurm", "with-setup", "--profiles", str(profiles_file), "--sweep", sweep_id], root, log), log


@pytest.mark.slow
def test_jobs_that_cannot_start_their_run_fail_fast_and_stop_the_launcher(tmp_path, slurm_cluster):
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.1, 0.2, 0.3, 0.4, 0.5], epochs=1, epoch_s=0.1))
    # A setup line that fails the way a missing module or environment would.
    process, log = _launch_with_setup(tmp_path, root, sweep_id, "exit 3", parallel=3)
    assert process.wait(timeout=150) == 1, log.read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
    # No more than the 3 that showed the problem; crashed, not failed (the runs are not at fault: `--resume`
    # after the setup is mended runs them), one attempt spent each.
    assert [(run.state, run.attempts, run.failures) for run in runs] == [("crashed", 1, 1)] * 3
    assert "before starting the run" in log.read_text() and "jobs in a row" in log.read_text()


@pytest.mark.slow
def test_a_job_cancelled_by_someone_else_before_its_run_started_is_resubmitted_not_failed(tmp_path, slurm_cluster):
    """Found by the chaos test: an outside scancel that lands while the job is still in its setup
    (the run not started yet) left the run `failed` for good, as if the job's setup were broken."""
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.1], epochs=1, epoch_s=0.1))
    marker = tmp_path / "first-job-seen"
    # The first job holds in its setup (so it is cancelled before starting the run); later ones go on.
    process, log = _launch_with_setup(tmp_path, root, sweep_id, f"test -e {marker} || {{ touch {marker}; sleep 120; }}",
                                      parallel=1)
    try:
        wait_until(marker.exists, 60, "the first job in its setup")
        with Store(root) as store:
            (run,) = store.runs(sweep_id)
        first_job = run.job_id
        assert first_job and not (root / sweep_id / run.id / runfolder.PLACEMENT_FILE).exists()  # the run has not started
        subprocess.run(["scancel", first_job], check=True, timeout=30)
        assert process.wait(timeout=150) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    with Store(root) as store:
        (run,) = store.runs(sweep_id)
    text = log.read_text()
    assert f"job {first_job}: run {run.id} preempted" in text and "before starting the run" not in text, text
    assert run.state == "finished" and run.job_id != first_job and run.failures == 0
    assert epochs_logged(root, sweep_id, run.id) == [1]


@pytest.mark.slow
def test_a_job_that_fails_once_before_starting_its_run_is_resubmitted_with_one_attempt_spent(tmp_path, slurm_cluster):
    """Found by the chaos test: a job step killed -9 before it started the run (here: the first job's
    setup fails once, as a flaky node would) left the run `failed` for good. It is crashed now, one
    attempt spent, and a new job finishes it; only several such jobs in a row stop the launcher."""
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.1], epochs=1, epoch_s=0.1))
    marker = tmp_path / "first-job-seen"
    process, log = _launch_with_setup(tmp_path, root, sweep_id, f"test -e {marker} || {{ touch {marker}; exit 3; }}",
                                      parallel=1)
    try:
        assert process.wait(timeout=150) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    with Store(root) as store:
        (run,) = store.runs(sweep_id)
    text = log.read_text()
    assert f"run {run.id} crashed" in text and "before starting the run" in text, text
    assert (run.state, run.attempts, run.failures) == ("finished", 2, 1)
    assert epochs_logged(root, sweep_id, run.id) == [1]


def test_wandb_sweep_on_slurm_is_a_job_array_of_these_agents(tmp_path):
    """A W&B server cannot exist here: this checks exactly what the array would run, not W&B itself."""
    profile = profiles.load_profile("local")
    plan = slurm.wandb_array_plan("team/proj/abc123", profile, tmp_path, tasks=3, parallel=2, count=4, python="/py")
    assert plan.tasks == 3
    assert plan.argv == ("/py", "-m", "wandb", "agent", "--forward-signals", "--count", "4", "team/proj/abc123")
    assert plan.env == {"HARNESS_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    assert plan.parameters["slurm_array_parallelism"] == 2
    assert plan.parameters["gpus_per_node"] == 1 and plan.parameters["slurm_partition"] == "debug"
    assert plan.parameters["name"] == "cs-wandb-abc123"
    assert plan.executor_arguments == {"slurm_max_num_timeout": profile.max_requeues}
    assert plan.folder == tmp_path / "abc123" / "slurm" and plan.log_dir == tmp_path / "abc123" / "agents"
    task = jobs.WandbAgentTask(plan.argv, plan.env, workdir=str(tmp_path), log_dir=str(plan.log_dir))
    # SIGUSR1 (forwarded to the run: a preemption), then SIGTERM (the agent exits after its run).
    assert task.stop_signals == (signal.SIGUSR1, signal.SIGTERM)
    assert task.python_first == "/py"  # its folder goes first on the agent's PATH (W&B runs a bare `python`)


def test_an_agent_array_larger_than_the_clusters_max_array_size_is_split_and_every_agent_runs(tmp_path, slurm_cluster):
    """The test cluster allows arrays of 4 (MaxArraySize=4, scripts/test_slurm.sh): 6 agents go as 2 arrays
    (4 + 2) and all 6 run, each with its own agent number. The agent is a stand-in command (no W&B here):
    what is tested is the submission, not `wandb agent`."""
    import dataclasses
    import re
    import sys

    profile = profiles.load_profile("local")
    assert slurm.max_array_size(profile) == 4  # read from `scontrol show config`
    plan = slurm.wandb_array_plan("team/proj/abc123", profile, tmp_path, tasks=6, parallel=3,
                                  max_array_size=slurm.max_array_size(profile))
    assert plan.arrays == ((0, 4, 2), (4, 2, 1))
    stand_in = (sys.executable, "-c", "import os; print('agent of array', os.environ['SLURM_ARRAY_JOB_ID'], "
                "'task', os.environ['SLURM_ARRAY_TASK_ID'])")
    messages: list[str] = []
    submitted = slurm.submit_wandb_array(dataclasses.replace(plan, argv=stand_in), echo=messages.append)
    assert len(submitted) == 6 and "in 2 arrays" in messages[0], messages
    assert [job.result() for job in submitted] == [0] * 6  # every task ran its agent, which exited 0
    seen = {}
    for agent in range(6):
        text = (plan.log_dir / f"wandb-agent-{agent}.log").read_text()
        found = re.search(r"agent of array (\d+) task (\d+)", text)
        assert found, text
        seen[agent] = (found.group(1), int(found.group(2)))
    arrays = sorted({array_job for array_job, _ in seen.values()})
    assert len(arrays) == 2 and all(task < 4 for _, task in seen.values()), seen
    assert [seen[agent][1] for agent in range(6)] == [0, 1, 2, 3, 0, 1], seen


def test_training_job_pickles_only_plain_data(tmp_path):
    import pickle

    job = jobs.TrainingJob("r1", str(tmp_path / "r1"), ["python", "-m", "harness.train"], {"WANDB_RUN_ID": "r1"},
                           str(tmp_path), unset_env=["WANDB_SWEEP_ID"])
    job._process = subprocess.Popen(["sleep", "5"])
    try:
        state = pickle.loads(pickle.dumps(job)).__dict__
    finally:
        job._process.kill()
        job._process.wait()
    assert state["_process"] is None
    plain = (str, int, float, bool, list, dict, type(None))
    assert all(isinstance(value, plain) for value in state.values())


def test_record_placement_writes_slurm_cuda_visible_devices(tmp_path):
    placement = jobs.record_placement(tmp_path, environ={"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "3",
                                                         "SLURM_RESTART_COUNT": "2"})
    assert jobs.read_placement(tmp_path) == placement
    assert (placement["job_id"], placement["cuda_visible_devices"], placement["restart_count"]) == ("42", "3", 2)


@pytest.mark.slow
def test_real_trainer_is_requeued_and_resumes_at_its_epoch(tmp_path, slurm_cluster, tiny_config, monkeypatch):
    """The headline with the real `python -m harness.train` (TensorFlow on CPU, tiny generated data):
    a SLURM job interrupted by submitit mid-epoch (held after epoch 2's first batch by
    HARNESS_PAUSE_AT, so the point is known) is requeued (same job id) and the run goes on from that
    batch: its second batch is the next step, nothing is trained twice."""
    import submitit

    root = tmp_path / "runs"
    spec = real_trainer_spec(tiny_config)
    sweep_id = create_sweep(root, spec)
    log = tmp_path / "launch.log"
    monkeypatch.setenv("HARNESS_PAUSE_AT", "2:1")
    process = launch(["--slurm", "local", "--sweep", sweep_id], root, log)
    with Store(root) as store:
        wait_until(lambda: store.runs(sweep_id) and store.runs(sweep_id)[0].job_id, 60, "a submitted job")
        run = store.runs(sweep_id)[0]
    wait_until(lambda: (root / sweep_id / run.id / "paused.json").exists(), 200, "the trainer paused in epoch 2")
    assert epochs_logged(root, sweep_id, run.id) == [1]
    interrupted_at = time.time()
    submitit.SlurmJob(folder=runfolder.slurm_dir(root, sweep_id), job_id=run.job_id)._interrupt()
    assert process.wait(timeout=300) == 0, log.read_text()
    folder = root / sweep_id / run.id
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]  # every epoch once, none restarted from 1
    before = [row["epoch"] for row in rows if _stamp(row["time"]) <= interrupted_at]
    assert before == [1]  # interrupted in epoch 2, after its first batch...
    assert [row["step"] for row in rows] == [2, 4, 6]  # ...and no step trained twice or lost
    output = (folder / "output.log").read_text()
    assert "at epoch 2, batch 1, step 3" in output  # the checkpoint of the interrupt
    assert f"resuming run {run.id} at epoch 2 batch 2 (its first 1 batches were trained before: skipped)" in output
    placement = json.loads((folder / "slurm.json").read_text())
    assert placement["job_id"] == run.job_id and placement["restart_count"] == 1
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 3
    with Store(root) as store:
        final = store.get_run(run.id)
    assert final.state == "finished" and final.attempts == 1 and len(final.metric_values) == 3
    assert "resuming run" in (folder / "output.log").read_text()
    assert _jobs_named(f"cs-{run.id}", run.job_id) == [run.job_id]


@pytest.mark.slow
def test_hyperband_losers_are_cancelled_and_recorded_stopped(tmp_path, slurm_cluster):
    root = tmp_path / "runs"
    # 10 one-second epochs: the controller's loop (a poll every 2 s, sacct for the accounting) must see a
    # loser's early epochs while it still runs; with 6 a slow loop could find every run finished first.
    spec = fake_sweep_spec([0.9, 0.8, 0.1, 0.2], epochs=10, epoch_s=1.0)
    spec["early_terminate"] = {"type": "hyperband", "min_iter": 1, "eta": 2}
    sweep_id = create_sweep(root, spec)
    log = tmp_path / "launch.log"
    process = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "4"], root, log)
    assert process.wait(timeout=180) == 0, log.read_text()
    with Store(root) as store:
        runs = {run.config["quality"]: run for run in store.runs(sweep_id)}
    assert runs[0.9].state == "finished" and len(runs[0.9].metric_values) == 10
    loser = runs[0.1]
    assert loser.state == "stopped" and 1 <= len(loser.metric_values) < 10
    (row,) = _sacct([loser.job_id])
    assert row["state"].startswith("CANCELLED")
    # The cancelled run saved on SIGTERM: its summary says so, and its checkpoint holds its last epoch.
    summary = json.loads((root / sweep_id / loser.id / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["signal"] == "SIGTERM"
    assert f"cancelling job {loser.job_id} (run {loser.id}): hyperband" in log.read_text()
