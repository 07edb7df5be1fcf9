"""One spelling for command-line options: every option of every `harness` click command is `--kebab-case`
(config keys passed to `harness train` stay snake_case, as W&B's ${args} writes them)."""

from __future__ import annotations

import click

from harness.cli import main


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
