"""Sweeps on a REAL multi-node SLURM (scripts/test_slurm.sh multinode: a controller, slurmdbd and
three compute nodes, each `slurmd` in its own network namespace on a private bridge, 2 fake GPUs per
node). Nothing is mocked: jobs are placed on different nodes by SLURM, a node is lost by killing
every process in its namespace, and SLURM itself notices (SlurmdTimeout/MessageTimeout 5 s), marks
it DOWN and requeues its jobs.

The launcher and every SLURM command here reach this cluster through its own SLURM_CONF in their
environment (`slurm_multinode.env`); the single-node cluster of test_slurm.py is left alone.
Runs are tests/fakes/fake_train.py (the run-folder contract, seconds per run), except in the network-partition
and W&B job-array tests, which run the real `python -m harness.train` (its lease; `wandb agent`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from harness import processes
from harness.run import lease
from harness.sweep.store import Store
from tests.launch.conftest import (TEST_SLURM, MultiNodeCluster, create_sweep, epochs_logged, fake_sweep_spec,
                                   launch, real_trainer_spec, starts, wait_until)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Node loss: 4 runs of 10 one-second epochs on 3 nodes x 2 GPUs (room elsewhere for the lost node's runs).
LOSS_VALUES = [0.2, 0.4, 0.6, 0.8]
LOSS_EPOCHS = 10


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


FINAL_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")


def _sacct(cluster: MultiNodeCluster, job_ids: list[str], duplicates: bool = False,
           rows: int | None = None) -> list[dict[str, str]]:
    """sacct rows (-D: one per start of a requeued job, oldest first) of these finished jobs, once
    slurmdbd has recorded them all (`rows` of them): it lags the controller by a few seconds, and
    until then a job has no row, an unfinished one, or one named `allocation`."""
    names = ("job_id", "name", "state", "nodes", "start", "end", "tres")
    found: list[dict[str, str]] = []

    def settled() -> bool:
        nonlocal found
        listing = cluster.slurm("sacct", "-X", "-n", "-P", *(["-D"] if duplicates else []),
                                "-o", "JobID,JobName,State,NodeList,Start,End,AllocTRES", "-j", ",".join(job_ids))
        found = [dict(zip(names, line.split("|"))) for line in listing.splitlines() if line]
        recorded = all(row["name"] != "allocation" and row["state"].startswith(FINAL_STATES)
                       and row["end"] not in ("", "Unknown") for row in found)
        return recorded and {row["job_id"] for row in found} >= set(job_ids) and (rows is None or len(found) == rows)

    try:
        wait_until(settled, 60, f"slurmdbd to record jobs {job_ids}", poll_s=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; last sacct rows: {found}") from None
    return found


def _jobs_named(cluster: MultiNodeCluster, name: str, expected: list[str]) -> list[str]:
    """Every job of the last hour named `name`, once slurmdbd lists at least the `expected` ones."""
    found: list[str] = []

    def listed() -> bool:
        nonlocal found
        found = cluster.slurm("sacct", "-X", "-n", "-P", "-o", "JobID", "--name", name, "-S", "now-1hour").split()
        return set(found) >= set(expected)

    wait_until(listed, 60, f"slurmdbd to list jobs named {name}", poll_s=0.5)
    return found


def _checkpoint_epoch(root: Path, sweep_id: str, run_id: str) -> int:
    path = root / sweep_id / run_id / "checkpoint" / "state.json"
    return json.loads(path.read_text())["epoch"] if path.exists() else 0


def test_local_sweep_spreads_over_nodes_each_run_on_its_own_gpu(tmp_path, slurm_multinode):
    cluster = slurm_multinode
    root = tmp_path / "runs"
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    sweep_id = create_sweep(root, fake_sweep_spec(values, epochs=3, epoch_s=1.0))
    log = tmp_path / "launch.log"
    process = launch(["--slurm", "local", "--sweep", sweep_id, "--parallel", "6"], root, log, env=cluster.env)
    assert process.wait(timeout=180) == 0, log.read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
        assert store.get_sweep(sweep_id).state == "finished"
    assert sorted(run.config["quality"] for run in runs) == values
    assert all(run.state == "finished" and run.attempts == 1 for run in runs)
    accounting = {row["job_id"]: row for row in _sacct(cluster, [run.job_id for run in runs])}
    for run in runs:
        row = accounting[run.job_id]
        (start,) = starts(root, sweep_id, run.id)
        # SLURM's accounting, the job's own host name (its node's UTS namespace) and the store agree.
        assert row["state"] == "COMPLETED" and row["name"] == f"cs-{run.id}" and "gres/gpu=1" in row["tres"]
        assert row["nodes"] in cluster.nodes
        assert start["host"] == row["nodes"] == run.host
        assert start["slurm_job_id"] == run.job_id
        assert start["cuda_visible_devices"] in ("0", "1") and run.gpu == start["cuda_visible_devices"]
    assert len({accounting[run.job_id]["nodes"] for run in runs}) >= 2
    # A fake GPU is (node, index): jobs that overlapped in time on one node had different GPUs.
    for first in runs:
        for second in runs:
            a, b = accounting[first.job_id], accounting[second.job_id]
            overlap = _stamp(a["start"]) < _stamp(b["end"]) and _stamp(b["start"]) < _stamp(a["end"])
            if first.id < second.id and overlap and a["nodes"] == b["nodes"]:
                assert first.gpu != second.gpu, (a, b)
    # submitit's sbatch and the launcher's sacct went to the multi-node cluster only (SLURM_CONF in
    # their environment): the single-node cluster never saw these jobs.
    default_env = {key: value for key, value in os.environ.items() if key != "SLURM_CONF"}
    single = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "--name", f"cs-{runs[0].id}", "-S", "now-1hour"],
                            capture_output=True, text=True, env=default_env, timeout=60)
    assert single.stdout.split() == []


def _node_loss(tmp_path: Path, cluster: MultiNodeCluster, kill_launcher: bool = False, requeue: bool = True) -> None:
    """Kill every process of the node running the last-submitted job while its runs train; check that
    each of its runs resumes on another node from its last checkpoint, and that the sweep ends with
    every run trained once. `requeue`: SLURM requeues the job (same id, JobRequeue=1); without it
    (`sbatch --no-requeue`, as at a site with JobRequeue=0) the job stays NODE_FAIL and the launcher
    submits a new one. `kill_launcher`: the launcher is killed -9 right after the node and restarted
    (same command) once SLURM has marked the node DOWN."""
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec(LOSS_VALUES, epochs=LOSS_EPOCHS, epoch_s=1.0))
    log = tmp_path / "launch.log"
    command = ["--slurm", "local", "--sweep", sweep_id, "--parallel", "6"]
    if not requeue:
        profiles = tmp_path / "slurm.yaml"
        profiles.write_text("profiles:\n  norequeue:\n    partition: debug\n    gpus_per_job: 1\n    cpus_per_job: 1\n"
                            "    mem_gb: 2\n    time_min: 60\n    sbatch: {no-requeue: true}\n")
        command = ["--slurm", "norequeue", "--profiles", str(profiles), "--sweep", sweep_id, "--parallel", "6"]
    launcher = launch(command, root, log, env=cluster.env)
    try:
        with Store(root) as store:
            def all_started() -> bool:
                runs = store.runs(sweep_id)
                return len(runs) == len(LOSS_VALUES) and all(starts(root, sweep_id, run.id) for run in runs)

            wait_until(all_started, 120, "every run started on a node")
            runs = store.runs(sweep_id)
        host_of = {run.id: starts(root, sweep_id, run.id)[0]["host"] for run in runs}
        victim = host_of[max(runs, key=lambda run: int(run.job_id)).id]
        lost = [run for run in runs if host_of[run.id] == victim]
        wait_until(lambda: all(_checkpoint_epoch(root, sweep_id, run.id) >= 2 for run in lost), 60,
                   f"two epochs of the runs on {victim}")
        killed_at = time.time()
        cluster.script("kill-node", victim)  # slurmd, slurmstepd and the runs: all SIGKILL at once
        all_dead_at = time.time()  # the processes died between killed_at and this
        saved = {run.id: _checkpoint_epoch(root, sweep_id, run.id) for run in lost}
        if kill_launcher:
            launcher.send_signal(signal.SIGKILL)
            launcher.wait(timeout=30)
            wait_until(lambda: cluster.node_state(victim).startswith("down"), 90, f"SLURM to mark {victim} DOWN")
            down_at = time.time()
            launcher = launch(command, root, log, env=cluster.env)
        else:
            wait_until(lambda: cluster.node_state(victim).startswith("down"), 90, f"SLURM to mark {victim} DOWN")
            down_at = time.time()

        def training_again(run_id: str) -> bool:
            return len(starts(root, sweep_id, run_id)) >= 2 and len(epochs_logged(root, sweep_id, run_id)) > saved[run_id]

        wait_until(lambda: all(training_again(run.id) for run in lost), 120, f"the runs of {victim} training again")
        # The node comes back: its slurmd restarts (ReturnToService=2 returns it; the script also runs
        # `scontrol update nodename=... state=resume` if it stays down) and the sweep goes on.
        cluster.script("start-node", victim)
        assert cluster.node_state(victim).startswith(("idle", "mix", "alloc"))
        assert launcher.wait(timeout=180) == 0, log.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()

    with Store(root) as store:
        final = store.runs(sweep_id)
    assert sorted(run.config["quality"] for run in final) == LOSS_VALUES  # none lost, none added
    assert all(run.state == "finished" for run in final)
    by_id = {run.id: run for run in final}
    restarted_after, training_after, work_lost = [], [], []
    for run in lost:
        first, second = starts(root, sweep_id, run.id)  # two processes: the killed one and one resume
        assert first["host"] == victim and second["host"] != victim
        assert first["slurm_job_id"] == run.job_id
        if requeue:
            # SLURM requeued the same job; the launcher did not also submit a second one.
            assert second["slurm_job_id"] == run.job_id == by_id[run.id].job_id and second["restart_count"] == "1"
            assert by_id[run.id].attempts == 1
            assert _jobs_named(cluster, f"cs-{run.id}", [run.job_id]) == [run.job_id]
            attempts = _sacct(cluster, [run.job_id], duplicates=True, rows=2)
            assert [row["state"] for row in attempts] == ["NODE_FAIL", "COMPLETED"]
        else:
            # The job ended NODE_FAIL for good; the launcher submitted one new job that resumed the run.
            assert second["slurm_job_id"] == by_id[run.id].job_id != run.job_id and second["restart_count"] is None
            assert by_id[run.id].attempts == 2
            both = [run.job_id, second["slurm_job_id"]]
            assert _jobs_named(cluster, f"cs-{run.id}", both) == both
            attempts = _sacct(cluster, both, duplicates=True, rows=2)
            assert [row["state"] for row in attempts] == ["NODE_FAIL", "COMPLETED"]
        assert attempts[0]["nodes"] == victim and attempts[1]["nodes"] == second["host"]
        # Resumed from its last checkpoint: only the epoch in flight at the kill was lost.
        assert saved[run.id] >= 2 and second["start_epoch"] == saved[run.id] + 1
        assert epochs_logged(root, sweep_id, run.id) == list(range(1, LOSS_EPOCHS + 1))
        assert by_id[run.id].host == second["host"] and len(by_id[run.id].metric_values) == LOSS_EPOCHS
        rows = _metrics(root, sweep_id, run.id)
        first_row_after = min(row["time"] for row in rows if row["epoch"] == saved[run.id] + 1)
        last_saved = max(row["time"] for row in rows if row["epoch"] == saved[run.id])
        # At most the epoch in flight (1 s, plus its writes) was lost.
        assert last_saved < all_dead_at and all_dead_at - last_saved < 1.0 + 0.3 + (all_dead_at - killed_at)
        work_lost.append(all_dead_at - last_saved)
        restarted_after.append(second["time"] - killed_at)
        training_after.append(first_row_after - killed_at)
    for run in final:
        if run.id not in saved:
            assert run.attempts == 1
            assert len(starts(root, sweep_id, run.id)) == 1
            assert epochs_logged(root, sweep_id, run.id) == list(range(1, LOSS_EPOCHS + 1))
    if kill_launcher:
        assert log.read_text().count("re-attached to job") == len(LOSS_VALUES)
    print(f"\n[node loss, {'requeue' if requeue else 'no requeue'}{', launcher -9' if kill_launcher else ''}] "
          f"{victim} killed with {len(lost)} run(s): DOWN after {down_at - killed_at:.1f} s, "
          f"resumed process started after {max(restarted_after):.1f} s, first new epoch after "
          f"{max(training_after):.1f} s; work lost per run: at most {max(work_lost):.2f} s of the 1 s epoch in flight "
          f"(kill took {all_dead_at - killed_at:.2f} s)")


def _metrics(root: Path, sweep_id: str, run_id: str) -> list[dict]:
    path = root / sweep_id / run_id / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lost_node_runs_are_requeued_and_resume_elsewhere_from_their_checkpoint(tmp_path, slurm_multinode):
    _node_loss(tmp_path, slurm_multinode, kill_launcher=False)


def test_lost_node_without_requeue_runs_are_resubmitted_and_resume_elsewhere(tmp_path, slurm_multinode):
    _node_loss(tmp_path, slurm_multinode, requeue=False)


def test_launcher_killed_during_node_loss_reattaches_and_the_sweep_finishes(tmp_path, slurm_multinode):
    _node_loss(tmp_path, slurm_multinode, kill_launcher=True)


def test_stop_leaves_no_namespace_link_or_daemon(slurm_multinode_session):
    """A second small multi-node cluster (own tag, subnet, ports, state folder) brought up, given a
    running job, and stopped: nothing of it may remain; the other clusters are untouched."""
    state = Path(f"/tmp/cloudsweep-slurm-stoptest-{os.getpid()}")  # not under pytest's 0700 tmp: mariadbd reads it
    tag, environment = "cst", {**os.environ, "CLOUDSWEEP_MULTINODE_TAG": "cst", "CLOUDSWEEP_MULTINODE_NODES": "2",
                               "CLOUDSWEEP_MULTINODE_SUBNET": "10.213.1", "CLOUDSWEEP_MULTINODE_PORT": "6837"}

    def script(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TEST_SLURM), "multinode", action, str(state)], capture_output=True,
                              text=True, env=environment, timeout=300)

    def ours(text: str) -> list[str]:
        return [line for line in text.splitlines() if f"{tag}-" in line]

    try:
        started_at = time.monotonic()
        started = script("start")
        assert started.returncode == 0, started.stdout + started.stderr
        start_s = time.monotonic() - started_at
        cluster = MultiNodeCluster(state, nodes=("node1", "node2"))
        assert sorted(cluster.slurm("srun", "-N2", "hostname").split()) == ["node1", "node2"]
        job = cluster.slurm("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 300").strip()
        namespaces = [f"{tag}-node1", f"{tag}-node2"]

        def namespace_pids() -> set[int]:
            return {int(pid) for ns in namespaces
                    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()}

        def command_line(pid: int) -> str:
            try:
                return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
            except OSError:
                return ""

        # squeue says RUNNING a moment before slurmd has started the job's processes: wait for the sleep.
        wait_until(lambda: any(command_line(pid) == "sleep 300" for pid in namespace_pids()), 30,
                   f"job {job}'s process in a node namespace")
        pids = namespace_pids()
        for pidfile in [*state.glob("pids/*.pid"), state / "mariadb-run" / "mariadb.pid"]:
            pids.add(int(pidfile.read_text().strip()))
        assert len(pids) >= 2 + 4  # two slurmds, slurmstepd + the job, slurmctld, slurmdbd, mariadbd
        assert ours(subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout)
        stopped_at = time.monotonic()
        stopped = script("stop")
        stop_s = time.monotonic() - stopped_at
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert ours(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout) == []
        assert ours(subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout) == []
        assert "10.213.1." not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert alive == [], [Path(f"/proc/{pid}/cmdline").read_text() for pid in alive]
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        assert not any(f":{port} " in listening for port in (6837, 6839, 6840))
        # The shared munged and the other clusters are still there.
        assert slurm_multinode_session.node_states() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0
        print(f"\n[stop test] start {start_s:.1f} s, stop {stop_s:.1f} s")
    finally:
        script("stop")
        subprocess.run(["rm", "-rf", str(state)], check=False)


def _log_has(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text()


def _run_state(folder: Path) -> dict[str, bytes]:
    """What a trainer writes into its run folder (metrics, summary, config, checkpoints, best model)."""
    names = ["metrics.jsonl", "summary.json", "config.json", "best.keras"]
    names += [str(path.relative_to(folder)) for path in sorted((folder / "checkpoint").rglob("*")) if path.is_file()]
    return {name: (folder / name).read_bytes() for name in names if (folder / name).exists()}


def test_partitioned_node_keeps_its_lease_and_the_requeued_copy_backs_off(tmp_path, slurm_multinode, tiny_config):
    """A network partition with the real `python -m harness.train` (TensorFlow on CPU, tiny generated
    data): the node running the run loses its link while its processes stay alive; SLURM marks it
    DOWN and requeues the job (same id) on another node: a split brain, two copies of one job.

    The run folders are on a filesystem every node shares (here: the host's, as NFS/Lustre on a
    site), and the partition cuts SLURM's network only: the cut-off trainer keeps renewing its lease
    through the filesystem. So the lease must not expire, and the requeued copy must find it held,
    exit 75 touching nothing of the run, and its run be given back unspent; the launcher then holds
    the run back while the lease is live. When the link returns, SLURM re-contacts the node and kills
    the orphan (SIGTERM: it saves and releases its lease, or KillWait's SIGKILL: its lease expires
    after ttl + skew); only then a new job resumes from the orphan's checkpoint. The cut-off trainer
    is held still by HARNESS_PAUSE_AT after epoch 2's first batch (alive, renewing, not writing), so
    the point the new job resumes from is known. The lease journal proves one holder at a time.
    Short lease timings (ttl 6 s + skew 3 s, renewed every 2 s) make a wrong expiry show up here."""
    cluster = slurm_multinode
    root = tmp_path / "runs"
    spec = real_trainer_spec(tiny_config)
    sweep_id = create_sweep(root, spec)
    log = tmp_path / "launch.log"
    ttl_s, skew_s = 6.0, 3.0
    environment = {**cluster.env, "HARNESS_PAUSE_AT": "2:1", "HARNESS_LEASE_TTL_S": str(ttl_s),
                   "HARNESS_LEASE_SKEW_S": str(skew_s)}
    started_at = time.time()
    launcher = launch(["--slurm", "local", "--sweep", sweep_id], root, log, env=environment)
    try:
        with Store(root) as store:
            wait_until(lambda: store.runs(sweep_id) and store.runs(sweep_id)[0].job_id, 60, "a submitted job")
            run = store.runs(sweep_id)[0]
        folder = root / sweep_id / run.id
        wait_until(lambda: (folder / "paused.json").exists(), 240, "the trainer paused in epoch 2")
        paused_at = time.time()
        orphan_pid = json.loads((folder / "paused.json").read_text())["pid"]
        orphan_start = processes.process_start(orphan_pid)
        holder = lease.read(folder)
        assert holder is not None and holder.pid == orphan_pid and orphan_start is not None
        victim = holder.host
        assert victim in cluster.nodes
        before = _run_state(folder)

        link_down_at = time.time()
        cluster.script("link-down", victim)
        wait_until(lambda: cluster.node_state(victim).startswith("down"), 90, f"SLURM to mark {victim} DOWN")
        down_at = time.time()
        # The requeued copy (same job id, restart 1, another node) finds the folder held and exits 75.
        refused = f"job {run.job_id}: run {run.id} found its folder owned by another process (exit 75)"
        wait_until(lambda: _log_has(log, refused), 120, "the requeued copy to be refused by the lease")
        refused_at = time.time()
        wait_until(lambda: _log_has(log, f"[slurm] run {run.id} not submitted: its folder is held by pid {orphan_pid}"),
                   30, "the launcher to hold the run back")
        # Meanwhile the cut-off trainer lives, still holds the same lease and renews it (through the
        # shared filesystem), and nothing of the run was written by anyone.
        assert processes.process_start(orphan_pid) == orphan_start
        current = lease.read(folder)
        assert current is not None and current.token == holder.token and current.renewed > link_down_at
        assert _run_state(folder) == before
        output = (folder / "output.log").read_text()
        assert "(restart 1) on " in output and f"is in use by pid {orphan_pid} on {victim}" in output

        link_up_at = time.time()
        cluster.script("link-up", victim)
        cluster.slurm("scontrol", "update", f"nodename={victim}", "state=resume", check=False)
        # SLURM re-contacts the node, finds the job registered on the wrong node and kills the orphan.
        wait_until(lambda: processes.process_start(orphan_pid) != orphan_start, 120, "SLURM to kill the orphan")
        orphan_gone_at = time.time()
        assert launcher.wait(timeout=300) == 0, log.read_text()
        finished_at = time.time()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()

    journal = lease.read_journal(folder)
    acquired = [row for row in journal if row["event"] == "acquired"]
    # Two holders ever: the cut-off trainer and the job that finished the run; the requeued copy never held it.
    assert len(acquired) == 2, journal
    first, second = acquired
    assert (first["token"], first["pid"], first["host"]) == (holder.token, orphan_pid, victim)
    released_first = [row for row in journal if row["event"] == "released" and row["token"] == first["token"]]
    if released_first:
        # SIGTERM: the orphan saved mid-epoch and released; the new holder came after.
        (release,) = released_first
        assert journal.index(release) < journal.index(second) and release["time"] <= second["time"]
        assert release["time"] >= link_up_at and second["broke"] is None
        how = f"saved on SIGTERM and released its lease {release['time'] - link_up_at:.1f} s after link-up"
    else:
        # KillWait's SIGKILL came before the save: its lease was broken only once expired, after its death.
        assert second["broke"] is not None and "not renewed" in second["broke"], second
        assert second["time"] > orphan_gone_at
        how = "was killed before saving; its lease expired"
    assert second["time"] > link_up_at and second["previous"] in (None, first["token"])
    assert [row["event"] for row in journal][-1] == "released" and journal[-1]["token"] == second["token"]

    rows = _metrics(root, sweep_id, run.id)
    assert [row["epoch"] for row in rows] == [1, 2, 3]  # every epoch once
    assert [row["step"] for row in rows] == [2, 4, 6]  # no step trained twice or lost
    output = (folder / "output.log").read_text()
    resumed = ("resuming run {} at epoch 2 batch 2".format(run.id) if released_first
               else "resuming run {} at epoch 2,".format(run.id))
    assert output.count("resuming run") == 1 and resumed in output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 3
    with Store(root) as store:
        final = store.get_run(run.id)
    assert final.state == "finished" and final.attempts == 1 and len(final.metric_values) == 3
    # SLURM: the first job ran on the victim (NODE_FAIL), its requeued copy elsewhere (exit 75 is the
    # trainer's; the job itself completed); the run was then finished by one new job.
    (second_job,) = [job for job in _jobs_named(cluster, f"cs-{run.id}", [run.job_id]) if job != run.job_id] or [None]
    assert second_job is not None and second_job == final.job_id
    attempts = _sacct(cluster, [run.job_id], duplicates=True, rows=2)
    assert [row["state"] for row in attempts] == ["NODE_FAIL", "COMPLETED"]
    assert attempts[0]["nodes"] == victim and attempts[1]["nodes"] != victim
    (last,) = _sacct(cluster, [second_job])
    assert last["state"] == "COMPLETED" and last["nodes"] == second["host"]
    print(f"\n[partition] {victim} cut off at +{link_down_at - started_at:.0f} s (trainer paused at "
          f"+{paused_at - started_at:.0f} s): DOWN after {down_at - link_down_at:.1f} s, requeued copy refused "
          f"(exit 75) after {refused_at - link_down_at:.1f} s; link up after {link_up_at - link_down_at:.1f} s, "
          f"orphan killed by SLURM ({how}; its process gone {orphan_gone_at - link_up_at:.1f} s after link-up); new holder "
          f"{second['time'] - link_up_at:.1f} s after link-up on {second['host']}; finished "
          f"{finished_at - link_up_at:.1f} s after link-up; whole test {finished_at - started_at:.0f} s")


def test_wandb_sweep_job_array_spreads_its_agents_over_the_nodes(tmp_path, slurm_multinode, synth_dir, prepared_cache,
                                                                 monkeypatch):
    """A W&B sweep on the multi-node cluster: `harness.launch --slurm local --agents 3 --sweep E/P/ID`
    submits a job array of three real `wandb agent`s; SLURM places them on at least 2 nodes (2 GPUs
    each) and every run (the real trainer) finishes against W&B. Only W&B's server is faked
    (tests/fakes/wandb_backend.py: it cannot run here); it listens on the controller's bridge
    address, so the agents in the nodes' network namespaces reach it as they would a site's server."""
    from tests.fakes.wandb_backend import FakeWandbBackend
    from tests.launch.test_wandb import agent_logs, finish, launcher, sweep_file, wandb_sweep

    cluster = slurm_multinode
    backend = FakeWandbBackend(host=cluster.controller_address).start()
    sweep_id = None
    try:
        for key, value in backend.client_env(tmp_path / "wandb-home").items():
            monkeypatch.setenv(key, value)
        for key in ("WANDB_MODE", "WANDB_SILENT", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
            monkeypatch.delenv(key, raising=False)
        root = tmp_path / "runs"
        values = [0.001, 0.003, 0.01]
        file = sweep_file(tmp_path, synth_dir, prepared_cache, values={"learning_rate": values})
        sweep_path = wandb_sweep(file, tmp_path)
        sweep_id = sweep_path.rsplit("/", 1)[-1]
        log = tmp_path / "launch.log"
        started_at = time.time()
        process = launcher(["--slurm", "local", "--agents", "3", "--sweep", sweep_path], root, log, tmp_path,
                           env={"SLURM_CONF": str(cluster.conf)})
        assert finish(process, log, 120) == 0, log.read_text()
        listed = re.search(r"job array of 3 `wandb agent` task\(s\): (\S+)_0,", log.read_text())
        assert listed, log.read_text()
        array_job = listed.group(1)

        def all_done() -> bool:
            runs = backend.runs_of(sweep_id)
            return len(runs) == len(values) and all(run.complete for run in runs)

        wait_until(all_done, 300, f"the sweep's runs to finish ({log.read_text()})", poll_s=1.0)
        finished_at = time.time()
        runs = backend.runs_of(sweep_id)
        assert sorted(run.config["learning_rate"] for run in runs) == values, agent_logs(root, sweep_path)
        assert all(run.state == "finished" and run.exitcode == 0 and run.steps() == [1, 2] for run in runs)
        agents = backend.sweeps[sweep_id].agents
        hosts = {agents[run.agent_id]["host"] for run in runs}
        assert hosts <= set(cluster.nodes) and len(hosts) >= 2, hosts  # each run's agent ran on a node...
        # ...and SLURM's accounting agrees. Not waited for: the tasks' end. After the sweep was done,
        # some `wandb agent`s logged "Running runs: []" and then hung in their exit (wandb 0.31.0's
        # service teardown: "ConnectionResetError: Connection lost" in the one that did exit), so
        # their tasks stayed RUNNING until cancelled (seen in 2 of 2 rounds here; see the report).
        listing = cluster.slurm("sacct", "-X", "-n", "-P", "-o", "JobID,NodeList,AllocTRES", "-j", array_job)
        nodes = {line.split("|")[0]: line.split("|")[1] for line in listing.splitlines() if line}
        assert set(nodes) == {f"{array_job}_{index}" for index in range(3)}, listing
        assert len(set(nodes.values())) >= 2 and set(nodes.values()) >= hosts, (nodes, hosts)
        assert all("gres/gpu=1" in line for line in listing.splitlines() if line), listing
        assert backend.errors == [] and backend.unknown_operations == []
    finally:
        if sweep_id is not None:
            cluster.slurm("scancel", "--name", f"cs-wandb-{sweep_id}", check=False)  # the hung agents' tasks
        backend.close()
    print(f"\n[W&B array] 3 agents on {sorted(hosts)}: {len(runs)} runs finished "
          f"{finished_at - started_at:.0f} s after the launch")
