"""Sweep ids: a local sweep's `local-xxxxxxxx` or a W&B sweep path `entity/project/sweep_id`.

Which kind an id is decides who drives the sweep (the local store and `harness agent`, or W&B and
`wandb agent`); the folder its runs live in is harness.runfolder.sweep_folder_name.
"""

from __future__ import annotations

import re

# `entity/project/sweep_id` or `project/sweep_id` (the account's default entity, as `wandb agent` takes
# it): a W&B sweep, driven by `wandb agent`; anything else is a local sweep id.
_WANDB_SWEEP = re.compile(r"^([A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]+/[A-Za-z0-9]+$")


def is_wandb_sweep(sweep_id: str) -> bool:
    return bool(_WANDB_SWEEP.match(sweep_id))
