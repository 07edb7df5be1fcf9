"""`harness` command line: thin click commands that parse, call one function, print.

Each area registers its own commands (harness/<area>/commands.py) so the modules stay small; those
modules import nothing heavy at import time, so `harness --help` is instant.
"""

from __future__ import annotations

import click

from harness.cli_common import HarnessGroup


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


if __name__ == "__main__":
    main()
