"""Upload a local sweep's offline W&B runs from where the network is, while they train.

Runs of a local sweep log W&B offline (`<run folder>/wandb/offline-run-<time>-<run id>/`). When the
launcher (GPU box or SLURM controller on a login node) can reach W&B, `LiveSyncer` uploads them as
they grow, with W&B's own sync entry point: one `wandb beta sync --live FOLDER` process per offline
folder, which tails the folder's `.wandb` transaction log, sends each new record once and exits at
the run's exit record (or, for a process killed without one, at the end of what it wrote). Nothing
here reads or uploads W&B data itself.

Why one live process per folder rather than repeating `wandb sync` after each epoch: wandb 0.31
re-sends a whole `.wandb` file each time it is synced again (`--include-synced`), so each epoch
would reach W&B once per sync. A live sync sends every record once.

How it behaves (checked against tests/fakes/wandb_backend.py, see tests/launch/test_sync.py):
- One W&B run per cloudsweep run: the folders of a run (one per process: a preempted and resumed
  run has several, same id) are synced one after another in start order, each into the same W&B run
  id, so its history is one continuous line with each epoch's step once.
- Runs flush their `.wandb` file every `FLUSH_INTERVAL_S` seconds (`RUN_ENV`, which the launcher gives
  the runs it starts); W&B's default is 15 s.
- A sync process that fails (the service down at its start, an error) is retried with a growing
  back-off (`backoff_s` doubling up to `max_backoff_s`); while one runs, the service erroring for a
  while only delays it (wandb-core retries). At most `max_processes` run at once; the others wait.
- It works in its own thread and child processes: the launcher's loop never waits for it, except at
  the very end (`close`), when it gives the last uploads `timeout_s` to finish.
- A folder whose writer is gone (a newer folder of the run exists, or the launcher is finishing) and
  whose live sync has not exited after its file stopped growing for `stall_s`, while the service was
  reachable all that time, is ended and marked synced: W&B's live mode hangs on the `.wandb` file of a
  process killed without finishing (seen with kill -9; W&B documents it). While the service is not
  reachable the sync is left to retry (its back-off is capped at `RETRY_WAIT_MAX_S` so it tries again
  soon after the service is back).
- A sync of such a folder that fails (exits) instead is retried after at most `stall_s` (the writer is
  gone: nothing to wait for), and after `give_up_after` failures while the service answered, given up:
  the folder is left unmarked, named, and `harness sync` uploads it later. So `close` never waits out
  its whole grace on a folder that cannot be uploaded live.

`sync_sweep` (`harness sync --sweep ID`) is the same by hand, for a sweep that ran with no network:
one `wandb sync` of every folder not yet synced; W&B's `.wandb.synced` markers make a second call
upload nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from harness import processes, runfolder

FLUSH_INTERVAL_S = 5  # how often a run writes its .wandb file while syncing is on (W&B's default: 15 s)
RUN_ENV = {"WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL": str(FLUSH_INTERVAL_S)}
HEADER_BYTES = 7  # a .wandb file holding only its header: the process wrote nothing before it died
OFFLINE_PREFIX = "offline-run-"
RETRY_WAIT_MAX_S = 10  # the sync processes' longest wait between retries (wandb-core's file_stream/GraphQL)
SYNC_ENV = {"WANDB_X_FILE_STREAM_RETRY_WAIT_MAX_SECONDS": str(RETRY_WAIT_MAX_S),
            "WANDB_X_GRAPHQL_RETRY_WAIT_MAX_SECONDS": str(RETRY_WAIT_MAX_S)}
DEFAULT_BASE_URL = "https://api.wandb.ai"


def service_reachable(base_url: str | None = None, timeout_s: float = 5.0) -> bool:
    """Does the W&B service answer at all (any HTTP status below 500)? Only a health probe: the
    uploads themselves are W&B's own sync."""
    import urllib.error
    import urllib.request

    url = (base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return reply.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except (OSError, ValueError):
        return False


def offline_folders(root: Path, sweep_id: str) -> dict[str, list[Path]]:
    """{run id: its offline W&B folders, oldest first} for a sweep's run folders under `root`."""
    sweep_folder = runfolder.sweep_dir(root, sweep_id)
    found: dict[str, list[Path]] = {}
    for folder in sorted(sweep_folder.glob(f"*/wandb/{OFFLINE_PREFIX}*")):
        if folder.is_dir():
            found.setdefault(folder.name.rsplit("-", 1)[-1], []).append(folder)
    # The folder name starts with its start time (offline-run-YYYYMMDD_HHMMSS-ID): name order is start order.
    return {run_id: sorted(folders, key=lambda path: path.name) for run_id, folders in found.items()}


def wandb_file(folder: Path) -> Path:
    return folder / f"run-{folder.name.rsplit('-', 1)[-1]}.wandb"


def is_synced(folder: Path) -> bool:
    """W&B's own marker: `wandb sync` and `wandb beta sync` write `run-ID.wandb.synced` when done."""
    return wandb_file(folder).with_suffix(".wandb.synced").exists()


def mark_synced(folder: Path) -> None:
    """Write W&B's marker ourselves (a live sync that had to be ended after it sent everything)."""
    from harness import io

    io.atomic_write_text(wandb_file(folder).with_suffix(".wandb.synced"), f"{int(time.time())}\n")


def file_size(folder: Path) -> int:
    try:
        return wandb_file(folder).stat().st_size
    except FileNotFoundError:
        return 0


@dataclasses.dataclass
class _Folder:
    path: Path
    process: subprocess.Popen | None = None
    failures: int = 0
    retry_at: float = 0.0
    size: int = -1
    grew_at: float = dataclasses.field(default_factory=time.monotonic)
    done: bool = False
    given_up: bool = False  # done without being uploaded (see LiveSyncer.give_up_after)


class LiveSyncer:
    """Keeps one live `wandb beta sync` per growing offline folder of a sweep; see the module docstring."""

    def __init__(self, root: Path, sweep_id: str, python: str | None = None, poll_s: float = 2.0,
                 max_processes: int = 8, backoff_s: float = 5.0, max_backoff_s: float = 300.0,
                 stall_s: float = 30.0, give_up_after: int = 3, echo: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.sweep_id = sweep_id
        self.python = python or sys.executable
        self.poll_s = poll_s
        self.max_processes = max_processes
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stall_s = stall_s
        self.give_up_after = give_up_after
        self.echo = echo
        self.log_dir = runfolder.sweep_dir(self.root, sweep_id) / runfolder.SYNC_DIR  # <run id>.log each
        self.folders: dict[Path, _Folder] = {}
        self.started = 0  # sync processes started, in all
        self.reachable_since: float | None = None  # since when the service has answered each probe
        self._probed = False  # probed in this pass already
        self._finishing = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "LiveSyncer":
        self._thread = threading.Thread(target=self._loop, name="wandb-sync", daemon=True)
        self._thread.start()
        self.echo(f"[sync] uploading the sweep's offline W&B runs as they train (logs in {self.log_dir})")
        return self

    def close(self, timeout_s: float = 300.0) -> bool:
        """The runs are over: let the last uploads finish (at most `timeout_s`); True when all did."""
        self._finishing.set()
        processes.wait_until(lambda: self._thread is None or not self._thread.is_alive() or self._all_done(),
                             timeout_s, tick_s=0.2)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        left = self._terminate_all()
        if left:
            self.echo(f"[sync] {left} folder(s) not uploaded yet: `harness sync {self.sweep_id} --root {self.root}` "
                      f"uploads them")
        else:
            self.echo(f"[sync] every offline W&B run of {self.sweep_id} is uploaded")
        return not left

    def detach(self) -> None:
        """The launcher stops watching but the runs go on: end the sync processes now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._terminate_all()

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as error:  # never take the launcher down: say it and try again later
                self.echo(f"[sync] error (retrying): {type(error).__name__}: {error}")
            if self._finishing.is_set() and self._all_done():
                return
            self._stop.wait(self.poll_s)

    def step(self) -> None:
        """One pass: reap finished sync processes, end stalled ones, start the next folders."""
        now = time.monotonic()
        self._probed = False
        for run_id, folders in offline_folders(self.root, self.sweep_id).items():
            for position, path in enumerate(folders):
                record = self.folders.setdefault(path, _Folder(path))
                if record.done:
                    continue
                superseded = position < len(folders) - 1 or self._finishing.is_set()
                self._advance(run_id, record, superseded, now)
                if not record.done:
                    break  # a run's folders go one after another, in start order

    def _advance(self, run_id: str, record: _Folder, superseded: bool, now: float) -> None:
        size = file_size(record.path)
        if size != record.size:
            record.size, record.grew_at = size, now
        quiet = superseded and now - record.grew_at >= self.stall_s
        if record.process is not None:
            code = record.process.poll()
            if code is None:
                # Its writer is gone, nothing came for a while and the service was up all along:
                # what hangs here is W&B's live mode on a file without an exit record.
                if superseded and self._reachable_for(self.stall_s, now) and quiet:
                    _terminate(record.process)
                    record.process = None
                    mark_synced(record.path)
                    record.done = True
                    self.echo(f"[sync] run {run_id}: ended the live sync of {record.path.name} "
                              f"(its process is gone and it sent what it wrote)")
                return
            record.process = None
            if code == 0 and is_synced(record.path):
                record.done = True
                return
            record.failures += 1
            if superseded and record.failures >= self.give_up_after and self._reachable_for(0.0, now):
                # Its writer is gone and the service answers, yet the sync keeps failing: stop trying
                # live (the launcher would wait for it forever); `harness sync` can upload it later.
                record.done = record.given_up = True
                self.echo(f"[sync] run {run_id}: gave up the live sync of {record.path.name} after "
                          f"{record.failures} failures (exit {code}); see {self._log(run_id)}")
                return
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (record.failures - 1))
            if superseded:  # the writer is gone: nothing to wait for but the service
                delay = min(delay, self.stall_s)
            record.retry_at = now + delay
            self.echo(f"[sync] run {run_id}: sync of {record.path.name} failed (exit {code}); retrying in "
                      f"{delay:.0f} s; see {self._log(run_id)}")
            return
        if is_synced(record.path):
            record.done = True
            return
        if size <= HEADER_BYTES:
            if quiet:  # a process that died before writing anything: nothing to upload
                record.done = True
            return
        if now < record.retry_at or self._running() >= self.max_processes:
            return
        self._start(run_id, record)

    def _start(self, run_id: str, record: _Folder) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self._log(run_id), "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} live sync of {record.path}\n".encode())
            log.flush()
            # Its own session: a Ctrl-C in the launcher's terminal does not cut an upload mid-way.
            record.process = subprocess.Popen(
                [self.python, "-m", "wandb", "beta", "sync", "--live", str(record.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=processes.die_with_parent, env={**SYNC_ENV, **processes.child_environment()},
            )
        self.started += 1

    # -- helpers -----------------------------------------------------------------------------------
    def _reachable_for(self, seconds: float, now: float) -> bool:
        """Has the service answered every probe for `seconds`? (At most one probe per pass.)"""
        if not self._probed:
            self._probed = True
            if service_reachable():
                self.reachable_since = self.reachable_since or now
            else:
                self.reachable_since = None
        return self.reachable_since is not None and now - self.reachable_since >= seconds

    def _log(self, run_id: str) -> Path:
        return self.log_dir / f"{run_id}.log"

    def _running(self) -> int:
        return sum(1 for record in self.folders.values() if record.process is not None)

    def _all_done(self) -> bool:
        known = {path for folders in offline_folders(self.root, self.sweep_id).values() for path in folders}
        return all(path in self.folders and self.folders[path].done for path in known)

    def _terminate_all(self) -> int:
        """End every sync process still running; returns how many folders are not uploaded."""
        for record in self.folders.values():
            if record.process is not None:
                _terminate(record.process)
                record.process = None
        known = [path for folders in offline_folders(self.root, self.sweep_id).values() for path in folders]
        return sum(1 for path in known if not is_synced(path) and file_size(path) > HEADER_BYTES)


def _terminate(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    processes.send_signal(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        processes.send_signal(process, signal.SIGKILL)
        process.wait()


# --- by hand: `harness sync --sweep ID` ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SyncResult:
    uploaded: list[Path]  # folders W&B marked synced by this call
    failed: list[Path]  # folders it was asked to upload that are still not marked synced
    empty: list[Path]  # folders of processes that died before writing anything: nothing to upload
    output: str  # what `wandb sync` printed


def folders_to_sync(root: Path, sweep_id: str) -> tuple[list[Path], list[Path]]:
    """(folders not synced yet, header-only folders) of a sweep; the latter would make `wandb sync` fail."""
    pending, empty = [], []
    for folders in offline_folders(root, sweep_id).values():
        for folder in folders:
            if is_synced(folder):
                continue
            (pending if file_size(folder) > HEADER_BYTES else empty).append(folder)
    return pending, empty


def sync_sweep(root: Path, sweep_id: str, python: str | None = None, parallel: int = 4,
               timeout_s: float = 3600.0) -> SyncResult:
    """Upload every offline folder of the sweep not yet synced, with one `wandb sync` call.

    `wandb sync` uploads the folders of one run id one after another in start order, so a resumed
    run becomes one W&B run; it writes `.wandb.synced` markers, so the next call finds nothing.
    """
    pending, empty = folders_to_sync(root, sweep_id)
    if not pending:
        return SyncResult([], [], empty, "")
    done = subprocess.run([python or sys.executable, "-m", "wandb", "sync", "-n", str(parallel),
                           *map(str, pending)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout_s, env=processes.child_environment())
    uploaded = [folder for folder in pending if is_synced(folder)]
    failed = [folder for folder in pending if not is_synced(folder)]
    return SyncResult(uploaded, failed, empty, done.stdout + done.stderr)


def describe(folders: Iterable[Path]) -> str:
    return ", ".join(f"{folder.parent.parent.name}/{folder.name}" for folder in folders)
