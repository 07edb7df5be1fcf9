"""Parameter values as `wandb agent` passes them: `--key=value` with Python's str() of the sweep file's
value, so lists arrive as `[64, 96]` and nulls as `None` (issue 13, defect 5); and the sweep's keys,
which W&B locks in wandb.config, are not updated again (the "was locked by 'sweep'" warnings)."""

from __future__ import annotations

import pytest

from harness import config as config_module
from harness.errors import ConfigError
from harness.run import tracking


def test_a_list_and_a_null_from_wandb_args_are_what_the_sweep_file_said():
    overrides, _ = config_module.parse_cli_args(["--image_size=[64, 96]", "--cache_dir=None", "--validation_steps=None",
                                                 "--augment=none"])
    config = config_module.build_config(overrides=overrides)
    assert config.image_size == "64x96"
    assert config.cache_dir == config_module.Config().cache_dir  # null: the default
    assert config.validation_steps == config_module.Config().validation_steps
    assert config.augment == "none"  # the word none is a value, not a null


def test_a_null_in_a_config_file_means_the_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\ncache_dir: null\nimage_size: [64, 96]\n")
    config = config_module.build_config(path)
    assert (config.epochs, config.cache_dir, config.image_size) == (3, "", "64x96")


def test_a_list_where_a_number_goes_is_still_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="'epochs'"):
        config_module.build_config(overrides={"epochs": "[1, 2]"})
    with pytest.raises(ConfigError, match="image_size"):
        config_module.build_config(overrides={"image_size": "[64, 96, 3]"})


def test_the_sweeps_own_keys_are_read_from_the_agents_parameter_file(tmp_path):
    path = tmp_path / "config-run1.yaml"
    path.write_text("wandb_version: 1\nlearning_rate:\n  value: 0.01\nimage_size:\n  value: [64, 96]\n")
    environ = {"WANDB_SWEEP_ID": "abc123", "WANDB_SWEEP_PARAM_PATH": str(path)}
    assert tracking.sweep_parameter_keys(environ) == {"learning_rate", "image_size"}
    assert tracking.sweep_parameter_keys({"WANDB_SWEEP_PARAM_PATH": str(path)}) == set()  # not under a sweep


def test_record_config_leaves_the_locked_keys_alone(tmp_path, monkeypatch):
    path = tmp_path / "config-run1.yaml"
    path.write_text("wandb_version: 1\nlearning_rate:\n  value: 0.01\n")
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(path))

    class Config(dict):
        def update(self, values, allow_val_change=False):  # wandb.config's signature
            super().update(values)

    class Run:
        config = Config()

    tracking.record_config(Run, {"learning_rate": 0.01, "epochs": 3})
    assert Run.config == {"epochs": 3}
