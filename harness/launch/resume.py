"""`--resume`: bring a local sweep back to where its runs can be continued.

After a launcher was stopped (Ctrl-C, SIGTERM, kill -9, a reboot) a sweep can hold runs marked
running whose process is gone, or be paused/stopped. `resume_sweep` sets the sweep running again,
marks every such run crashed, and reports the preempted and crashed runs that agents (or SLURM jobs)
will now resume first, each from its own run folder (same run id, same config, its epoch).
Runs held by the SLURM launcher (agent `slurm`) are left alone: it re-attaches to their jobs.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from harness import processes
from harness.sweep.states import DEFAULT_MAX_ATTEMPTS, RESUMABLE_STATES


def resume_sweep(store: Any, sweep_id: str, echo: Callable[[str], None] = print,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> dict[str, list[str]]:
    """Make the sweep's interrupted runs resumable; returns {'crashed': [...], 'resumable': [...], 'exhausted': [...]}."""
    sweep = store.get_sweep(sweep_id)
    if sweep.state in ("paused", "stopped"):
        store.set_sweep_state(sweep_id, "running")
        echo(f"[resume] sweep {sweep_id} was {sweep.state}: running again")
    host = socket.gethostname()
    crashed = []
    for run in store.runs(sweep_id, states=("pending", "running")):
        if run.agent == "slurm" or run.host not in (None, host):
            continue  # SLURM jobs are re-attached to; runs of other machines are theirs to judge
        if processes.pid_alive(run.pid) or processes.pid_alive(processes.agent_pid(run.agent, host)):
            continue
        store.finish_run(run.id, "crashed", agent=run.agent, own_failure=False)  # its holder is gone
        crashed.append(run.id)
    if crashed:
        echo(f"[resume] {len(crashed)} run(s) marked running had no live process: crashed ({', '.join(crashed)})")
    # --resume is the user's explicit request: runs that used up their attempts get them back.
    revived = store.revive(sweep_id)
    if revived:
        echo(f"[resume] {len(revived)} run(s) that had failed by themselves get {max_attempts} new attempts: "
             f"{', '.join(revived)}")
    resumable = [run.id for run in store.runs(sweep_id, states=RESUMABLE_STATES)]
    if resumable:
        echo(f"[resume] {len(resumable)} preempted/crashed run(s) will be resumed first: {', '.join(resumable)}")
    return {"crashed": crashed, "resumable": resumable, "revived": revived}
