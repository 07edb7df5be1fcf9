"""The sweep command line: create (local and W&B), stop/pause/resume, status, `python -m harness.sweep`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import cli, cli_common
from harness.sweep import commands, status
from harness.sweep.store import Store

from .conftest import fake_spec

REPO = Path(__file__).resolve().parents[2]


def _invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))  # click 8.2+: result.stdout and result.stderr apart


def test_the_sweep_group_is_importable_for_other_areas():
    assert commands.sweep_group.name == "sweep"
    assert {"create", "validate", "stop", "pause", "resume"} <= set(commands.sweep_group.commands)
    assert {"sweep", "agent", "status"} <= set(cli.main.commands)


def test_create_prints_the_id_on_stdout_and_how_to_launch_on_stderr(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    result = _invoke("sweep", "create", str(REPO / "sweeps" / "debug.yaml"), "--root", str(root),
                     "--set", "data_dir=/data/clouds")
    assert result.exit_code == 0, result.output
    sweep_id = result.stdout.strip()
    assert sweep_id.startswith("local-") and len(sweep_id) == 14
    assert f"harness agent {sweep_id}" in result.stderr
    assert f"python -m harness.launch --gpus 0,1 --sweep {sweep_id}" in result.stderr
    assert "grid, 4 runs" in result.stderr
    with Store(root) as store:
        sweep = store.get_sweep(sweep_id)
    assert sweep.workdir == str(tmp_path)
    assert sweep.spec["parameters"]["data_dir"] == {"value": "/data/clouds"}


def test_create_refuses_an_invalid_sweep_naming_each_key_and_creates_nothing(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "sweeps" / "bayes.yaml").read_text()
                   .replace("name: val_dice_coef", "name: val_dice")
                   .replace("distribution: log_uniform_values", "distribution: log_uniform"))
    root = tmp_path / "runs"
    result = _invoke("sweep", "create", str(bad), "--root", str(root))
    assert result.exit_code == 2
    assert "metric.name: 'val_dice' is never logged" in result.stderr
    assert "parameters.learning_rate: log_uniform takes natural-log bounds" in result.stderr
    assert f"{bad}:" in result.stderr and "nothing was created" in result.stderr
    with Store(root) as store:
        assert store.sweeps() == []


def test_python_m_harness_sweep_is_create(tmp_path: Path):
    root = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "harness.sweep", str(REPO / "sweeps" / "grid.yaml"),
                             "--root", str(root)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    with Store(root) as store:
        assert [sweep.id for sweep in store.sweeps()] == [result.stdout.strip()]



def test_run_main_of_create_exits_2_with_one_line(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_common.run_main(commands.create_command, [str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: sweep file not found: {tmp_path / 'missing.yaml'}"


def test_wandb_backend_calls_wandb_sweep_with_the_spec(monkeypatch, tmp_path: Path):
    """A W&B server cannot exist here: `wandb.sweep` is replaced to record what it was called with."""
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "sweep", lambda sweep, project=None, entity=None: calls.append((sweep, project, entity)) or "abc123")
    result = _invoke("sweep", "create", str(REPO / "sweeps" / "random.yaml"), "--backend", "wandb",
                     "--project", "clouds", "--entity", "me", "--root", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "me/clouds/abc123"
    assert "wandb agent --forward-signals me/clouds/abc123" in result.stderr
    [(spec, project, entity)] = calls
    assert (project, entity) == ("clouds", "me")
    assert spec["method"] == "random" and spec["command"][-1] == "${args}"


def test_wandb_backend_without_a_login_explains_and_exits_2(monkeypatch, tmp_path: Path):
    """The real `wandb.sweep`: with no API key it fails at once; the message says what to do."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    result = _invoke("sweep", "create", str(REPO / "sweeps" / "grid.yaml"), "--backend", "wandb")
    assert result.exit_code == 2
    assert "W&B could not create the sweep" in result.stderr and "--backend local" in result.stderr


