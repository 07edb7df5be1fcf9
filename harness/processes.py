"""Process helpers shared by the run, the agents and the launchers: one of each.

- `process_start(pid)`: a live process's start time (to tell a pid from a reused one), None if gone;
- `pid_alive(pid)`: the process runs (not a zombie);
- `die_with_parent()`: a `preexec_fn` so Linux sends the child SIGTERM when its parent dies, however
  the parent dies (kill -9 included);
- `SignalFlag`: signal handlers that only record (loops act on them at a safe point);
- `sleep_unless(seconds, stop)`: a sleep that ends early when `stop()` becomes true;
- `child_environment()`: this process's environment for a child, less what a child must not inherit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# wandb sets WANDB_SERVICE in the environment of a process that used wandb (a notebook, a test session,
# a launcher that called the W&B API): a child inheriting it attaches to that process's wandb-core
# instead of starting its own. A run killed -9 then leaves its stream open in a service that outlives
# it, still appending system metrics to its .wandb file until that other process exits: its live sync
# never sees the file end (seen in CI: tests/launch/test_sync.py, run-sigkill).
NOT_INHERITED = ("WANDB_SERVICE",)


def process_start(pid: int | None) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None when it is not
    running or is a zombie (exited, not yet reaped: it holds nothing any more)."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(") ", 1)[-1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` runs on this host (a zombie does not)."""
    return process_start(pid) is not None


def child_environment() -> dict[str, str]:
    """A copy of os.environ for a child process, without `NOT_INHERITED` (each child its own wandb-core)."""
    return {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}


def die_with_parent() -> None:
    """In a child before exec (`preexec_fn=`): SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class SignalFlag:
    """Records the signals received (count, first, last) instead of acting on them mid-write.

    `on_signal(signum)`, if given, runs inside the handler (keep it to flag-setting and signal forwarding).
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
                 on_signal: Callable[[int], None] | None = None) -> None:
        self.signals = tuple(signals)
        self.on_signal = on_signal
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "SignalFlag":
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals belong to whoever owns it
                break
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __bool__(self) -> bool:
        return self.count > 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.first = self.first or signum
        self.last = signum
        if self.on_signal is not None:
            self.on_signal(signum)


def sleep_unless(seconds: float, stop: Callable[[], Any], tick_s: float = 0.1,
                 each: Callable[[], None] | None = None) -> bool:
    """Sleep `seconds`, waking every `tick_s` to check `stop()` (and run `each()`); True if stopped early."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stop():
            return True
        if each is not None:
            each()
        time.sleep(min(tick_s, max(0.0, deadline - time.monotonic())))
    return bool(stop())
