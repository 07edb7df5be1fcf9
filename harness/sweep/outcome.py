"""How a run is going and how it ended, as whoever watches its process learns it: the local agent (its
child) and the SLURM controller (its jobs) alike, both only from the run folder and the exit code.

- `HistoryFollower`: copies the folder's metrics.jsonl into the store whenever it changes;
- `final_state(exit_code, summary, ...)`: a finished child's run state from its exit code and summary.json.

The run folder itself (paths, file names, readers) is harness.runfolder.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Mapping

from harness import runfolder
from harness.sweep.store import Store


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


class HistoryFollower:
    """Copies a run folder's metrics.jsonl into the store whenever the file changes.

    Used by the agent (for its child) and by the SLURM controller (for its jobs): both learn a run's
    progress only from its folder, never from the run itself.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / runfolder.METRICS_FILE
        self.epochs_seen = 0
        self._stamp: tuple[int, int] | None = None
        self._reported: set[str] = set()

    def sync(self, store: Store, run_id: str) -> bool:
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
        rows = runfolder.read_history(self.path.parent, skipped)
        for message in skipped:  # each torn line once, not at every poll
            if message not in self._reported:
                self._reported.add(message)
                print(f"warning: {message}", file=sys.stderr, flush=True)
        store.record_history(run_id, rows)
        grew = len(rows) > self.epochs_seen
        self.epochs_seen = len(rows)
        return grew
