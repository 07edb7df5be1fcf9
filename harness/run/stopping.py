"""What a signal to a training run means: **preempt** (save, come back later) or **stop** (save, done).

Every signal here makes the run save a checkpoint after the current batch; they differ in how it ends:

- preempt: `status: preempted`, `run.mark_preempting()` under W&B (the sweep hands the run out again
  with the same id), exit 128 + the signal number. SIGUSR1 always means preempt: the launcher
  (`harness.launch`) and the SLURM jobs send it for Ctrl-C, SIGTERM, a time limit or a preemption;
  SIGUSR2 too (SLURM's own warning, which reaches every process of a job).
- stop: `status: stopped`, no `mark_preempting`, exit 0. Under `wandb agent` (WANDB_SWEEP_ID set and
  no HARNESS_SWEEP_ID) the agent's SIGTERM is how W&B stops a run (a hyperband `stop`, the UI's
  stop button, `wandb sweep --stop`), so SIGTERM, SIGHUP and SIGQUIT mean stop there: the run must
  not ask to be handed out again. SIGINT (Ctrl-C on the agent's terminal) still means preempt.

The run's flag (`stop_flag`, a harness.processes.SignalFlag) is checked after every batch; a signal
ignored when the run starts (nohup) stays ignored, and the same signal a second time exits at once
(the checkpoint in force is always complete). `Preempted` carries the signal out of Keras's fit()
once its checkpoint is written.

Outside a W&B sweep (a local sweep's agent, SLURM jobs of a local sweep, a run by hand) every one of
them means preempt, as before: the local agent records hyperband stops itself.
"""

from __future__ import annotations

import os
import signal
from typing import Mapping

from harness import processes

# The signals a run handles (those this platform has): each saves a checkpoint first.
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT")
PREEMPT_ALWAYS = ("SIGUSR1", "SIGUSR2", "SIGINT")
PREEMPT, STOP = "preempted", "stopped"


class Preempted(Exception):
    """Raised inside fit() once a stop signal's checkpoint is written."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_flag() -> processes.SignalFlag:
    """The flag a training run installs for SIGNALS (those this platform has): see the module docstring."""
    numbers = [getattr(signal, name) for name in SIGNALS if hasattr(signal, name)]
    return processes.SignalFlag(numbers, keep_ignored=True, exit_on_repeat=True,
                                announce="saving a checkpoint and stopping")


def under_wandb_agent(environ: Mapping[str, str] | None = None) -> bool:
    """True when `wandb agent` started this run (not this project's local agent or SLURM controller)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("WANDB_SWEEP_ID")) and not environ.get("HARNESS_SWEEP_ID")


def meaning(signum: int, environ: Mapping[str, str] | None = None) -> str:
    """PREEMPT or STOP for a signal received by a run (see the module docstring)."""
    name = signal.Signals(signum).name
    if name in PREEMPT_ALWAYS or not under_wandb_agent(environ):
        return PREEMPT
    return STOP


def exit_code(signum: int, environ: Mapping[str, str] | None = None) -> int:
    """0 for a stop (W&B counts a non-zero exit as a failed run), 128 + N for a preemption."""
    return 0 if meaning(signum, environ) == STOP else 128 + int(signum)
