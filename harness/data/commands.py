"""Click commands of this area (registered on the `harness` group by harness.cli)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this area's commands to `group`."""
