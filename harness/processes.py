"""Process helpers shared by the run, the agents and the launchers: one of each.

- `process_start(pid)`: a live process's start time (to tell a pid from a reused one), None if gone;
- `pid_alive(pid)`: the process runs (not a zombie);
- `process_environment(pid)`: the environment a process was started with (which run a pid is);
- `die_with_parent()`: a `preexec_fn` so Linux sends the child SIGTERM when its parent dies, however
  the parent dies (kill -9 included);
- `SignalFlag`: signal handlers that only record (loops act on them at a safe point), optionally
  keeping ignored signals ignored and exiting at once on a repeated one (a training run's);
- `sleep_unless(seconds, stop)`: a sleep that ends early when `stop()` becomes true;
- `wait_until(predicate, timeout_s)`: poll until `predicate()` is true or the deadline passes;
- `send_signal(target, signum, group)`: signal a process (a pid or a Popen), or its process group,
  that may be gone already;
- `agent_id(host, pid)` / `agent_pid(agent, host)` / `agent_gone(agent, host)`: the store's `HOST:PID`
  id of a local agent process, and whether that process has ended;
- `child_environment(extra)`: this process's environment for a child, less what a child must not
  inherit, plus `extra`; `path_with_python_first(python)`: a child's $PATH whose bare `python` is `python`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
import subprocess
from typing import Any, Callable, Iterable, Mapping

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


def process_environment(pid: int | None) -> dict[str, str] | None:
    """The environment process `pid` was started with (/proc/PID/environ); None when it is gone or not
    ours to read. Tells whether a pid is still the process it was (e.g. a run's, by its WANDB_RUN_ID)."""
    if not pid:
        return None
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    entries = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {name.decode(errors="replace"): value.decode(errors="replace") for name, value in entries}


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of os.environ for a child process, without `NOT_INHERITED` (each child its own wandb-core),
    with `extra` set on top."""
    environment = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
    environment.update(extra or {})
    return environment


def path_with_python_first(python: str, path: str | None = None) -> str:
    """$PATH (or `path`) with the folder of `python` first, so a child's bare `python` is it (W&B's
    `${interpreter}`).

    The folder is the one `python` was named by, not the link's target: a venv's bin/python links to
    the base interpreter, and only the venv's name of it finds the venv's packages.
    """
    folder = os.path.dirname(os.path.abspath(python))
    path = os.environ.get("PATH", "") if path is None else path
    rest = [part for part in path.split(os.pathsep) if part and part != folder]
    return os.pathsep.join([folder, *rest])


def send_signal(target: "int | subprocess.Popen[Any] | None", signum: int, group: bool = False) -> bool:
    """Send `signum` to a pid or a Popen that may have exited already; True if it was delivered.

    With `group`, to the whole process group it leads (a child started with `start_new_session`, and
    what it started), which may outlive its leader: sent even when the leader has exited.
    """
    if target is None:
        return False
    try:
        if group:
            os.killpg(target if isinstance(target, int) else target.pid, signum)
        elif isinstance(target, int):
            os.kill(target, signum)
        else:
            if target.poll() is not None:
                return False
            target.send_signal(signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_until(predicate: Callable[[], Any], timeout_s: float, tick_s: float = 0.1) -> bool:
    """Poll `predicate()` every `tick_s` until it is true (True) or `timeout_s` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bool(predicate())
        time.sleep(min(tick_s, remaining))


def agent_id(host: str, pid: int) -> str:
    """The store's agent id of a local agent process (harness.sweep.agent): `HOST:PID`."""
    return f"{host}:{pid}"


def agent_pid(agent: str | None, host: str) -> int | None:
    """The pid in a local agent's id (`agent_id`) when that agent ran on `host`; None otherwise."""
    agent_host, _, pid = (agent or "").rpartition(":")
    return int(pid) if agent_host and agent_host == host and pid.isdigit() else None


def agent_gone(agent: str | None, host: str) -> bool:
    """Is `agent` a local agent of `host` (`agent_id`) whose process has ended?"""
    pid = agent_pid(agent, host)
    return pid is not None and not pid_alive(pid)


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
    Handlers are installed by the main thread only (Python delivers signals there; elsewhere `install`
    does nothing and the thread's owner handles them). Options a training run wants (all off by default):
    - `keep_ignored`: a signal ignored when the flag is installed (SIG_IGN: nohup's SIGHUP, a SLURM job's
      USR2) stays ignored;
    - `exit_on_repeat`: the first signal received, arriving again, ends the process at once with exit
      code 128 + signum (asked twice: stop now, whatever the loop was doing);
    - `announce`: on the first signal print `received SIGNAME: <announce>` on stderr.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
                 on_signal: Callable[[int], None] | None = None, *, keep_ignored: bool = False,
                 exit_on_repeat: bool = False, announce: str | None = None) -> None:
        self.signals = tuple(signals)
        self.on_signal = on_signal
        self.keep_ignored = keep_ignored
        self.exit_on_repeat = exit_on_repeat
        self.announce = announce
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "SignalFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals belong to whoever owns the main thread
        for signum in self.signals:
            if self.keep_ignored and signal.getsignal(signum) is signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __bool__(self) -> bool:
        return self.count > 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.exit_on_repeat and signum == self.first:
            os._exit(128 + signum)  # the loop's own safe point never came; its last saved state stands
        first_time = self.first is None
        self.count += 1
        self.first = self.first or signum
        self.last = signum
        if first_time and self.announce:
            print(f"\nreceived {signal.Signals(signum).name}: {self.announce}", file=sys.stderr, flush=True)
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
