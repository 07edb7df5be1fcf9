"""The states of sweeps and runs, named once for the store, the engine bridge, the agents and the launchers.

Run states: pending (claimed, not started: a queued SLURM job), running, finished, failed, crashed
(its agent stopped heartbeating), preempted (stopped by a signal after a checkpoint), stopped
(hyperband or `harness sweep stop`). Crashed and preempted runs are resumed first, with the same id
and config, while they have had fewer than `max_attempts` failures of their own.
Sweep states: running (runs are handed out), paused (none are; running runs go on), stopped (none are,
and agents stop their running runs), finished (grid exhausted or run_cap reached, nothing left running).

Below the store and the engine bridge (harness.sweep.engine), which both read them.
"""

from __future__ import annotations

SWEEP_STATES = ("running", "paused", "stopped", "finished")
RUN_STATES = ("pending", "running", "finished", "failed", "crashed", "preempted", "stopped")
ACTIVE_STATES = ("pending", "running")
RESUMABLE_STATES = ("preempted", "crashed")
DEFAULT_MAX_ATTEMPTS = 5
