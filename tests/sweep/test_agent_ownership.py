"""One process per run folder under agents: the run-folder lease (harness/run/lease.py) seen from the
agent, with real agent processes, a real store and, for the kill -9 case, the real `harness.train`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import io, runfolder
from harness.run import checkpoint, lease
from harness.sweep.store import Store
from tests.conftest import tiny_overrides

from .conftest import agent_log, fake_spec, wait_for

pytestmark = pytest.mark.slow


def _run(root: Path, run_id: str):
    with Store(root) as store:
        return store.get_run(run_id)


def _crashed_run(root: Path, sweep_id: str):
    """A run whose agent died: claimed once, then marked crashed."""
    with Store(root) as store:
        run = store.claim_run(sweep_id, agent="gone:1", host="elsewhere")
        store.mark_stale(sweep_id, -1.0)
        return store.get_run(run.id)


def _hold_lease(folder: Path) -> subprocess.Popen:
    """Another process of this host that holds the folder's lease (the previous attempt, still saving)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from harness.run import lease; "
                               "lease.Lease.acquire(sys.argv[1]).start_renewing(0.2); print('held', flush=True); "
                               "time.sleep(120)", str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_an_agent_waiting_for_the_previous_process_keeps_its_claim_and_then_kills_it(root, make_sweep, fork_agents):
    sweep_id = make_sweep(fake_spec(parameters={"learning_rate": {"value": 0.001}, "epochs": {"value": 2}}))
    run = _crashed_run(root, sweep_id)
    holder = _hold_lease(runfolder.run_dir(root, sweep_id, run.id))
    try:
        # Two agents race for the crashed run; stale after 1 s, the holder outlives that 4-fold.
        agents = fork_agents(sweep_id, count=2, stale_after_s=1.0, kill_grace_s=4.0)
        for agent in agents:
            agent.join(timeout=120)
        logs = "\n".join(agent_log(agent) for agent in agents)
        assert [agent.exitcode for agent in agents] == [0, 0], logs
        assert holder.wait(timeout=10) == -signal.SIGKILL  # killed after the grace period, by pid + start time
        assert logs.count(f"waiting for its previous process {holder.pid}") == 1, logs
        assert "marked crashed" not in logs  # the waiting agent heartbeated its claim all along
        finished = _run(root, run.id)
        assert (finished.state, finished.attempts, finished.epochs_completed) == ("finished", 2, 2)
        folder = runfolder.run_dir(root, sweep_id, run.id)
        assert (folder / "output.log").read_text().count("attempt") == 1  # one child, started once
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_folder_held_on_another_host_is_given_back_without_spending_an_attempt(root, make_sweep, fork_agents):
    sweep_id = make_sweep(fake_spec(parameters={"learning_rate": {"value": 0.001}, "epochs": {"value": 1}}))
    run = _crashed_run(root, sweep_id)
    folder = runfolder.run_dir(root, sweep_id, run.id)
    folder.mkdir(parents=True)
    now = time.time()
    io.atomic_write_json(folder / lease.LEASE_FILE, {"token": "t", "host": "othernode", "pid": 99, "pid_start": "1",
                                                     "boot_id": "b", "started": now, "renewed": now, "ttl_s": 60.0})
    [agent] = fork_agents(sweep_id, stale_after_s=1.0, kill_grace_s=2.0)
    log = Path(agent.log_path)
    wait_for(lambda: log.exists() and "given back, no attempt spent" in log.read_text(), 60, "the agent to back off")
    backed_off = _run(root, run.id)
    assert backed_off.attempts == 1 and backed_off.state in ("preempted", "running")
    assert not (folder / "output.log").exists()  # no child was started
    (folder / lease.LEASE_FILE).unlink()  # the other host's process ended and released it
    agent.join(timeout=60)
    assert agent.exitcode == 0, agent_log(agent)
    finished = _run(root, run.id)
    assert (finished.state, finished.attempts) == ("finished", 2)


def test_agent_killed_with_9_its_real_trainer_saves_and_the_next_agent_resumes_at_that_batch(
        root, make_sweep, fork_agents, synth_dir, prepared_cache, monkeypatch):
    """The real `python -m harness.train`, paused at a known batch (HARNESS_PAUSE_AT) when its agent
    is killed: the child must get SIGTERM from the kernel (parent-death signal) and save exactly there;
    an orphan would train on unwatched (or, paused here, hold the folder until killed)."""
    values = tiny_overrides(synth_dir, prepared_cache, epochs=3, steps_per_epoch=3, validation_steps=1)
    spec = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {key: {"value": value} for key, value in values.items()},
            "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"]}
    sweep_id = make_sweep(spec)
    monkeypatch.setenv("HARNESS_PAUSE_AT", "2:1")
    [first] = fork_agents(sweep_id, stale_after_s=1.5)
    with Store(root) as store:
        run = wait_for(lambda: store.runs(sweep_id) and store.runs(sweep_id)[0], 60, "a claimed run")
    folder = runfolder.run_dir(root, sweep_id, run.id)
    wait_for(lambda: (folder / runfolder.PAUSED_FILE).exists(), 240, "the trainer paused after epoch 2's first batch")
    logged_before_kill = [row["epoch"] for row in io.read_jsonl(folder / "metrics.jsonl")]
    assert logged_before_kill == [1]
    os.kill(first.pid, signal.SIGKILL)
    first.join()
    monkeypatch.delenv("HARNESS_PAUSE_AT")
    [second] = fork_agents(sweep_id, stale_after_s=1.5)
    second.join(timeout=300)
    assert second.exitcode == 0, agent_log(second) + (folder / "output.log").read_text()[-3000:]
    output = (folder / "output.log").read_text()
    # Saved at the signal, inside epoch 2 after its first batch; resumed there, nothing trained twice.
    assert "checkpoint saved in" in output and "at epoch 2, batch 1, step 4" in output, output[-3000:]
    assert f"resuming run {run.id} at epoch {len(logged_before_kill) + 1} batch 2" in output
    rows = io.read_jsonl(folder / "metrics.jsonl")
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, 3), (2, 6), (3, 9)]
    final = _run(root, run.id)
    assert (final.state, final.attempts) == ("finished", 2)
    assert checkpoint.load_state(folder).iterations == 9
    assert lease.read(folder) is None  # released by the trainer that finished
