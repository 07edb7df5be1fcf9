"""Sweep files: loading, the engine schema plus our lints (each problem names its key), and the
expansion of `command` macros, checked against W&B's own implementation (wandb is installed here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import cli, config
from harness.errors import SweepError
from harness.sweep import spec as sweep_spec

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))
GOOD = {
    "method": "grid",
    "metric": {"name": "val_dice_coef", "goal": "maximize"},
    "parameters": {"learning_rate": {"values": [0.01, 0.001]}, "filters": {"values": [4, 8]}},
    "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"],
}


def _with(**changes) -> dict:
    spec = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def _keys(problems: list[str]) -> list[str]:
    return [problem.split(":", 1)[0] for problem in problems]


# --- the shipped sweeps --------------------------------------------------------------------------
def test_the_shipped_sweeps_exist_and_are_valid():
    assert {path.name for path in SHIPPED} >= {"random.yaml", "grid.yaml", "bayes.yaml", "debug.yaml"}
    for path in SHIPPED:
        assert path.read_text().startswith("#"), f"{path.name} must start with a comment saying what it is for"
        spec = sweep_spec.load_spec(path)
        assert sweep_spec.validate_spec(spec) == [], path.name
        assert spec["command"] == ["${env}", "${interpreter}", "-m", "harness.train", "${args}"]
        # real-cpu.yaml is picked by the challenge metric; the others by the reference's soft Dice.
        metric = "val_kaggle_dice" if path.name == "real-cpu.yaml" else "val_dice_coef"
        assert spec["metric"] == {"name": metric, "goal": "maximize"}


def test_real_cpu_yaml_fits_a_cpu_and_every_combination_is_a_valid_config():
    import itertools

    from harness import config as config_module

    spec = sweep_spec.load_spec(REPO / "sweeps" / "real-cpu.yaml")
    parameters = spec["parameters"]
    assert spec["run_cap"] * parameters["epochs"]["value"] <= 300  # about 2 hours at about 25 s an epoch
    assert parameters["presence_head"]["value"] is True and parameters["monitor"]["value"] == spec["metric"]["name"]
    data_dir, cache_dir = Path(parameters["data_dir"]["value"]), Path(parameters["cache_dir"]["value"])
    assert data_dir not in (cache_dir, *cache_dir.parents)  # never a cache inside the read-only data
    fixed = {name: definition["value"] for name, definition in parameters.items() if "value" in definition}
    choices = {name: definition["values"] for name, definition in parameters.items() if "values" in definition}
    rates = [parameters["learning_rate"]["min"], parameters["learning_rate"]["max"]]
    for combination in itertools.product(*choices.values(), rates):
        values = {**fixed, **dict(zip(choices, combination[:-1])), "learning_rate": combination[-1]}
        config_module.build_config(overrides=values)  # cross-key rules too (loss_weighting, lr_schedule)


def test_random_yaml_is_the_reference_search_space():
    spec = sweep_spec.load_spec(REPO / "sweeps" / "random.yaml")
    assert spec["method"] == "random"
    values = {name: definition["values"] for name, definition in spec["parameters"].items()}
    assert values == {
        "epochs": [20, 32, 50, 75],
        "batch_size": [256, 128, 64, 32],
        "dropout": [0.0, 0.2, 0.3, 0.4, 0.5],
        "filters": [8, 16],
        "learning_rate": [1e-2, 1e-3, 1e-4, 3e-4, 3e-5, 1e-5],
        "optimizer": ["adam", "nadam", "sgd", "rmsprop"],
    }
    assert all(isinstance(value, float) for value in values["learning_rate"])  # not YAML strings


def test_bayes_yaml_has_a_log_scaled_learning_rate_and_hyperband():
    spec = sweep_spec.load_spec(REPO / "sweeps" / "bayes.yaml")
    assert spec["method"] == "bayes"
    assert spec["parameters"]["learning_rate"]["distribution"] == "log_uniform_values"
    assert spec["early_terminate"]["type"] == "hyperband"


def test_debug_yaml_is_tiny_and_its_fixed_values_make_a_valid_training_config():
    spec = sweep_spec.load_spec(REPO / "sweeps" / "debug.yaml")
    fixed = {key: definition["value"] for key, definition in spec["parameters"].items() if "value" in definition}
    built = config.apply_overrides(config.Config(), fixed, source="debug.yaml").validate()
    height, width = built.image_hw
    assert height * width <= 64 * 96 and built.epochs <= 3
    assert spec["method"] == "grid" and spec["parameters"]["data_dir"] == {"value": "demo/data"}


# --- loading ----------------------------------------------------------------------------------
def test_yaml_syntax_errors_name_the_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: grid\nparameters:\n  lr: {values: [1, 2}\n")
    with pytest.raises(SweepError, match=r"bad\.yaml line 3"):
        sweep_spec.load_spec(path)


def test_a_flow_list_with_macros_explains_the_yaml_trap(tmp_path: Path):
    path = tmp_path / "flow.yaml"
    path.write_text("method: grid\ncommand: [${env}, ${args}]\n")
    with pytest.raises(SweepError, match=r"line 2.*block list"):
        sweep_spec.load_spec(path)


def test_a_key_written_twice_is_an_error_with_its_line(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text("method: grid\nparameters:\n  lr: {values: [1]}\n  lr: {values: [2]}\n")
    with pytest.raises(SweepError, match=r"dup\.yaml line 4: key 'lr' appears twice"):
        sweep_spec.load_spec(path)


def test_missing_and_non_mapping_files(tmp_path: Path):
    with pytest.raises(SweepError, match="not found"):
        sweep_spec.load_spec(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SweepError, match="must hold a mapping"):
        sweep_spec.load_spec(tmp_path / "list.yaml")


# --- validation: engine schema and lints, each naming its key ------------------------------------
def test_a_good_spec_has_no_problems():
    assert sweep_spec.validate_spec(GOOD) == []


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"method": "hill_climb"}, "method", "is not one of"),
        ({"metric": {"name": "val_dice_coef", "goal": "up"}}, "metric.goal", "is not one of"),
        ({"metric": {"name": "val_dice", "goal": "maximize"}}, "metric.name", "never logged"),
        ({"parameters": {"learning_rate": {"valuez": [1]}}}, "parameters.learning_rate", "needs `value`"),
        ({"parameters": {"learning_rate": {"min": 0.1, "max": 0.01}}}, "parameters.learning_rate", "not less than max"),
        ({"parameters": {"learning_rat": {"values": [0.1]}}}, "parameters.learning_rat", "not a training config key"),
        ({"parameters": {"optimizer": {"values": ["adam", "adagrad"]}}}, "parameters.optimizer", "'adagrad'"),
        ({"parameters": {"filters": {"values": [8, "many"]}}}, "parameters.filters", "cannot use 'many' as int"),
        ({"method": "random", "parameters": {"filters": {"min": 4.0, "max": 16.0}}}, "parameters.filters",
         "is an integer"),
        ({"parameters": {"dropout": {"min": 0.0, "max": 0.5}}}, "parameters.dropout", "grid search cannot"),
        ({"method": "random", "parameters": {"learning_rate": {"distribution": "log_uniform", "min": 0.0001,
                                                               "max": 0.1}}},
         "parameters.learning_rate", "natural-log bounds"),
        ({"method": "bayes", "metric": None}, "metric", "bayes search needs a metric"),
        ({"run_cap": -1}, "run_cap", "minimum"),
        ({"parameter": {"epochs": {"value": 2}}}, "parameter", "'parameter' was unexpected"),
        ({"command": ["${env}", "${interpreter}", "-m", "harness.train"]}, "command", "passes no parameters"),
        ({"command": ["python", "train.py", "${argz}", "${args}"]}, "command[2]", "unknown macro"),
        ({"command": ["python", "--x=${args}", "${args}"]}, "command[1]", "whole list item"),
        ({"command": ["${env}", "${interpreter}", "${program}", "${args}"]}, "command", "no `program`"),
        ({"command": None}, "command", "needs `program`"),
    ],
)
def test_each_problem_names_its_key(changes: dict, key: str, words: str):
    problems = sweep_spec.validate_spec(_with(**changes))
    matching = [problem for problem in problems if problem.split(":", 1)[0] == key]
    assert matching, f"no problem for {key!r} in {problems}"
    assert any(words in problem for problem in matching), matching


def test_log_uniform_with_real_bounds_shows_the_values_it_would_draw():
    problems = sweep_spec.validate_spec(_with(method="random", parameters={
        "learning_rate": {"distribution": "log_uniform", "min": 0.00001, "max": 0.01}}))
    lint = next(problem for problem in problems if "natural-log" in problem)
    assert "1..1.01" in lint and "log_uniform_values" in lint


def test_log_uniform_with_natural_log_bounds_is_only_flagged_as_deprecated_by_the_engine():
    problems = sweep_spec.validate_spec(_with(method="random", parameters={
        "learning_rate": {"distribution": "log_uniform", "min": -11.5, "max": -4.6}}))
    assert not any("natural-log bounds" in problem for problem in problems)
    assert any("log_uniform_values" in problem for problem in problems)  # the engine's own deprecation note


def test_a_clash_between_two_swept_keys_is_not_reported_but_one_with_a_fixed_key_is():
    swept = {"image_size": {"values": ["64x96", "65x96"]}, "depth": {"values": [3, 4]}}
    problems = sweep_spec.validate_spec(_with(parameters=swept))
    # 65x96 is wrong for every depth: reported; depth alone clashes only with some sizes: not.
    assert _keys(problems) == ["parameters.image_size"]
    fixed = {"image_size": {"value": "64x96"}, "depth": {"values": [3, 7]}}
    problems = sweep_spec.validate_spec(_with(parameters=fixed))
    assert _keys(problems) == ["parameters.depth"] and "value 7" in problems[0]


def test_grid_accepts_int_uniform_and_q_uniform():
    parameters = {"filters": {"distribution": "int_uniform", "min": 4, "max": 6},
                  "dropout": {"distribution": "q_uniform", "min": 0.0, "max": 0.4, "q": 0.1}}
    assert sweep_spec.validate_spec(_with(parameters=parameters)) == []


def test_a_spec_that_is_not_a_mapping():
    assert _keys(sweep_spec.validate_spec(["method", "grid"])) == ["(sweep)"]


def test_validate_file_prefixes_file_and_line(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("method: grid\nmetric:\n  name: val_dice_coef\nparameters:\n  optimizer:\n    values: [adagrad]\n"
                    "command:\n  - ${env}\n  - ${interpreter}\n  - -m\n  - harness.train\n  - ${args}\n")
    problems = sweep_spec.validate_file(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:5: parameters.optimizer: value 'adagrad'")


def test_cli_validate_exit_codes_and_messages(tmp_path: Path):
    good = tmp_path / "good.yaml"
    bad = tmp_path / "bad.yaml"
    good.write_text((REPO / "sweeps" / "grid.yaml").read_text())
    bad.write_text((REPO / "sweeps" / "grid.yaml").read_text().replace("values: [adam, nadam]",
                                                                       "values: [adam, adagrad]"))
    runner = CliRunner()
    result = runner.invoke(cli.main, ["sweep", "validate", str(good)])
    assert result.exit_code == 0 and "ok (grid" in result.output
    result = runner.invoke(cli.main, ["sweep", "validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert "parameters.optimizer: value 'adagrad'" in result.output and "1 of 2" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [grid\n")
    result = runner.invoke(cli.main, ["sweep", "validate", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_apply_sets_fixes_parameters_and_rejects_unknown_keys():
    spec = sweep_spec.apply_sets(GOOD, ["data_dir=/data/clouds", "epochs=3", "filters=16"])
    assert spec["parameters"]["data_dir"] == {"value": "/data/clouds"}
    assert spec["parameters"]["epochs"] == {"value": 3}
    assert spec["parameters"]["filters"] == {"value": 16}
    assert GOOD["parameters"]["filters"] == {"values": [4, 8]}  # the original is untouched
    with pytest.raises(SweepError, match="unknown config key 'data'"):
        sweep_spec.apply_sets(GOOD, ["data=x"])
    with pytest.raises(SweepError, match="KEY=VALUE"):
        sweep_spec.apply_sets(GOOD, ["epochs"])


# --- macros: the same strings as W&B's agent -----------------------------------------------------
PARAMS = {
    "learning_rate": 1e-05,
    "dropout": 0.0,
    "batchnorm": False,
    "augment_flag": True,
    "filters": 16,
    "image_size": "64x96",
    "schedule": [1, 2.5],
    "big": 1e20,
    "nothing": None,
}


def _wandb_expand(command: list[str], params: dict, program: str | None, json_path: str) -> list[str]:
    """W&B's expansion (wandb_agent.py `_command_run`), using W&B's own argument formatter."""
    from wandb.sdk.launch.sweeps import utils

    sweep_command = utils.create_sweep_command(list(command))
    sweep_vars = utils.create_sweep_command_args({"args": {key: {"value": value} for key, value in params.items()}})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [program]
    sweep_vars["args_json_file"] = [json_path]
    sweep_vars["env"] = ["/usr/bin/env"]
    argv = []
    for item in sweep_command:
        item = str(item)
        if item.startswith("${") and item.endswith("}"):
            argv += sweep_vars.get(item[2:-1]) or []
        else:
            argv.append(item)
    return argv


@pytest.mark.parametrize("macro", [*sweep_spec.ARG_MACROS, "args_json_file", "program", "env", "unknown"])
def test_every_macro_expands_like_wandb(macro: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    command = ["${env}", "${interpreter}", "${program}", "--data=${envvar:DATA_ROOT}/x${envvar:NOT_SET_ANYWHERE}",
               "${" + macro + "}"]
    ours = sweep_spec.expand_command(command, PARAMS, program="train.py", run_dir=tmp_path, interpreter="python")
    theirs = _wandb_expand(command, PARAMS, "train.py", str(tmp_path / "args.json"))
    assert ours == theirs


def test_macro_strings_spelled_out():
    values = sweep_spec.macro_values({"learning_rate": 3e-05, "batchnorm": False, "augment": True, "filters": 8})
    assert values["args"] == ["--learning_rate=3e-05", "--batchnorm=False", "--augment=True", "--filters=8"]
    assert values["args_no_hyphens"] == ["learning_rate=3e-05", "batchnorm=False", "augment=True", "filters=8"]
    assert values["args_no_boolean_flags"] == ["--learning_rate=3e-05", "--augment", "--filters=8"]
    assert values["args_no_equals"] == ["--learning_rate", "3e-05", "--batchnorm", "False", "--augment", "True",
                                        "--filters", "8"]
    assert values["args_json"] == ['{"learning_rate": 3e-05, "batchnorm": false, "augment": true, "filters": 8}']


def test_interpreter_is_this_python_and_args_json_file_is_written_in_the_run_folder(tmp_path: Path):
    argv = sweep_spec.expand_command(["${interpreter}", "-m", "harness.train", "--config", "${args_json_file}"],
                                     {"epochs": 2, "learning_rate": 0.001}, run_dir=tmp_path)
    assert argv[0] == sys.executable
    assert argv[-1] == str(tmp_path / "args.json")
    assert json.loads((tmp_path / "args.json").read_text()) == {"epochs": 2, "learning_rate": 0.001}
    # harness.train's parser reads every form the macros produce
    for macro in ("args", "args_no_hyphens", "args_no_boolean_flags", "args_no_equals"):
        params = {"epochs": 2, "batchnorm": True, "learning_rate": 3e-05}
        overrides, _ = config.parse_cli_args(sweep_spec.macro_values(params)[macro])
        built = config.apply_overrides(config.Config(), overrides, source=macro)
        assert (built.epochs, built.batchnorm, built.learning_rate) == (2, True, 3e-05), macro


def test_args_json_file_without_a_run_folder_is_an_error():
    with pytest.raises(SweepError, match="args_json_file"):
        sweep_spec.expand_command(["${args_json_file}"], {"a": 1})


def test_default_command_is_wandbs():
    assert sweep_spec.sweep_command({"program": "x.py"}) == ["${env}", "${interpreter}", "${program}", "${args}"]
