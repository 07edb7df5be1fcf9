"""One spelling for command-line options: every option of every `harness` command is `--kebab-case`, in
its help and in the docs (config keys stay snake_case in config files and sweep YAMLs; `harness train`
takes `--image-size` and `--image_size`, as W&B's ${args} writes them)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from harness import config as config_module
from harness.cli import main
from tests.test_docs import DOC_FILES, REPO, _code_lines, _harness_commands

OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def _commands(group: click.Group, prefix: str = "harness"):
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")


def test_every_option_is_spelled_with_hyphens():
    wrong = []
    for path, command in _commands(main):
        for parameter in command.params:
            if isinstance(parameter, click.Option):
                for spelling in parameter.opts + parameter.secondary_opts:
                    if spelling.startswith("--") and "_" in spelling:
                        wrong.append(f"{path} {spelling}")
    assert not wrong, "options with underscores: " + ", ".join(wrong)
    assert len(list(_commands(main))) >= 12  # the walk saw the real command tree


def test_the_train_help_spells_every_option_with_hyphens():
    # `harness train` passes its arguments to the trainer, which prints its own help.
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0, result.output
    options = OPTION.findall(result.output)
    assert {"--config", "--root", "--restart"} <= set(options), result.output  # it is the trainer's help
    wrong = sorted({option for option in options if "_" in option})
    assert not wrong, f"`harness train --help` shows {wrong}"


def _documented_commands():
    for doc in DOC_FILES:
        for line, words in _harness_commands(_code_lines(doc.read_text())):
            yield doc, line, words


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_the_docs_spell_every_option_with_hyphens(doc: Path):
    for line, words in _harness_commands(_code_lines(doc.read_text())):
        for word in words:
            name = word.strip("[]").split("=", 1)[0]
            assert not (name.startswith("--") and "_" in name), f"{doc.name}: `{line}` spells {name} with `_`"


def test_every_train_command_in_the_docs_is_one_the_trainer_takes():
    """Each documented `harness train` / `python -m harness.train` line goes through the trainer's own
    parser: the kebab-case options are real config keys and run arguments, not just well spelled."""
    checked = 0
    for doc, line, words in _documented_commands():
        if words[0] != "train" or any(mark in line for mark in ("[", "...", "|")):
            continue  # the command named in prose, or a synopsis
        arguments = [word for word in words[1:] if word not in ("\\",)]
        overrides, control = config_module.parse_cli_args(arguments)
        spelled = {word[2:].split("=", 1)[0] for word in arguments if word.startswith("--")}
        assert {name.replace("-", "_") for name in spelled} == set(overrides) | set(control), f"{doc.name}: `{line}`"
        checked += 1
    assert checked >= 8  # README, quickstart, training, resuming and evaluation show train commands


def test_snake_case_options_reach_the_same_keys():
    kebab = config_module.parse_cli_args(["--image-size=64x96", "--run-id", "first", "--batch-size=4"])
    snake = config_module.parse_cli_args(["--image_size=64x96", "--run_id", "first", "--batch_size=4"])
    assert kebab == snake == ({"image_size": "64x96", "batch_size": "4"}, {"run_id": "first"})
