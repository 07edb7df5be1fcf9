"""What agents and controllers share about a run's life, for the local agent and the SLURM launcher alike:
- `final_state(exit_code, summary, ...)`: a finished child's state from its exit code and summary.json;
- `run_dir`, `read_history`, `read_summary`, `HistoryFollower`: the run folder contract (docs/architecture.md).

Proposing and stopping runs (W&B's `sweeps` engine) is harness.sweep.engine, which the store uses too.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from harness.io import read_json, read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    from harness.sweep.store import Store

def run_dir(root: str | os.PathLike[str], sweep_id: str, run_id: str) -> Path:
    """`<root>/<sweep_id>/<run_id>/`, the run folder of the training contract."""
    return Path(root) / sweep_id / run_id


def final_state(exit_code: int, summary: Mapping[str, Any] | None, stop_requested: bool = False,
                preempt_requested: bool = False) -> str:
    """A finished child's run state.

    finished: exit 0 (and summary.json, if any, does not say preempted); stopped: we asked it to stop
    (hyperband, `sweep stop`); preempted: we forwarded a signal to it, or it exited 128+N / by signal N,
    or its summary says preempted; failed: anything else (exit 1, 2, ...).
    """
    status = (summary or {}).get("status")
    if exit_code == 0 and status != "preempted":
        return "finished"
    if stop_requested:
        return "stopped"
    if preempt_requested or status == "preempted" or _killed_by_signal(exit_code):
        return "preempted"
    return "failed"


def _killed_by_signal(exit_code: int) -> bool:
    if exit_code < 0:  # subprocess reports death by signal N as -N
        return True
    valid = {int(sig) for sig in signal.valid_signals()}
    return exit_code > 128 and (exit_code - 128) in valid


def read_history(folder: str | os.PathLike[str], skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl`, one per epoch (a resumed run's repeated epoch: the last row wins).

    Read through `harness.io.read_jsonl`, the one tolerant reader: a torn line anywhere is skipped
    (and reported: into `skipped` when given, else on stderr), the rows after it are kept.
    """
    rows = read_jsonl(Path(folder) / "metrics.jsonl", skipped)
    by_epoch: dict[Any, dict[str, Any]] = {}
    unnumbered = []
    for row in rows:
        if "epoch" in row:
            by_epoch[row["epoch"]] = row
        else:
            unnumbered.append(row)
    ordered = [by_epoch[epoch] for epoch in sorted(by_epoch, key=_epoch_key)]
    return ordered + unnumbered


class HistoryFollower:
    """Copies a run folder's metrics.jsonl into the store whenever the file changes.

    Used by the agent (for its child) and by the SLURM controller (for its jobs): both learn a run's
    progress only from its folder, never from the run itself.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / "metrics.jsonl"
        self.epochs_seen = 0
        self._stamp: tuple[int, int] | None = None
        self._reported: set[str] = set()

    def sync(self, store: "Store", run_id: str) -> bool:
        """Record the history if metrics.jsonl changed since the last call; True when it has new epochs."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        skipped: list[str] = []
        rows = read_history(self.path.parent, skipped)
        for message in skipped:  # each torn line once, not at every poll
            if message not in self._reported:
                self._reported.add(message)
                print(f"warning: {message}", file=sys.stderr, flush=True)
        store.record_history(run_id, rows)
        grew = len(rows) > self.epochs_seen
        self.epochs_seen = len(rows)
        return grew


def read_summary(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """`summary.json` of a run folder, or None when the run never wrote one."""
    try:
        summary = read_json(Path(folder) / "summary.json")
    except ValueError:  # written atomically by train, so only a foreign program leaves a torn file
        return None
    return summary if isinstance(summary, dict) else None


def _epoch_key(epoch: Any) -> float:
    try:
        return float(epoch)
    except (TypeError, ValueError):
        return math.inf
