"""The run-folder lease: exactly one process trains in a run folder at any moment.

A run folder is single-writer. Its writer holds `<run_dir>/lease.json`:

    {"token": "...", "host": "node3", "pid": 4242, "pid_start": "123456", "boot_id": "...",
     "started": 1767312000.0, "renewed": 1767312060.0, "ttl_s": 60.0}

API (all a caller needs; `harness.train`, the sweep agent, the SLURM controller and tests use it):

    lease = Lease.acquire(run_dir)      # taken atomically, or LeaseHeld (exit code EXIT_OWNED)
    lease.start_renewing()              # a daemon thread renews it every ttl/3; lease.lost turns True
                                        # if it is no longer this process's (then stop, write nothing)
    lease.check()                       # LeaseLost unless the file still names this lease (cheap read)
    lease.release()                     # remove it (only if it is still ours); also `with Lease...:`
    read(run_dir) -> Holder | None      # who holds it (None: no lease file)
    live_holder(run_dir) -> Holder|None # the holder unless it is provably gone or expired (for
                                        # agents / the SLURM controller before they start a run)
    holder_process_alive(holder)        # True/False on the holder's own host, None elsewhere

Taking, renewing, breaking and releasing happen under a short mutex (`os.mkdir` of
`.lease.lock`, atomic on local and network filesystems; one left by a process killed inside the
few milliseconds it is held is broken after MUTEX_STALE_S, judged by the filesystem's own clock).

A lease held by someone else is broken only when its holder is provably gone or it expired:
- on the holder's own host (same hostname and boot id): the pid is not running, or runs another
  program (its start time differs), or is a zombie; a machine that rebooted (other boot id) has no
  holder left. A live holder on this host is never broken, however late its renewal.
- on another host: it expired, i.e. was not renewed for ttl_s + skew_s, both by this host's clock
  against the `renewed` stamp and by the filesystem's clock (the file's mtime against a fresh probe
  file's), so a clock skew between hosts of up to skew_s cannot break a live lease.

Every acquisition and release is also appended, inside the mutex, to `<run_dir>/lease.journal`
(JSON lines: event acquired/released, token, host, pid, pid_start, time; an acquisition names the
lease it broke, if any, and why). It is the folder's ownership history: the chaos test
(tests/launch/test_chaos.py) checks from it that no two processes ever held one folder at once, and
after an incident it says who trained there when. A release the journal lacks is a holder that
died without one (kill -9, lost node); the next acquisition records why it broke that lease.

Defaults: ttl DEFAULT_TTL_S (env HARNESS_LEASE_TTL_S), skew margin DEFAULT_SKEW_S (env
HARNESS_LEASE_SKEW_S): a run whose node died can be taken over elsewhere after at most ttl + skew
(90 s). A second trainer exits at once with EXIT_OWNED (75, EX_TEMPFAIL: "someone else owns it,
try later"); agents and the SLURM controller treat that as neither a crash nor a spent attempt.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from harness import io, processes
from harness.errors import HarnessError

LEASE_FILE = "lease.json"
JOURNAL_FILE = "lease.journal"  # append-only ownership history (see the module docstring)
MUTEX = ".lease.lock"
EXIT_OWNED = 75  # sysexits EX_TEMPFAIL: the folder is someone else's; not this run's failure
DEFAULT_TTL_S = 60.0
DEFAULT_SKEW_S = 30.0
MUTEX_STALE_S = 10.0
MUTEX_WAIT_S = 15.0


class LeaseHeld(HarnessError):
    """Another live process holds the run folder's lease."""

    exit_code = EXIT_OWNED

    def __init__(self, message: str, holder: "Holder"):
        super().__init__(message)
        self.holder = holder


class LeaseLost(HarnessError):
    """This process's lease was broken or replaced: it must stop writing to the run folder."""

    exit_code = EXIT_OWNED


