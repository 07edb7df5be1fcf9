"""`python -m harness.sweep FILE [--root DIR] [--backend local|wandb] ...` is `harness sweep create FILE`."""

from harness.cli_common import run_main
from harness.sweep.commands import create_command

run_main(create_command)
