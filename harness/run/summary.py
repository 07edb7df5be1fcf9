"""What a training run says about itself in its summary.json (harness.runfolder.SUMMARY_FILE).

The summary is rewritten when the run starts, after every epoch and when it ends (finished,
preempted, stopped or failed): the agents, the SLURM controller and `harness status` read it to know
what the run did, so it always holds the run's status, its best and last metrics and who wrote it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from harness import model as model_module
from harness import runfolder
from harness.config import Config
from harness.run import checkpoint as checkpoint_module


class RunSummary:
    """The summary.json of one run folder: which run it is and what it has done so far."""

    def __init__(self, run_dir: Path, config: Config, run_id: str, sweep_id: str | None):
        self.run_dir = run_dir
        self.config = config
        self.run_id = run_id
        self.sweep_id = sweep_id

    def write(self, status: str, state: checkpoint_module.TrainState | None, rows: list[dict[str, Any]],
              **extra: Any) -> dict[str, Any]:
        """Write the summary for `status` after the epochs in `rows` (the metrics rows); returns it."""
        state = state or checkpoint_module.TrainState()
        summary = {
            "run_id": self.run_id,
            "sweep_id": self.sweep_id,
            "status": status,
            "epochs_completed": state.epoch,
            "epochs": self.config.epochs,
            "best": {"metric": self.config.monitor, "value": state.best_value, "epoch": state.best_epoch},
            "final": rows[-1] if rows else {},
            "iterations": state.iterations,
            "stopped_early": state.stopped_early,
            "model": model_module.describe_model(self.config),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        runfolder.write_summary(self.run_dir, summary)
        return summary


def wandb_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's summary that W&B shows in its run table."""
    best = summary.get("best") or {}
    return {f"best_{best.get('metric')}": best.get("value"), "best_epoch": best.get("epoch"), "status": summary.get("status")}
