"""Config precedence and errors as a run sees them; the CLI's exit codes; the generated config reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import cli
from harness import config as config_module
from harness import runfolder
from harness.errors import ConfigError
from harness.run import callbacks, checkpoint, identity, stopping, tracking

REPO = Path(__file__).resolve().parents[2]


def _run_module(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.train", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=REPO,
    )


def test_precedence_defaults_file_arguments_wandb(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("epochs: 5\nloss: dice\nfilters: {value: 16}\nlearning_rate: 0.01\n")
    overrides, control = config_module.parse_cli_args(["--epochs=7", "--loss", "jaccard", "--run_id=abc", f"--config={file}"])
    config = config_module.build_config(control["config"], overrides, wandb_config={"loss": "bce", "_wandb": {}})
    assert (config.epochs, config.loss, config.filters, config.learning_rate) == (7, "bce", 16, 0.01)
    assert config.batch_size == config_module.Config().batch_size  # untouched keys keep their defaults
    assert control == {"run_id": "abc", "config": str(file)}


def test_unknown_key_exits_2_and_lists_the_valid_keys():
    result = _run_module("--nope=1")
    assert result.returncode == 2
    assert "unknown config key 'nope'" in result.stderr
    assert "valid keys:" in result.stderr and "learning_rate" in result.stderr


@pytest.mark.parametrize(
    "argument, named",
    [("--epochs=many", "epochs"), ("--loss=focal", "loss"), ("--image_size=100x100", "image_size"), ("--run_id=../up", "run_id")],
)
def test_bad_values_exit_2_naming_the_key(argument, named):
    result = _run_module(argument)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and result.stderr.startswith("error: ")


def test_harness_train_passes_arguments_through():
    result = CliRunner().invoke(cli.main, ["train", "--nope=1"])
    assert result.exit_code == 2
    assert "unknown config key 'nope'" in result.output


def _save_run_config(run_dir: Path, **values) -> None:
    run_dir.mkdir(parents=True)
    saved = config_module.build_config(overrides=values).to_dict()
    (run_dir / "config.json").write_text(json.dumps({**saved, "run_id": run_dir.name, "sweep_id": None}))


def test_a_resumed_run_keeps_its_saved_config(tmp_path):
    run_dir = tmp_path / "run1"
    _save_run_config(run_dir, loss="dice", epochs=3)
    # Nothing given explicitly: the saved values win over the defaults of a bare command line.
    assert identity.resolve_config(run_dir, config_module.Config(), explicit_keys=[]).loss == "dice"
    # The same value given again is fine; `epochs` may grow to extend the run.
    resumed = identity.resolve_config(run_dir, config_module.build_config(overrides={"loss": "dice", "epochs": 6}), ["loss", "epochs"])
    assert (resumed.loss, resumed.epochs) == ("dice", 6)
    with pytest.raises(ConfigError, match=r"'loss' = 'bce'.*differs from 'dice'"):
        identity.resolve_config(run_dir, config_module.build_config(overrides={"loss": "bce"}), ["loss"])


def test_resume_with_a_different_value_exits_2_naming_the_key(tmp_path):
    _save_run_config(tmp_path / "single" / "run2", learning_rate=0.01)
    result = _run_module("--root", str(tmp_path), "--run_id=run2", "--learning_rate=0.1")
    assert result.returncode == 2
    assert "'learning_rate'" in result.stderr and "differs" in result.stderr


def test_run_folder_follows_root_and_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runfolder.run_dir(None, None, "abc") == tmp_path / "runs" / "single" / "abc"
    assert runfolder.run_dir(tmp_path / "r", "local-1", "abc") == tmp_path / "r" / "local-1" / "abc"
    run_id = identity.new_run_id()
    assert len(run_id) == 8 and identity.check_id(run_id, "run_id") == run_id


def test_wandb_mode_defaults_to_offline_without_an_account(monkeypatch):
    for name in ("WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert tracking.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() == "disabled"
    assert tracking.start_wandb({}, Path("."), "abc", "project") is None
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    assert tracking.wandb_mode() is None  # under `wandb agent`: W&B's own default (online)


def test_under_a_wandb_sweep_no_id_is_passed_to_wandb_init(monkeypatch, tmp_path):
    """wandb.init is replaced by a recorder: a real W&B sweep needs the W&B server, which cannot exist here."""
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or "run")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    tracking.start_wandb({"a": 1}, tmp_path, "abc12345", "proj")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    tracking.start_wandb({"a": 1}, tmp_path, "abc12345", "proj")
    assert calls[0]["id"] == "abc12345" and calls[0]["resume"] == "allow" and calls[0]["dir"] == str(tmp_path)
    assert "id" not in calls[1] and "resume" not in calls[1]


def test_wandb_sweep_parameters_win_over_arguments(tmp_path):
    """Runs main() as `wandb agent` starts it (offline W&B with the agent's environment); the data
    folder is missing on purpose, so the run stops with exit 2 right after saving its config."""
    params = tmp_path / "params.yaml"
    params.write_text("loss:\n  value: bce\nfilters:\n  value: 16\n")
    result = _run_module(
        "--root", str(tmp_path / "runs"), "--loss=dice", "--epochs=4", f"--data_dir={tmp_path / 'no-data'}",
        env={"WANDB_MODE": "offline", "WANDB_SWEEP_ID": "wsweep1", "WANDB_RUN_ID": "wrun1234",
             "WANDB_SWEEP_PARAM_PATH": str(params), "WANDB_PROJECT": "test"},
    )
    assert result.returncode == 2, result.stderr
    run_dir = tmp_path / "runs" / "wsweep1" / "wrun1234"
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["loss"], saved["filters"], saved["epochs"]) == ("bce", 16, 4)
    assert (saved["run_id"], saved["sweep_id"]) == ("wrun1234", "wsweep1")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "no-data" in summary["error"]
    assert list((run_dir / "wandb").glob("offline-run-*-wrun1234"))


def test_controllers_resume_their_counters():
    config = config_module.build_config(overrides={"early_stopping_patience": 3, "lr_patience": 2})
    saved = {"early_stopping": {"wait": 2, "best": 0.5, "best_epoch": 4, "stopped_epoch": 0},
             "reduce_lr": {"wait": 1, "best": 0.5, "cooldown_counter": 0}}
    state = checkpoint.TrainState(callbacks=saved)
    controllers = callbacks.make_controllers(config, state)
    for callback in controllers:
        callback.on_train_begin()
    assert callbacks._controller_state(controllers) == saved
    assert callbacks.make_controllers(config_module.Config(), state) == []  # patience 0: off


def test_stop_signals_set_a_flag_and_restore_the_old_handlers():
    previous = signal.getsignal(signal.SIGUSR1)
    stop = stopping.stop_flag().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.first == signal.SIGUSR1
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_config_reference_is_generated_and_committed():
    result = CliRunner().invoke(cli.main, ["config", "--markdown"])
    assert result.exit_code == 0
    assert (REPO / "docs" / "config.md").read_text() == result.output, "run `harness config --markdown > docs/config.md`"
    for key in config_module.config_keys():
        assert f"| `{key}` |" in result.output
    table = CliRunner().invoke(cli.main, ["config"]).output
    assert all(line.split()[0] in config_module.config_keys() for line in table.splitlines())
