"""The agent end to end: real agent processes, a real SQLite store, the real `sweeps` engine and a real
child program (tests/fakes/fake_train.py, which follows the training run's file contract)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from harness import processes, runfolder
from harness.sweep import agent as sweep_agent
from harness.sweep.store import Store

from .conftest import FAKE_TRAIN, agent_log, fake_spec, wait_for

pytestmark = pytest.mark.slow


def _runs(root: Path, sweep_id: str):
    with Store(root) as store:
        return store.runs(sweep_id)


def _sweep(root: Path, sweep_id: str):
    with Store(root) as store:
        return store.get_sweep(sweep_id)


def _wait_all(processes, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        if hasattr(process, "join"):  # a forked multiprocessing.Process
            process.join(timeout=max(1.0, deadline - time.monotonic()))
            codes.append(process.exitcode)
        else:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
    return codes


def test_eight_agents_on_a_24_cell_grid_run_each_cell_exactly_once(root, make_sweep, fork_agents):
    spec = fake_spec(parameters={
        "learning_rate": {"values": [0.01, 0.001, 0.0001]},
        "filters": {"values": [4, 8]},
        "dropout": {"values": [0.0, 0.1, 0.2, 0.3]},
        "epochs": {"value": 1},
    })
    sweep_id = make_sweep(spec)
    agents = fork_agents(sweep_id, 8, epoch_seconds=0.3)
    codes = _wait_all(agents)
    assert codes == [0] * 8, [Path(agent.log_path).read_text() for agent in agents if agent.exitcode]
    runs = _runs(root, sweep_id)
    assert len(runs) == 24
    cells = {(run.config["learning_rate"], run.config["filters"], run.config["dropout"]) for run in runs}
    assert len(cells) == 24
    assert all(run.state == "finished" and run.attempts == 1 for run in runs)
    assert len({run.agent for run in runs}) >= 2  # the work was shared
    assert _sweep(root, sweep_id).state == "finished"
    for run in runs:  # each run folder is complete, and the store holds its history and summary
        folder = runfolder.run_dir(root, sweep_id, run.id)
        assert json.loads((folder / "summary.json").read_text())["status"] == "finished"
        assert run.summary["status"] == "finished" and len(run.metric_values) == 1


def test_random_and_bayes_honour_run_cap_across_agents(root, make_sweep, fork_agents):
    random_id = make_sweep(fake_spec("random", {"learning_rate": {"values": [0.1, 0.01, 0.001]},
                                                "filters": {"values": [4, 8, 16]}, "epochs": {"value": 2}},
                                     run_cap=5))
    bayes_id = make_sweep(fake_spec("bayes", {"learning_rate": {"distribution": "log_uniform_values",
                                                                "min": 1e-5, "max": 1e-1},
                                              "epochs": {"value": 2}}, run_cap=4))
    agents = fork_agents(random_id, 3) + fork_agents(bayes_id, 2)
    assert _wait_all(agents) == [0] * 5
    for sweep_id, cap in ((random_id, 5), (bayes_id, 4)):
        runs = _runs(root, sweep_id)
        assert len(runs) == cap
        assert all(run.state == "finished" for run in runs)
        assert _sweep(root, sweep_id).state == "finished"
    # bayes received the finished runs' metrics: its later proposals come from a fitted model
    bayes_runs = _runs(root, bayes_id)
    assert "no valid samples" in bayes_runs[0].search_info["warnings"]
    assert any(run.search_info["predicted_value"] != 0.0 for run in bayes_runs[1:])


def test_hyperband_stops_a_lagging_run(root, make_sweep, fork_agents):
    spec = fake_spec(parameters={"dropout": {"values": [0.0, 0.1, 0.95]}, "epochs": {"value": 4}},
                     early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    sweep_id = make_sweep(spec)
    [agent] = fork_agents(sweep_id, epoch_seconds=0.3)
    assert _wait_all([agent]) == [0], agent_log(agent)
    by_dropout = {run.config["dropout"]: run for run in _runs(root, sweep_id)}
    assert by_dropout[0.0].state == by_dropout[0.1].state == "finished"
    assert by_dropout[0.0].epochs_completed == by_dropout[0.1].epochs_completed == 4
    lagging = by_dropout[0.95]
    assert lagging.state == "stopped" and lagging.stop_requested
    assert lagging.epochs_completed < 4 and lagging.exit_code == 143
    assert "hyperband: stopping run " + lagging.id in agent_log(agent)


def test_a_killed_agent_leaves_a_crashed_run_that_another_agent_resumes(root, make_sweep, fork_agents):
    spec = fake_spec(parameters={"learning_rate": {"value": 0.001}, "filters": {"values": [8]},
                                 "epochs": {"value": 6}})
    sweep_id = make_sweep(spec)
    [first] = fork_agents(sweep_id, epoch_seconds=0.4, stale_after_s=1.5)
    run = wait_for(lambda: next((r for r in _runs(root, sweep_id) if len(r.metric_values) >= 1), None),
                   what="the first epoch in the store")
    os.kill(first.pid, signal.SIGKILL)
    first.join()
    assert _runs(root, sweep_id)[0].state == "running"  # nobody has noticed yet
    folder = runfolder.run_dir(root, sweep_id, run.id)
    child = json.loads((folder / "starts.jsonl").read_text().splitlines()[0])["pid"]
    # The child gets SIGTERM from the kernel (parent-death signal) and stops at once; an orphan would
    # go on through all 6 epochs (2.4 s) unwatched.
    wait_for(lambda: not Path(f"/proc/{child}").exists() or
             Path(f"/proc/{child}/stat").read_text().split(") ", 1)[-1].startswith("Z"), 10, "the orphaned child to stop")
    logged_before = len(runfolder.read_history(folder))
    assert 1 <= logged_before < 6
    # A heartbeat timeout of 10 minutes: the second agent, on the same host, sees at its first poll that the
    # run's agent process is gone, so it does not wait that out (the 120 s test timeout would fail).
    [second] = fork_agents(sweep_id, epoch_seconds=0.1, stale_after_s=600)
    assert _wait_all([second]) == [0], agent_log(second)
    runs = _runs(root, sweep_id)
    assert len(runs) == 1
    resumed = runs[0]
    assert (resumed.id, resumed.config) == (run.id, run.config)
    assert resumed.state == "finished" and resumed.attempts == 2 and resumed.agent != run.agent
    assert f"marked crashed {run.id}" in agent_log(second)
    starts = [json.loads(line) for line in (folder / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[1]["resumed_from"] == logged_before  # from the epochs logged before the kill
    assert [row["epoch"] for row in runfolder.read_history(folder)] == [1, 2, 3, 4, 5, 6]
    # the first child did not train on unwatched: it got SIGTERM when its agent died
    assert not processes.pid_alive(starts[0]["pid"])  # gone, or a zombie its new parent has not reaped yet
    assert (folder / "output.log").read_text().count("attempt") == 2


def test_sigterm_to_an_agent_preempts_its_run_and_the_next_agent_resumes_it(root, make_sweep, start_agent,
                                                                           fork_agents):
    """The first agent is the `harness agent` command itself (its exit code is 128 + SIGTERM)."""
    spec = fake_spec(parameters={"learning_rate": {"values": [0.001]}, "epochs": {"value": 5}})
    sweep_id = make_sweep(spec)
    first = start_agent(sweep_id, epoch_seconds=0.4)
    run = wait_for(lambda: next((r for r in _runs(root, sweep_id) if len(r.metric_values) >= 1), None),
                   what="the first epoch in the store")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 128 + signal.SIGTERM
    preempted = _runs(root, sweep_id)[0]
    assert preempted.state == "preempted" and preempted.exit_code == 128 + signal.SIGTERM
    assert preempted.summary["status"] == "preempted"
    assert "asking run " + run.id in agent_log(first)
    second = fork_agents(sweep_id, epoch_seconds=0.05)
    assert _wait_all(second) == [0]
    finished = _runs(root, sweep_id)[0]
    assert (finished.id, finished.state, finished.attempts, finished.epochs_completed) == (run.id, "finished", 2, 5)


def test_stopping_the_sweep_stops_running_runs(root, make_sweep, fork_agents):
    from click.testing import CliRunner

    from harness import cli

    sweep_id = make_sweep(fake_spec(parameters={"learning_rate": {"values": [0.01, 0.001]},
                                                "epochs": {"value": 20}}))
    [agent] = fork_agents(sweep_id, epoch_seconds=0.3)
    wait_for(lambda: any(r.metric_values for r in _runs(root, sweep_id)), what="a running run")
    result = CliRunner().invoke(cli.main, ["sweep", "stop", sweep_id, "--root", str(root)])
    assert result.exit_code == 0 and "stopped" in result.output
    assert _wait_all([agent], timeout=30) == [0]
    runs = _runs(root, sweep_id)
    assert [run.state for run in runs] == ["stopped"]  # and no second run was started
    assert runs[0].epochs_completed < 20
    assert _sweep(root, sweep_id).state == "stopped"


def test_in_process_agent_env_cwd_failures_and_args_json_file(root, make_sweep, tmp_path, monkeypatch):
    """The child's environment and working directory; a failing run does not stop the agent. A wandb
    service of the agent's process (WANDB_SERVICE) is not the run's: it starts its own."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    spec = fake_spec(parameters={"fail_at_epoch": {"values": [0, 1]}, "epochs": {"value": 2}})
    spec["command"] = ["${env}", "${interpreter}", "${program}", "--config", "${args_json_file}"]
    sweep_id = make_sweep(spec, workdir=workdir)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SWEEP_ID", "someone/else/abc")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("WANDB_SERVICE", "3-1234-unix-/tmp/wandb-1234-1235-1/socket")
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.01")
    lines: list[str] = []
    code = sweep_agent.run_agent(sweep_id, root=root, heartbeat_s=0.2, poll_s=0.05, echo=lines.append)
    assert code == 0
    runs = {run.config["fail_at_epoch"]: run for run in _runs(root, sweep_id)}
    assert runs[0].state == "finished" and runs[0].gpu == "3"
    assert runs[1].state == "failed" and runs[1].exit_code == 3 and runs[1].summary["status"] == "failed"
    folder = runfolder.run_dir(root, sweep_id, runs[0].id)
    env = json.loads((folder / "fake_env.json").read_text())
    assert env == {"WANDB_RUN_ID": runs[0].id, "WANDB_RUN_GROUP": sweep_id, "HARNESS_SWEEP_ID": sweep_id,
                   "HARNESS_ROOT": str(Path(root).absolute()), "WANDB_MODE": "offline",
                   "CUDA_VISIBLE_DEVICES": "3", "WANDB_SWEEP_ID": None, "WANDB_SERVICE": None,
                   "cwd": str(workdir)}
    argv = json.loads((folder / "fake_argv.json").read_text())
    assert argv == ["--config", str(folder / "args.json")]
    assert json.loads((folder / "args.json").read_text()) == {"fail_at_epoch": 0, "epochs": 2}
    assert any(f"run {runs[1].id} failed" in line for line in lines)
    assert str(FAKE_TRAIN) in (folder / "output.log").read_text()


def test_a_gpu_given_to_the_agent_goes_to_its_runs(root, make_sweep, monkeypatch):
    sweep_id = make_sweep(fake_spec(parameters={"epochs": {"value": 1}, "learning_rate": {"values": [0.01]}}))
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0")
    assert sweep_agent.run_agent(sweep_id, root=root, gpu="1", poll_s=0.05, echo=lambda line: None) == 0
    run = _runs(root, sweep_id)[0]
    env = json.loads((runfolder.run_dir(root, sweep_id, run.id) / "fake_env.json").read_text())
    assert run.gpu == env["CUDA_VISIBLE_DEVICES"] == "1"
