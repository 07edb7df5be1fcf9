"""What every `harness` click command shares: one way to end on a user's mistake, one definition of
each option that several commands take.

- `HarnessGroup` / `run_main`: a `HarnessError` ends the command with one line on stderr and exit code 2;
- `root_option`, `store_option`, `data_dir_option`, `sweep_option`: the shared options, each defined
  once with one help text, spelled `--kebab-case` like every option.

Below harness/cli.py (which assembles the `harness` group) and the areas' commands.py modules, so that
`python -m harness.<area>` entry points use the same handling without importing the whole CLI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from harness.errors import HarnessError, SweepError

ROOT_HELP = "runs root holding the run folders (and sweeps.db unless --store) [$HARNESS_ROOT or ./runs]"
STORE_HELP = ("the sweep database file (or its folder) [$HARNESS_STORE or ROOT/sweeps.db]; "
              "keep it on a local disk when the runs root is on NFS/Lustre")
SWEEP_HELP = "the sweep: a local sweep id (local-xxxxxxxx, from `harness sweep create`) or a W&B path entity/project/id"


class HarnessGroup(click.Group):
    """Turns a `HarnessError` (bad file, row, key or value) into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except HarnessError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)


def run_main(command: click.Command, argv: list[str] | None = None) -> None:
    """Run a click command as a program (for `python -m harness.<x>`), with the same error handling."""
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], standalone_mode=True)
    except HarnessError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)


def root_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """`--root DIR` (value `root`): the runs root."""
    return click.option("--root", default=None, metavar="DIR", help=ROOT_HELP)(function)


def _export_store(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # Exported, so this process's Store() and every agent or run it starts open the same file.
    if value:
        os.environ["HARNESS_STORE"] = str(Path(value).expanduser().absolute())
    return value


def store_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """`--store PATH`: the sweep database, when it must not live in the runs root (a shared filesystem)."""
    return click.option("--store", default=None, metavar="PATH", expose_value=False, callback=_export_store,
                        is_eager=True, help=STORE_HELP)(function)


def data_dir_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--data-dir DIR` (value `data_dir`), with the command's own meaning of it."""
    return click.option("--data-dir", "data_dir", default=None, metavar="DIR", help=help_text)


def sweep_option(required: bool = True, help_text: str = SWEEP_HELP,
                 bare: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--sweep ID` (value `sweep_id`): the one way every command is given a sweep.

    The id is also taken as the command's first bare argument (`harness agent ID`, as scripts written
    before `--sweep` call it) unless `bare` is False (a command whose bare arguments are something
    else); giving both, with different values, is a usage error.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        def merge(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
            bare = ctx.params.pop("bare_sweep_id", None)
            if bare and value and bare != value:
                raise click.UsageError(f"two sweeps given: {bare!r} and --sweep {value!r}")
            chosen = value or bare
            if required and not chosen:
                raise click.UsageError("missing --sweep ID")
            return chosen

        function = click.option("--sweep", "sweep_id", default=None, metavar="ID", help=help_text,
                                callback=merge)(function)
        if not bare:
            return function
        return click.argument("bare_sweep_id", required=False, metavar="", is_eager=True,
                              expose_value=True)(function)

    return decorate
