"""The local launcher (harness.launch.local): one agent per GPU slot, restarts, Ctrl-C -> every run preempted with a checkpoint,
`--resume` finishes them; and the exact `wandb agent` commands for a W&B sweep.

The agents, the store (SQLite) and the runs are real processes here: runs are tests/fakes/fake_train.py,
a real program that keeps the run-folder contract (fast, no TensorFlow). "GPU ids" are only the
CUDA_VISIBLE_DEVICES each agent gets (this machine has no GPU).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import processes
from harness.errors import LaunchError
from harness.launch import local
from harness.launch.local import AgentSlot, Supervisor
from harness.sweep.ids import is_wandb_sweep
from harness.sweep.store import Store
from tests.launch.conftest import create_sweep, epochs_logged, fake_sweep_spec, launch, starts, wait_until


# --- pure parts -----------------------------------------------------------------------------------
def test_parse_gpus_lists_and_rejects():
    assert local.parse_gpus("0,1,3") == ["0", "1", "3"]
    assert local.parse_gpus(" 2 ") == ["2"]
    assert local.parse_gpus("none") is None
    with pytest.raises(LaunchError, match="GPU ids like"):
        local.parse_gpus("0,x")
    with pytest.raises(LaunchError, match="repeat"):
        local.parse_gpus("0,0")


def test_gpus_all_reads_nvidia_smi_output_and_respects_cuda_visible_devices():
    listing = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1c2d)\n"
               "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-3e4f)\n  MIG 1g.10gb Device 0: (UUID: MIG-aa)\n")
    assert local.parse_nvidia_smi(listing) == ["0", "1"]
    assert local.parse_gpus("all", environ={"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]


def test_gpus_all_without_nvidia_smi_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi to find
    with pytest.raises(LaunchError, match="nvidia-smi not found.*--gpus none --agents"):
        local.detect_gpus(environ={})


def test_plan_local_agents_one_gpu_each(tmp_path):
    slots = local.plan_agents("local-abcd1234", ["0", "1"], tmp_path, agents_per_gpu=2, count=3, python="/py")
    assert [slot.name for slot in slots] == ["agent-0-0", "agent-0-1", "agent-1-0", "agent-1-1"]
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0", "0", "1", "1"]
    assert slots[0].argv == ("/py", "-m", "harness", "agent", "local-abcd1234", "--count", "3", "--root", str(tmp_path))
    assert slots[3].log == tmp_path / "local-abcd1234" / "agents" / "agent-1-1.log"
    cpu = local.plan_agents("local-abcd1234", None, tmp_path, agents=2, python="/py")
    assert [(slot.name, slot.env["CUDA_VISIBLE_DEVICES"]) for slot in cpu] == [("agent-cpu-0", ""), ("agent-cpu-1", "")]
    with pytest.raises(LaunchError, match="--agents K"):
        local.plan_agents("local-abcd1234", None, tmp_path)


def test_wandb_sweep_builds_exactly_these_agent_commands(tmp_path):
    """A W&B server cannot exist here (no network): the only part not run is `wandb agent` itself,
    so this checks the exact commands and environments the launcher would start."""
    slots = local.plan_agents("my-team/cloudsweep/x1y2z3", ["0", "3"], tmp_path, count=5, python="/env/bin/python")
    assert [slot.argv for slot in slots] == [
        ("/env/bin/python", "-m", "wandb", "agent", "--forward-signals", "--count", "5", "my-team/cloudsweep/x1y2z3"),
    ] * 2
    # W&B starts runs with a bare `python`: the launcher's interpreter's folder comes first on PATH.
    path = processes.path_with_python_first("/env/bin/python")
    assert path.split(os.pathsep)[0] == "/env/bin"
    assert [dict(slot.env) for slot in slots] == [
        {"CUDA_VISIBLE_DEVICES": "0", "HARNESS_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "PATH": path},
        {"CUDA_VISIBLE_DEVICES": "3", "HARNESS_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "PATH": path},
    ]
    assert all(slot.wandb for slot in slots)
    assert slots[1].log == tmp_path / "x1y2z3" / "agents" / "agent-3-0.log"
    no_count = local.plan_agents("my-team/cloudsweep/x1y2z3", ["0"], tmp_path, python="p")
    assert no_count[0].argv == ("p", "-m", "wandb", "agent", "--forward-signals", "my-team/cloudsweep/x1y2z3")


def test_a_wandb_sweep_path_may_leave_out_the_entity():
    assert is_wandb_sweep("cloudsweep/x1y2z3") and is_wandb_sweep("my-team/cloudsweep/x1y2z3")
    assert not is_wandb_sweep("local-abcd1234")
    slots = local.plan_agents("cloudsweep/x1y2z3", ["0"], Path("/r"), python="p")
    assert slots[0].wandb and slots[0].argv[-1] == "cloudsweep/x1y2z3" and slots[0].log.parent == Path("/r/x1y2z3/agents")


def test_a_wandb_agent_that_gave_up_is_recognised_from_its_output():
    """`wandb agent` exits 0 when it gives up; these are its words (wandb 0.31.0, wandb_agent.py)."""
    flapping = ("2026-12-02 03:04:57,651 - wandb.wandb_agent - ERROR - Detected 3 failed runs in the first 60 seconds, "
                "shutting down.\n2026-12-02 - INFO - To disable this check set WANDB_AGENT_DISABLE_FLAPPING=true\n")
    assert local.wandb_agent_failure(flapping) == "Detected 3 failed runs in the first 60 seconds, shutting down."
    assert local.wandb_agent_failure("wandb: ERROR Detected 5 consecutive failed runs, shutting down.") == \
        "Detected 5 consecutive failed runs, shutting down."
    assert local.wandb_agent_failure("Error: Sweep fake-team/cloudsweep/abc not found") == "Sweep fake-team/cloudsweep/abc not found"
    assert local.wandb_agent_failure("INFO - Cleaning up finished run: x0pbxhym\n") is None


def test_path_with_python_first_names_the_venv_folder_not_the_link_target(tmp_path):
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    path = processes.path_with_python_first(str(venv_python), f"/usr/bin{os.pathsep}{venv_python.parent}")
    assert path.split(os.pathsep) == [str(venv_python.parent), "/usr/bin"]


def test_launch_cli_errors_exit_2(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "harness.launch", *args, "--root", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)

    neither = run("--sweep", "local-x")
    assert neither.returncode == 2 and "--gpus" in neither.stderr and "--slurm" in neither.stderr
    unknown = run("--sweep", "local-nosuch12", "--gpus", "0")
    assert unknown.returncode == 2 and "unknown sweep id 'local-nosuch12'" in unknown.stderr
    sweep_id = create_sweep(tmp_path, fake_sweep_spec([0.1]))
    profile = run("--sweep", sweep_id, "--slurm", "no-such-profile")
    assert profile.returncode == 2 and "no SLURM profile 'no-such-profile'" in profile.stderr and "local" in profile.stderr


# --- the supervisor with real processes -------------------------------------------------------------
def _slot(tmp_path: Path, name: str, code: str) -> AgentSlot:
    return AgentSlot(name=name, gpu="0", argv=(sys.executable, "-c", code), env={"CUDA_VISIBLE_DEVICES": "0"},
                     log=tmp_path / f"{name}.log")


def test_supervisor_restarts_abnormal_exits_with_a_limit_but_not_clean_or_usage_exits(tmp_path):
    counter = tmp_path / "starts"
    dying = f"open({str(counter)!r}, 'a').write('x'); raise SystemExit(3)"
    slots = [_slot(tmp_path, "dies", dying), _slot(tmp_path, "done", "print('sweep finished')"),
             _slot(tmp_path, "usage", "raise SystemExit(2)")]
    lines: list[str] = []
    supervisor = Supervisor(slots, stagger_s=0.0, max_restarts=2, backoff_s=0.05, echo=lines.append, poll_s=0.05)
    assert supervisor.run() == 1  # one slot given up
    assert counter.read_text() == "xxx"  # first start + 2 restarts
    assert sorted(supervisor.failed) == ["dies", "usage"]
    text = "\n".join(lines)
    assert "[done] finished" in text and "[done] sweep finished" in text
    assert "restarting in" in text and "giving up" in text and "usage error" in text


@pytest.mark.slow
def test_two_gpus_each_agent_one_distinct_device_and_every_run_records_it(tmp_path):
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.1, 0.2, 0.3, 0.4], epochs=2, epoch_s=0.3))
    process = launch(["--gpus", "0,1", "--sweep", sweep_id, "--stagger", "0.5"], root, tmp_path / "launch.log")
    assert process.wait(timeout=120) == 0, (tmp_path / "launch.log").read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
    assert [run.state for run in runs] == ["finished"] * 4
    by_agent: dict[str, set[str]] = {}
    for run in runs:
        (start,) = starts(root, sweep_id, run.id)
        # The run saw exactly one GPU, its agent's, and the store recorded that GPU.
        assert start["cuda_visible_devices"] in ("0", "1")
        assert run.gpu == start["cuda_visible_devices"]
        by_agent.setdefault(run.agent, set()).add(run.gpu)
    assert len(by_agent) == 2 and all(len(devices) == 1 for devices in by_agent.values())
    assert set.union(*by_agent.values()) == {"0", "1"}
    logs = sorted(path.name for path in (root / sweep_id / "agents").iterdir())
    assert logs == ["agent-0-0.log", "agent-1-0.log"]
    assert "[agent-1-0] finished" in (tmp_path / "launch.log").read_text()


@pytest.mark.slow
def test_ctrl_c_leaves_running_runs_preempted_with_a_checkpoint_and_resume_finishes_them(tmp_path):
    root = tmp_path / "runs"
    # Runs long enough (6 x 1.2 s) that both are still running when the second one logs its first epoch.
    sweep_id = create_sweep(root, fake_sweep_spec([0.3, 0.7], epochs=6, epoch_s=1.2))
    log = tmp_path / "launch.log"
    process = launch(["--gpus", "0,1", "--sweep", sweep_id, "--stagger", "0.2"], root, log)

    def both_past_first_epoch() -> bool:
        with Store(root) as store:
            runs = store.runs(sweep_id)
        return len(runs) == 2 and all(len(epochs_logged(root, sweep_id, run.id)) >= 1 for run in runs)

    wait_until(both_past_first_epoch, 60, "two runs with a completed epoch")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 128 + signal.SIGINT, log.read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
    saved = {}
    for run in runs:
        assert run.state == "preempted"
        state = (root / sweep_id / run.id / "checkpoint" / "state.json").read_text()
        saved[run.id] = len(epochs_logged(root, sweep_id, run.id))
        assert f'"epoch": {saved[run.id]}' in state and 1 <= saved[run.id] < 6

    resumed = launch(["--gpus", "0,1", "--sweep", sweep_id, "--resume", "--stagger", "0.2"], root, log)
    assert resumed.wait(timeout=120) == 0, log.read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
    assert [run.state for run in runs] == ["finished", "finished"]
    for run in runs:
        first, second = starts(root, sweep_id, run.id)
        assert second["start_epoch"] == saved[run.id] + 1  # resumed where it stopped
        assert epochs_logged(root, sweep_id, run.id) == [1, 2, 3, 4, 5, 6]  # each epoch exactly once
        assert run.attempts == 2
    text = log.read_text()
    assert "preempted/crashed run(s) will be resumed first" in text
    assert text.count("SIGINT: asking 2 agent(s)") == 1  # each agent's log is shown once, not per launch


def test_a_sweep_that_ends_with_a_failed_run_is_not_plain_finished_and_the_launcher_exits_1(tmp_path):
    root = tmp_path / "runs"
    spec = fake_sweep_spec([0.1, 0.2], epochs=2, epoch_s=0.1)
    spec["parameters"]["fail_at_epoch"] = {"values": [0, 1]}  # the grid's second cell fails by itself
    sweep_id = create_sweep(root, spec)
    log = tmp_path / "launch.log"
    process = launch(["--gpus", "0", "--sweep", sweep_id, "--stagger", "0"], root, log)
    assert process.wait(timeout=120) == 1, log.read_text()
    assert f"sweep {sweep_id} ended with 2 run(s) that did not finish" in log.read_text()
    status = subprocess.run([sys.executable, "-m", "harness", "status", sweep_id, "--root", str(root)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and f"sweep {sweep_id} (grid; val_dice_coef maximize) is finished with 2 failed" \
        in status.stdout, status.stdout + status.stderr