def test_pause_resume_stop(tmp_path: Path):
    root = tmp_path / "runs"
    with Store(root) as store:
        sweep_id = store.create_sweep(fake_spec())
    result = _invoke("sweep", "pause", sweep_id, "--root", str(root))
    assert result.exit_code == 0 and "is paused" in result.stdout
    result = _invoke("sweep", "resume", sweep_id, "--root", str(root))
    assert result.exit_code == 0 and "is running" in result.stdout
    result = _invoke("sweep", "stop", sweep_id, "--root", str(root))
    assert result.exit_code == 0 and "is stopped" in result.stdout
    with Store(root) as store:
        assert store.get_sweep(sweep_id).state == "stopped"
    result = _invoke("sweep", "stop", "local-unknown1", "--root", str(root))
    assert result.exit_code == 2 and "unknown sweep id 'local-unknown1'" in result.stderr


def _filled_sweep(root: Path) -> tuple[str, dict[str, str]]:
    """A sweep with runs in several states and metric values, written through the store API."""
    spec = fake_spec(parameters={"learning_rate": {"values": [0.1, 0.01, 0.001, 0.0001]},
                                 "epochs": {"value": 3}})
    with Store(root) as store:
        sweep_id = store.create_sweep(spec)
        ids = {}
        for value in (0.2, 0.9, 0.5, None):
            run = store.claim_run(sweep_id, agent="h:1", host="box", gpu="1")
            ids[str(value)] = run.id
            if value is not None:
                store.record_history(run.id, [{"epoch": 1, "val_dice_coef": value / 2},
                                              {"epoch": 2, "val_dice_coef": value}])
        store.finish_run(ids["0.2"], "finished", {"status": "finished", "epochs_completed": 3, "epochs": 3},
                         exit_code=0)
        store.finish_run(ids["0.5"], "failed", exit_code=1)
    return sweep_id, ids


def test_status_table_is_sorted_by_the_metric_with_counts(tmp_path: Path):
    root = tmp_path / "runs"
    sweep_id, ids = _filled_sweep(root)
    result = _invoke("status", sweep_id, "--root", str(root))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"sweep {sweep_id} (grid; val_dice_coef maximize) is running; 4 run(s)" in text
    assert "runs: 2 running, 1 finished, 1 failed" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    assert header.split() == ["#", "run", "state", "val_dice_coef", "epoch", "learning_rate", "gpu", "device",
                              "host", "beat", "try"]
    order = [line.split()[1] for line in lines[lines.index(header) + 1:]]
    assert order == [ids["0.9"], ids["0.5"], ids["0.2"], ids["None"]]  # best first, no metric last
    row = next(line for line in lines if ids["0.2"] in line).split()
    assert row[2:5] == ["finished", "0.2", "3/3"] and row[-3:] == ["1", "box", "1"]  # no beat once ended
    running = next(line for line in lines if ids["0.9"] in line)
    assert running.split()[-2].endswith("s")  # heartbeat age of an active run


def test_status_minimize_limit_and_list(tmp_path: Path):
    root = tmp_path / "runs"
    sweep_id, ids = _filled_sweep(root)
    with Store(root) as store:
        sweep = store.get_sweep(sweep_id)
        minimized = sweep.__class__(**{**sweep.__dict__, "spec": {**sweep.spec, "metric": {"name": "val_dice_coef",
                                                                                          "goal": "minimize"}}})
        order = [run.id for run in status.sorted_runs(minimized, store.runs(sweep_id))]
        assert order == [ids["0.2"], ids["0.5"], ids["0.9"], ids["None"]]
        text = status.status_text(store, sweep_id, limit=2)
        assert "... and 2 more" in text
    listing = _invoke("status", "--root", str(root))
    assert sweep_id in listing.stdout and "2 running, 1 finished, 1 failed" in listing.stdout


def test_status_watch_ends_when_the_sweep_is_over(tmp_path: Path):
    root = tmp_path / "runs"
    sweep_id, ids = _filled_sweep(root)
    with Store(root) as store:
        for run_id in (ids["0.9"], ids["None"]):
            store.finish_run(run_id, "finished", exit_code=0)
        assert store.claim_run(sweep_id, agent="a", host="h") is None  # grid done: finished
    started = time.monotonic()
    result = _invoke("status", sweep_id, "--root", str(root), "--watch", "--interval", "0.1")
    assert result.exit_code == 0 and "is finished" in result.stdout
    assert time.monotonic() - started < 10