@dataclasses.dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    pid_start: str | None
    boot_id: str | None
    started: float
    renewed: float
    ttl_s: float

    def describe(self) -> str:
        age = time.time() - self.renewed
        return (f"pid {self.pid} on {self.host} (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}, "
                f"renewed {age:.0f} s ago, ttl {self.ttl_s:g} s)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Holder":
        return cls(token=str(values["token"]), host=str(values["host"]), pid=int(values["pid"]),
                   pid_start=values.get("pid_start"), boot_id=values.get("boot_id"),
                   started=float(values["started"]), renewed=float(values["renewed"]), ttl_s=float(values["ttl_s"]))


def default_ttl_s() -> float:
    return float(os.environ.get("HARNESS_LEASE_TTL_S") or DEFAULT_TTL_S)


def default_skew_s() -> float:
    return float(os.environ.get("HARNESS_LEASE_SKEW_S") or DEFAULT_SKEW_S)


def read(run_dir: str | os.PathLike[str]) -> Holder | None:
    """The lease's holder as recorded (None: no lease). An unreadable lease file counts as none held
    only once it is older than the mutex (a torn write cannot happen: it is written atomically)."""
    values = io.read_json(Path(run_dir) / LEASE_FILE) if (Path(run_dir) / LEASE_FILE).exists() else None
    try:
        return Holder.from_dict(values) if isinstance(values, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def holder_process_alive(holder: Holder) -> bool | None:
    """On the holder's host: whether its process still runs (same pid, same start time, not a zombie).
    None on any other host (nothing there can be proved about it from here)."""
    if holder.host != socket.gethostname():
        return None
    if holder.boot_id and _boot_id() and holder.boot_id != _boot_id():
        return False  # the machine rebooted since: every process of that boot is gone
    start = processes.process_start(holder.pid)
    if start is None:
        return False
    return holder.pid_start is None or start == holder.pid_start


def stale_reason(run_dir: str | os.PathLike[str], holder: Holder, skew_s: float | None = None) -> str | None:
    """Why `holder`'s lease may be broken now (None: it may not: its holder may be alive)."""
    alive = holder_process_alive(holder)
    if alive is True:
        return None
    if alive is False:
        return f"its holder, pid {holder.pid} on this host, is gone"
    skew_s = default_skew_s() if skew_s is None else skew_s
    limit = holder.ttl_s + skew_s
    by_clock = time.time() - holder.renewed
    by_filesystem = _filesystem_age(Path(run_dir) / LEASE_FILE)
    if by_clock > limit and (by_filesystem is None or by_filesystem > limit):
        return f"not renewed for {by_clock:.0f} s (> ttl {holder.ttl_s:g} s + clock-skew margin {skew_s:g} s)"
    return None


def live_holder(run_dir: str | os.PathLike[str], skew_s: float | None = None) -> Holder | None:
    """The lease's holder unless there is none or it may be broken (gone or expired)."""
    holder = read(run_dir)
    if holder is None or stale_reason(run_dir, holder, skew_s) is not None:
        return None
    return holder


class Lease:
    """This process's lease on a run folder (see the module docstring)."""

    def __init__(self, run_dir: Path, holder: Holder, skew_s: float):
        self.run_dir = run_dir
        self.holder = holder
        self.skew_s = skew_s
        self.lost = False
        self.broke: str | None = None  # why a previous holder's lease was broken, if one was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike[str], ttl_s: float | None = None,
                skew_s: float | None = None) -> "Lease":
        """Take the lease on `run_dir` (created if missing) or raise LeaseHeld naming its holder."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        ttl_s = default_ttl_s() if ttl_s is None else float(ttl_s)
        skew_s = default_skew_s() if skew_s is None else float(skew_s)
        now = time.time()
        mine = Holder(token=secrets.token_hex(8), host=socket.gethostname(), pid=os.getpid(),
                      pid_start=processes.process_start(os.getpid()), boot_id=_boot_id(), started=now, renewed=now,
                      ttl_s=ttl_s)
        with _mutex(run_dir):
            current = read(run_dir)
            broke = None
            if current is not None:
                broke = stale_reason(run_dir, current, skew_s)
                if broke is None:
                    raise LeaseHeld(
                        f"run folder {run_dir} is in use by {current.describe()}: only one process may train "
                        f"in a run folder (this one exits with code {EXIT_OWNED}; the lease is {run_dir / LEASE_FILE})",
                        current,
                    )
            # Journalled before the lease file is written, so the recorded start is never late.
            _journal(run_dir, "acquired", mine, broke=broke, previous=current.token if current is not None else None)
            io.atomic_write_json(run_dir / LEASE_FILE, dataclasses.asdict(mine))
        lease = cls(run_dir, mine, skew_s)
        if current is not None:
            lease.broke = f"took over the lease of {current.describe()}: {broke}"
        return lease

    def check(self) -> None:
        """Raise LeaseLost unless the lease file still names this lease."""
        current = read(self.run_dir)
        if self.lost or current is None or current.token != self.holder.token:
            self.lost = True
            holder = f"now held by {current.describe()}" if current is not None else "its file is gone"
            raise LeaseLost(f"lost the lease on {self.run_dir} ({holder}): stopping without writing")

    def renew(self) -> None:
        """Stamp the lease as renewed now (LeaseLost if it is no longer ours)."""
        with _mutex(self.run_dir):
            self.check()
            self.holder = dataclasses.replace(self.holder, renewed=time.time())
            io.atomic_write_json(self.run_dir / LEASE_FILE, dataclasses.asdict(self.holder))

    def start_renewing(self, every_s: float | None = None) -> "Lease":
        """Renew in a daemon thread every `every_s` (default ttl/3); a second call does nothing."""
        if self._thread is not None:
            return self
        every_s = self.holder.ttl_s / 3 if every_s is None else every_s

        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.renew()
                except LeaseLost:
                    self.lost = True
                    return
                except OSError:
                    continue  # a filesystem hiccup: try again next time (expiry allows ttl + skew)

        self._thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with _mutex(self.run_dir):
                current = read(self.run_dir)
                if current is not None and current.token == self.holder.token:
                    (self.run_dir / LEASE_FILE).unlink(missing_ok=True)
                    # Journalled after the file is gone, so the recorded end is never early.
                    _journal(self.run_dir, "released", self.holder)
        except (OSError, LeaseLost):
            pass

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_journal(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The folder's ownership history (`lease.journal`), oldest first; [] when there is none."""
    return io.read_jsonl(Path(run_dir) / JOURNAL_FILE)


# --- helpers ----------------------------------------------------------------------------------------
def _journal(run_dir: Path, event: str, holder: Holder, **extra: Any) -> None:
    """Append one line to the ownership journal: a single O_APPEND write (called under the mutex)."""
    row = {"event": event, "token": holder.token, "host": holder.host, "pid": holder.pid,
           "pid_start": holder.pid_start, "time": time.time(), **extra}
    line = (io.jsonl_text([row])).encode()
    descriptor = os.open(run_dir / JOURNAL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


class _mutex:
    """mkdir-based mutex around a lease read-modify-write (held for milliseconds)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / MUTEX

    def __enter__(self) -> None:
        deadline = time.monotonic() + MUTEX_WAIT_S
        while True:
            try:
                os.mkdir(self.path)
                return
            except FileExistsError:
                age = _filesystem_age(self.path)
                if age is not None and age > MUTEX_STALE_S:
                    # Its holder was killed inside the critical section: break it (rmdir fails
                    # harmlessly if another breaker was first).
                    try:
                        os.rmdir(self.path)
                    except OSError:
                        pass
                    continue
                if time.monotonic() > deadline:
                    raise LeaseLost(f"{self.path} stayed locked for {MUTEX_WAIT_S:g} s (remove it if no harness "
                                    "process is running on this run)")
                time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass


def _filesystem_age(path: Path) -> float | None:
    """Seconds since `path` was last modified, by the clock of the filesystem that holds it (a probe
    file's mtime), so another host's clock skew does not enter. None when `path` is gone."""
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return None
    probe = path.parent / f".lease-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.touch()
        now = probe.stat().st_mtime
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES):
            return time.time() - modified
        raise
    finally:
        probe.unlink(missing_ok=True)
    return now - modified


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
