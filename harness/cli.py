"""`harness` command line: thin click commands that parse, call one function, print.

Each area registers its own commands (harness/<area>/commands.py) so the modules stay small; those
modules import nothing heavy at import time, so `harness --help` is instant.
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


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cloudsweep")
def main() -> None:
    """cloudsweep: cloud segmentation sweeps on a GPU box or a SLURM cluster, online or offline."""


def _register() -> None:
    # Imported here, not at the top, so a broken area shows up as a clear ImportError in one place.
    from harness.data import commands as data_commands
    from harness.evaluate import commands as evaluate_commands
    from harness.launch import commands as launch_commands
    from harness.run import commands as run_commands
    from harness.sweep import commands as sweep_commands

    for module in (data_commands, run_commands, sweep_commands, launch_commands, evaluate_commands):
        module.register(main)


_register()


def run_main(command: click.Command, argv: list[str] | None = None) -> None:
    """Run a click command as a program (for `python -m harness.<x>`), with the same error handling."""
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], standalone_mode=True)
    except HarnessError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
