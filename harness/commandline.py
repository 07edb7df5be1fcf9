"""How every `harness` command ends on a user's mistake: one line on stderr and exit code 2.

Below harness/cli.py (which assembles the `harness` group) and the areas' commands.py modules, so that
`python -m harness.<area>` entry points use the same handling without importing the whole CLI.
"""

from __future__ import annotations

import sys

import click

from harness.errors import HarnessError


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
