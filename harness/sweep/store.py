"""The local sweep store: one SQLite file (`<root>/sweeps.db`, or `--store` / $HARNESS_STORE), shared by every
agent on the machine.

Why SQLite: transactions with a real lock let many agent processes claim runs at the same instant
without ever getting the same one, and the file survives any process being killed. The database is in
WAL mode (readers never block the writer) with a long busy timeout; every write that reads-then-writes
runs inside `BEGIN IMMEDIATE`, which takes the write lock before reading, so two claims are serialised.
Only processes on the machine that holds the file may write it (SQLite locking is unreliable on network
filesystems); cluster nodes report through run folders instead (see docs/architecture.md).

The states of sweeps and runs, and how they change, are harness.sweep.states; proposals come from W&B's
engine through harness.sweep.engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import sqlite3
import string
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from harness import processes
from harness.errors import SweepError
from harness.io import runs_root
from harness.sweep import engine, quarantine
from harness.sweep.attempts import START_FAILURE, SUCCESS, Attempt, from_row, to_row
from harness.sweep.spec import sweep_metric
from harness.sweep.states import ACTIVE_STATES, DEFAULT_MAX_ATTEMPTS, RESUMABLE_STATES, RUN_STATES, SWEEP_STATES

DB_NAME = "sweeps.db"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_SCHEMA_VERSION = "2"  # 2: the attempts and quarantine tables


STORE_ENV = "HARNESS_STORE"
# statfs(2) f_type of filesystems where SQLite's locks (and WAL's shared memory) cannot be trusted:
# a store there can hand one run to two agents or corrupt itself. Values from linux/magic.h and the
# vendors' headers.
NETWORK_FILESYSTEMS = {
    0x6969: "NFS",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x517B: "SMB",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS (IBM Spectrum Scale)",
    0x00C36400: "CephFS",
    0x19830326: "BeeGFS",
    0xAAD7AAEA: "PanFS",
    0x5346414F: "AFS",
    0x6B414653: "AFS (kAFS)",
    0x01021997: "9P",
    0x7461636F: "OCFS2",
    0x01161970: "GFS2",
}


def store_path(root: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None) -> Path:
    """Where the store is: `path`, else $HARNESS_STORE, else `<runs root>/sweeps.db`.

    Separate from the runs root because on a cluster the run folders belong on a filesystem every node
    shares while the store must sit on a local disk of the launcher's machine.
    """
    chosen = path if path not in (None, "") else os.environ.get(STORE_ENV) or None
    if chosen is None:
        return runs_root(root) / DB_NAME
    chosen = Path(chosen).expanduser().absolute()
    return chosen / DB_NAME if chosen.is_dir() else chosen


def filesystem_type(path: str | os.PathLike[str]) -> int | None:
    """statfs(2) f_type of the filesystem holding `path` (its nearest existing parent); None off Linux."""
    import ctypes
    import ctypes.util

    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(existing), buffer) != 0:
        return None
    # f_type is the first member, a C long (__fsword_t).
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def check_local_filesystem(path: str | os.PathLike[str], magic: int | None = None) -> None:
    """Refuse a store on a network filesystem (SweepError naming the path, the filesystem and the fix)."""
    magic = filesystem_type(path) if magic is None else magic
    name = NETWORK_FILESYSTEMS.get(magic or 0)
    if name is not None:
        raise SweepError(
            f"the sweep store {path} is on {name}, a network filesystem where SQLite's locking is unreliable "
            "(two agents could claim one run). Keep the run folders there, but put the store on a local disk "
            f"of the launcher's machine: --store /local/disk/sweeps.db (or ${STORE_ENV})")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    workdir TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    seq INTEGER NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    agent TEXT,
    host TEXT,
    gpu TEXT,
    pid INTEGER,
    job_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    heartbeat REAL,
    history TEXT NOT NULL DEFAULT '[]',
    metric_values TEXT NOT NULL DEFAULT '[]',
    best_metric REAL,
    summary TEXT NOT NULL DEFAULT '{}',
    exit_code INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    search_info TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    epochs_at_claim INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs (sweep_id, seq);
-- A claim looks for the oldest resumable run of its sweep: with the state in the index that is a lookup,
-- not a scan of every run of the sweep (benchmarks/scale.py: the claim grew with the number of runs).
CREATE INDEX IF NOT EXISTS runs_by_sweep_state ON runs (sweep_id, state, seq);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    launcher TEXT NOT NULL,
    host TEXT,
    gpu TEXT,
    job_id TEXT,
    outcome TEXT NOT NULL,
    exit_code INTEGER,
    own_failure INTEGER NOT NULL,
    new_epochs INTEGER NOT NULL,
    gpus REAL NOT NULL,
    segments TEXT NOT NULL,
    wall_s REAL NOT NULL,
    lost_s REAL NOT NULL,
    accounting TEXT NOT NULL,
    best_metric REAL,
    place TEXT,
    kind TEXT NOT NULL,
    ended REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_sweep ON attempts (sweep_id, kind, place, ended);
CREATE INDEX IF NOT EXISTS attempts_by_run ON attempts (run_id);
CREATE TABLE IF NOT EXISTS quarantine (
    sweep_id TEXT NOT NULL,
    place TEXT NOT NULL,
    host TEXT,
    gpu TEXT,
    since REAL NOT NULL,
    runs TEXT NOT NULL,
    lifted REAL,
    PRIMARY KEY (sweep_id, place)
);
"""

# Columns enough for the engine and the status table; `history` (every logged key) only on request.
_LIGHT_COLUMNS = ("id, sweep_id, seq, config, state, agent, host, gpu, pid, job_id, attempts, created, started, "
                  "ended, heartbeat, metric_values, best_metric, summary, exit_code, stop_requested, search_info, "
                  "failures")
# Columns added after the first schema: (name, definition) for ALTER TABLE on an older store.
_ADDED_COLUMNS = (("failures", "INTEGER NOT NULL DEFAULT 0"), ("epochs_at_claim", "INTEGER NOT NULL DEFAULT 0"))


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep: its spec (the YAML as a dict), state and the directory it was created from."""

    id: str
    name: str
    spec: dict[str, Any]
    state: str
    created: float
    updated: float
    workdir: str

    @property
    def method(self) -> str:
        return str(self.spec.get("method", ""))

    @property
    def metric_name(self) -> str | None:
        return sweep_metric(self.spec)[0]

    @property
    def goal(self) -> str:
        return sweep_metric(self.spec)[1]

    @property
    def run_cap(self) -> int | None:
        cap = self.spec.get("run_cap")
        return int(cap) if cap else None


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep. `config` is the flat dict of its parameter values ({"learning_rate": 0.001})."""

    id: str
    sweep_id: str
    seq: int
    config: dict[str, Any]
    state: str
    agent: str | None
    host: str | None
    gpu: str | None
    pid: int | None
    job_id: str | None
    attempts: int
    created: float
    started: float | None
    ended: float | None
    heartbeat: float | None
    metric_values: list[float]
    best_metric: float | None
    summary: dict[str, Any]
    exit_code: int | None
    stop_requested: bool
    search_info: dict[str, Any] | None
    history: list[dict[str, Any]] | None = None  # every logged row; None unless asked for
    # Claims in a row that ended without a new epoch and not by an outside cause (its holder lost, a
    # preemption, a stop): the run's own failures. `max_attempts` bounds these, not `attempts` (all claims).
    failures: int = 0

    @property
    def epochs_completed(self) -> int:
        return int(self.summary.get("epochs_completed") or len(self.metric_values))


class Store:
    """The sweep database under a runs root. Cheap to open; open one per process (not per thread)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, timeout_s: float = 60.0, *,
                 path: str | os.PathLike[str] | None = None, read_only: bool = False) -> None:
        """Open the store of runs root `root` (see `store_path` for where the file is).

        `read_only`: for commands that only look (`harness status`, reports): the file must exist (a missing
        store is an error naming the path, never a new empty one), nothing is created, no lock is taken.
        """
        self.root = runs_root(root)
        self.path = store_path(self.root, path)
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise SweepError(f"no sweep store at {self.path}: pass the --root (or --store / $HARNESS_STORE) "
                                 "the sweep was created with")
            self._db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=timeout_s,
                                       isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._metric_cache: dict[str, tuple[str | None, str]] = {}
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_local_filesystem(self.path)
        # isolation_level=None: no implicit transactions; `_write()` opens BEGIN IMMEDIATE itself.
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process kills
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            present = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            for column, definition in _ADDED_COLUMNS:
                if column not in present:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {definition}")
            # An older store gets the tables it lacks above (CREATE ... IF NOT EXISTS) and its version raised.
            db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE "
                       "SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                       (_SCHEMA_VERSION,))
        self._metric_cache = {}
        self._converted: dict[str, tuple[tuple[Any, ...], Any]] = {}  # run id -> (its row's key, its SweepRun)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sweeps ----------------------------------------------------------------------------------
    def create_sweep(self, spec: Mapping[str, Any], name: str | None = None,
                     workdir: str | os.PathLike[str] | None = None) -> str:
        """Register a sweep (state running) and return its id, `local-` + 8 characters.

        `workdir` (default: the current directory) is where agents start runs, so relative paths in
        the sweep (`data_dir: demo/data`) mean the same for every agent.
        """
        now = time.time()
        spec_json = json.dumps(spec)
        workdir = str(Path(workdir or os.getcwd()).absolute())
        with self._write() as db:
            for _ in range(20):
                sweep_id = "local-" + _random_id()
                if db.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone() is None:
                    break
            db.execute(
                "INSERT INTO sweeps (id, name, spec, state, created, updated, workdir) VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (sweep_id, name or str(spec.get("name") or sweep_id), spec_json, now, now, workdir),
            )
        return sweep_id

    def get_sweep(self, sweep_id: str) -> Sweep:
        row = self._db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            known = [r["id"] for r in self._db.execute("SELECT id FROM sweeps ORDER BY created DESC LIMIT 10")]
            raise SweepError(f"unknown sweep id {sweep_id!r} in {self.path}"
                             + (f"; known: {', '.join(known)}" if known else "; it holds no sweeps"))
        return _sweep_from_row(row)

    def sweeps(self) -> list[Sweep]:
        return [_sweep_from_row(row) for row in self._db.execute("SELECT * FROM sweeps ORDER BY created")]

    def set_sweep_state(self, sweep_id: str, state: str) -> Sweep:
        """Move a sweep to running/paused/stopped/finished. A finished sweep cannot be resumed."""
        if state not in SWEEP_STATES:
            raise SweepError(f"sweep state {state!r} is not one of: {', '.join(SWEEP_STATES)}")
        with self._write() as db:
            current = self._sweep_row(db, sweep_id)
            if current["state"] == "finished" and state != "finished":
                raise SweepError(f"sweep {sweep_id} is finished (grid done or run_cap reached); create a new one")
            db.execute("UPDATE sweeps SET state = ?, updated = ? WHERE id = ?", (state, time.time(), sweep_id))
        return self.get_sweep(sweep_id)

    # --- claiming --------------------------------------------------------------------------------
    def claim_run(self, sweep_id: str, agent: str, host: str, gpu: str | None = None, *,
                  state: str = "running", max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Run | None:
        """Hand the next run of a running sweep to `agent`, or None; one transaction, so never twice.

        Order: the oldest preempted or crashed run with fewer than `max_attempts` failures of its own (same id
        and config, attempts + 1); else a new run proposed by `sweeps.next_run` over all the sweep's runs.
        None when the sweep is not running, the grid is exhausted or `run_cap` runs exist; then, if
        nothing is running or resumable, the sweep becomes finished. `state='pending'` suits a
        controller that queues the run as a cluster job and calls `mark_started` when it starts.
        """
        if state not in ACTIVE_STATES:
            raise SweepError(f"claim_run: state must be one of {ACTIVE_STATES}, got {state!r}")
        # Import the engine (about a second) before taking the write lock, not while holding it.
        engine.load_engine()
        now = time.time()
        with self._write() as db:
            sweep = _sweep_from_row(self._sweep_row(db, sweep_id))
            if sweep.state != "running":
                return None
            resumable = db.execute(
                # INDEXED BY: left to itself SQLite walks runs_by_sweep for the ORDER BY, every run of the sweep.
                f"SELECT id FROM runs INDEXED BY runs_by_sweep_state WHERE sweep_id = ? AND state IN {RESUMABLE_STATES} "
                "AND failures < ? ORDER BY seq LIMIT 1",
                (sweep_id, max_attempts),
            ).fetchone()
            if resumable is not None:
                db.execute(
                    # pid stays: the previous attempt's process, for the new holder to wait for (mark_started
                    # replaces it).
                    "UPDATE runs SET state = ?, agent = ?, host = ?, gpu = ?, job_id = NULL, "
                    "attempts = attempts + 1, started = ?, ended = NULL, heartbeat = ?, exit_code = NULL, "
                    "stop_requested = 0, epochs_at_claim = json_array_length(metric_values) WHERE id = ?",
                    (state, agent, host, gpu, now, now, resumable["id"]),
                )
                return self._run(db, resumable["id"])
            count = db.execute("SELECT COUNT(*) FROM runs WHERE sweep_id = ?", (sweep_id,)).fetchone()[0]
            size = engine.grid_size(sweep.spec)
            # A grid never re-proposes a cell that exists, so with as many runs as cells it is done;
            # saying so here spares idle agents an engine call on every poll.
            if (sweep.run_cap is not None and count >= sweep.run_cap) or (size is not None and count >= size):
                self._finish_if_idle(db, sweep_id, max_attempts)
                return None
            # Random search ignores the runs; grid needs their configs; bayes also their metric values.
            runs = [] if sweep.method == "random" else self._converted_runs(db, sweep, max_attempts)
            proposal = engine.suggest(sweep.spec, runs)
            if proposal is None:
                self._finish_if_idle(db, sweep_id, max_attempts)
                return None
            params, search_info = proposal
            run_id = self._new_run_id(db)
            seq = 1 + db.execute("SELECT COALESCE(MAX(seq), 0) FROM runs WHERE sweep_id = ?", (sweep_id,)).fetchone()[0]
            db.execute(
                "INSERT INTO runs (id, sweep_id, seq, config, state, agent, host, gpu, attempts, created, started, "
                "heartbeat, search_info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                (run_id, sweep_id, seq, json.dumps(params), state, agent, host, gpu, now, now, now,
                 json.dumps(search_info) if search_info is not None else None),
            )
            return self._run(db, run_id)

    def mark_stale(self, sweep_id: str, timeout_s: float, host: str | None = None) -> list[str]:
        """Running runs whose heartbeat is older than `timeout_s` become crashed; returns their ids.

        Every agent calls this before claiming, so a run whose agent was killed is resumed by another.
        A controller that runs jobs elsewhere (SLURM) heartbeats its runs while their jobs are alive.
        With `host` (the caller's host name), a run held by a local agent of that host (agent id
        `HOST:PID`, processes.agent_id) whose process is gone is crashed at once, without waiting out the
        heartbeat: /proc answers for this host only, so agents on other hosts are judged by their
        heartbeat alone. A reused pid only delays this to the heartbeat timeout.
        """
        cutoff = time.time() - timeout_s
        with self._write() as db:
            stale = [row["id"] for row in db.execute(
                "SELECT id FROM runs WHERE sweep_id = ? AND state = 'running' AND (heartbeat IS NULL OR heartbeat < ?)",
                (sweep_id, cutoff))]
            if host is not None:
                stale += [row["id"] for row in db.execute(
                    "SELECT id, agent FROM runs WHERE sweep_id = ? AND state = 'running' AND heartbeat >= ?",
                    (sweep_id, cutoff)) if processes.agent_gone(row["agent"], host)]
            for run_id in stale:
                db.execute("UPDATE runs SET state = 'crashed', ended = ? WHERE id = ?", (time.time(), run_id))
        return stale

    # --- a run's life ----------------------------------------------------------------------------
    def mark_started(self, run_id: str, pid: int | None = None, host: str | None = None,
                     gpu: str | None = None) -> None:
        """The run's process started: state running, fresh heartbeat, its pid (and host, and the GPU a
        cluster job was given, e.g. SLURM's CUDA_VISIBLE_DEVICES) recorded."""
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE runs SET state = CASE WHEN state = 'pending' THEN 'running' ELSE state END, pid = ?, "
                "host = COALESCE(?, host), gpu = COALESCE(?, gpu), heartbeat = ? WHERE id = ?",
                (pid, host, gpu, now, run_id),
            )

    def heartbeat(self, run_id: str, agent: str | None = None) -> str | None:
        """Record that the run is alive. Returns what its holder should do, like W&B's heartbeat reply:
        None (carry on), 'stop' (hyperband or `harness sweep stop` asked for it), or 'lost' (the run
        is no longer this agent's: it was marked crashed and perhaps claimed by another agent).
        """
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "SELECT r.state, r.agent, r.stop_requested, s.state AS sweep_state FROM runs r "
                "JOIN sweeps s ON s.id = r.sweep_id WHERE r.id = ?", (run_id,)).fetchone()
            if row is None:
                raise SweepError(f"unknown run id {run_id!r} in {self.path}")
            if row["state"] not in ACTIVE_STATES or (agent is not None and row["agent"] != agent):
                return "lost"
            db.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (now, run_id))
            if row["stop_requested"] or row["sweep_state"] == "stopped":
                return "stop"
        return None

    def request_stop(self, run_id: str) -> None:
        """Ask the run's holder to stop it (it then ends as 'stopped')."""
        with self._write() as db:
            db.execute("UPDATE runs SET stop_requested = 1 WHERE id = ?", (run_id,))

    def record_history(self, run_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store the run's per-epoch rows so far (the whole history: it replaces what was there)."""
        metric, goal = self._metric_of_run(run_id)
        values = [float(row[metric]) for row in rows if metric and _finite(row.get(metric))]
        best = (max(values) if goal == "maximize" else min(values)) if values else None
        with self._write() as db:
            db.execute(
                "UPDATE runs SET history = ?, metric_values = ?, best_metric = ? WHERE id = ?",
                (json.dumps(list(rows), default=_plain), json.dumps(values), best, run_id),
            )

    def finish_run(self, run_id: str, state: str, summary: Mapping[str, Any] | None = None,
                   exit_code: int | None = None, agent: str | None = None, own_failure: bool = True) -> bool:
        """Record a run's final state (and its summary.json and exit code).

        With `agent`, only if the run is still that agent's (False otherwise: it was taken over).
        A claim that ends crashed or preempted counts as one of the run's own failures when it logged no new
        epoch and `own_failure` (False: an outside cause, e.g. its holder was lost or a signal was forwarded);
        a claim that made progress clears the count.
        """
        _check_final_state(state)
        with self._write() as db:
            return self._finish_run(db, run_id, state, summary, exit_code, agent, own_failure)

    def _finish_run(self, db: sqlite3.Connection, run_id: str, state: str, summary: Mapping[str, Any] | None,
                    exit_code: int | None, agent: str | None, own_failure: bool) -> bool:
        row = db.execute("SELECT agent, state, failures, epochs_at_claim, json_array_length(metric_values) AS epochs "
                         "FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise SweepError(f"unknown run id {run_id!r} in {self.path}")
        if agent is not None and (row["agent"] != agent or row["state"] not in ACTIVE_STATES):
            return False
        failures = row["failures"]
        if state in RESUMABLE_STATES:
            failures = 0 if row["epochs"] > row["epochs_at_claim"] else failures + (1 if own_failure else 0)
        db.execute(
            "UPDATE runs SET state = ?, summary = COALESCE(?, summary), exit_code = ?, ended = ?, failures = ? "
            "WHERE id = ?",
            (state, json.dumps(summary, default=_plain) if summary is not None else None, exit_code,
             time.time(), failures, run_id),
        )
        return True

    # --- attempts (what each process of a run cost, where it ran) and quarantine -------------------
    def finish_attempt(self, run_id: str, state: str, attempt: Attempt, summary: Mapping[str, Any] | None = None,
                       exit_code: int | None = None, agent: str | None = None, own_failure: bool = True,
                       quarantine_after: int = quarantine.DEFAULT_AFTER) -> "AttemptResult":
        """`finish_run` and the attempt's record in one transaction, with the quarantine rule applied to it
        (harness.sweep.quarantine): so no other agent can see the sweep idle, and finish it, between a run
        failed at a bad place and that run given back."""
        _check_final_state(state)
        with self._write() as db:
            finished = self._finish_run(db, run_id, state, summary, exit_code, agent, own_failure)
            result = self._add_attempt(db, attempt, quarantine_after)
        return dataclasses.replace(result, finished=finished)

    def add_attempt(self, attempt: Attempt, quarantine_after: int = quarantine.DEFAULT_AFTER) -> "AttemptResult":
        """Record an attempt whose run state is recorded otherwise (a claim given back by `release_run`)."""
        with self._write() as db:
            return self._add_attempt(db, attempt, quarantine_after)

    def update_attempt(self, attempt: Attempt, quarantine_after: int = quarantine.DEFAULT_AFTER) -> "AttemptResult":
        """Replace a recorded attempt (`attempt.id`): SLURM's accounting arrived (its node, times, GPUs)."""
        with self._write() as db:
            row = to_row(attempt)
            columns = [name for name in row if name not in ("sweep_id", "run_id")]
            db.execute(f"UPDATE attempts SET {', '.join(f'{name} = ?' for name in columns)}, place = ?, kind = ?, "
                       "ended = ? WHERE id = ?",
                       [_column(row[name]) for name in columns] + [quarantine.place_of(attempt), attempt.kind,
                                                                   attempt.ended, attempt.id])
            return self._judge(db, attempt, quarantine_after)

    def attempts(self, sweep_id: str, accounting: str | None = None) -> list[Attempt]:
        """The sweep's recorded attempts in the order they ended (only those whose accounting is `accounting`)."""
        query = "SELECT * FROM attempts WHERE sweep_id = ?" + (" AND accounting = ?" if accounting else "")
        rows = self._tolerant(query + " ORDER BY ended, id", (sweep_id, accounting) if accounting else (sweep_id,))
        return [_attempt_from_row(row) for row in rows]

    def quarantined(self, sweep_id: str) -> list[quarantine.Quarantine]:
        """The sweep's quarantined places (nodes, GPUs), oldest first."""
        rows = self._tolerant("SELECT * FROM quarantine WHERE sweep_id = ? AND lifted IS NULL ORDER BY since",
                              (sweep_id,))
        return [quarantine.Quarantine(row["sweep_id"], row["place"], row["host"], row["gpu"], row["since"],
                                      tuple(json.loads(row["runs"]))) for row in rows]

    def lift_quarantine(self, sweep_id: str, place: str) -> bool:
        """Give a mended place back to the sweep; False if it was not quarantined. Its failures at start so
        far are forgotten (a new streak starts), its record kept."""
        with self._write() as db:
            return db.execute("UPDATE quarantine SET lifted = ? WHERE sweep_id = ? AND place = ? AND lifted IS NULL",
                              (time.time(), sweep_id, place)).rowcount > 0

    def _tolerant(self, query: str, parameters: Sequence[Any]) -> list[sqlite3.Row]:
        """Rows of a table a read-only look at a store older than it may not find (no table: no rows)."""
        try:
            return list(self._db.execute(query, parameters))
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise

    def _add_attempt(self, db: sqlite3.Connection, attempt: Attempt, quarantine_after: int) -> "AttemptResult":
        if attempt.best_metric is None:
            best = db.execute("SELECT best_metric FROM runs WHERE id = ?", (attempt.run_id,)).fetchone()
            attempt = dataclasses.replace(attempt, best_metric=best["best_metric"] if best else None)
        row = to_row(attempt)
        names = list(row) + ["place", "kind", "ended"]
        cursor = db.execute(f"INSERT INTO attempts ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                            [_column(value) for value in row.values()] + [quarantine.place_of(attempt), attempt.kind,
                                                                          attempt.ended])
        return self._judge(db, dataclasses.replace(attempt, id=cursor.lastrowid), quarantine_after)

    def _judge(self, db: sqlite3.Connection, attempt: Attempt, after: int) -> "AttemptResult":
        """Apply the quarantine rule after this attempt; quarantine new places, give their runs back."""
        done = AttemptResult(attempt.id)
        if after < 1 or attempt.kind not in (START_FAILURE, SUCCESS) or quarantine.place_of(attempt) is None:
            return done
        sweep_id = attempt.sweep_id
        lifted = {row["place"]: row["lifted"] for row in db.execute(
            "SELECT place, lifted FROM quarantine WHERE sweep_id = ?", (sweep_id,))}
        known = {place for place, when in lifted.items() if when is None}
        failing = {row["place"] for row in db.execute(
            "SELECT DISTINCT place FROM attempts WHERE sweep_id = ? AND kind = ?", (sweep_id, START_FAILURE))}
        if not failing - known and attempt.kind == SUCCESS:
            return done  # nothing open to decide: the healthy sweep's case, one small indexed query
        # What the rule reads: every failure at start, and each place's first and last success.
        rows = db.execute(
            "SELECT * FROM attempts WHERE sweep_id = ? AND (kind = ? OR id IN (SELECT id FROM attempts a WHERE "
            "a.sweep_id = ? AND a.kind = ? AND a.ended IN (SELECT MIN(ended) FROM attempts WHERE sweep_id = ? AND "
            "kind = ? AND place = a.place UNION SELECT MAX(ended) FROM attempts WHERE sweep_id = ? AND kind = ? AND "
            "place = a.place)))", (sweep_id, START_FAILURE, sweep_id, SUCCESS, sweep_id, SUCCESS, sweep_id, SUCCESS))
        # A failure at start before its place's quarantine was lifted is forgotten.
        feed = [item for item in map(_attempt_from_row, rows) if item.kind != START_FAILURE
                or item.ended > (lifted.get(quarantine.place_of(item) or "") or 0.0)]
        now = time.time()
        new = [dataclasses.replace(found, since=now) for found in quarantine.newly_quarantined(feed, after, known)]
        for found in new:
            db.execute("INSERT INTO quarantine (sweep_id, place, host, gpu, since, runs) VALUES (?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT (sweep_id, place) DO UPDATE SET since = excluded.since, runs = excluded.runs, "
                       "lifted = NULL", (sweep_id, found.place, found.host, found.gpu, found.since,
                                         json.dumps(list(found.runs))))
        places = known | {found.place for found in new}
        return AttemptResult(attempt.id, quarantined=new, given_back=self._give_back(db, feed, places),
                             at_quarantined_place=attempt.kind == START_FAILURE and quarantine.place_of(attempt) in places)

    def _give_back(self, db: sqlite3.Connection, feed: Sequence[Attempt], places: set[str]) -> list[str]:
        """Failed runs whose failures at start were all at quarantined places become crashed (resumable)."""
        suspects = sorted({item.run_id for item in feed if item.kind == START_FAILURE
                           and quarantine.place_of(item) in places})
        failed = [row["id"] for row in db.execute(
            f"SELECT id FROM runs WHERE state = 'failed' AND id IN ({', '.join('?' * len(suspects))})", suspects)]
        if not failed:
            return []
        rows = db.execute(f"SELECT * FROM attempts WHERE run_id IN ({', '.join('?' * len(failed))})", failed)
        given = quarantine.runs_to_give_back([_attempt_from_row(row) for row in rows], places)
        for run_id in given:
            db.execute("UPDATE runs SET state = 'crashed', ended = ? WHERE id = ? AND state = 'failed'",
                       (time.time(), run_id))
        return given

    def revive(self, sweep_id: str) -> list[str]:
        """The user asked to resume (`--resume`): every crashed or preempted run gets its attempts back."""
        with self._write() as db:
            ids = [row["id"] for row in db.execute(
                f"SELECT id FROM runs WHERE sweep_id = ? AND state IN {RESUMABLE_STATES} AND failures > 0", (sweep_id,))]
            db.execute(f"UPDATE runs SET failures = 0 WHERE sweep_id = ? AND state IN {RESUMABLE_STATES}", (sweep_id,))
        return ids

    def release_run(self, run_id: str, agent: str) -> bool:
        """Hand back a claim whose run never started (e.g. sbatch kept failing, or its folder's lease is
        another live process's: harness/run/lease.py, exit code 75): resumable again, and the claim
        does not count as an attempt. False if the run is no longer `agent`'s active run."""
        with self._write() as db:
            row = db.execute("SELECT agent, state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise SweepError(f"unknown run id {run_id!r} in {self.path}")
            if row["agent"] != agent or row["state"] not in ACTIVE_STATES:
                return False
            db.execute("UPDATE runs SET state = 'preempted', attempts = MAX(attempts - 1, 0), job_id = NULL "
                       "WHERE id = ?", (run_id,))  # failures unchanged: the run did nothing
        return True

    def set_job_id(self, run_id: str, job_id: str | None) -> None:
        """Remember the cluster job that runs this run (so a restarted controller re-attaches to it)."""
        with self._write() as db:
            db.execute("UPDATE runs SET job_id = ? WHERE id = ?", (job_id, run_id))

    # --- reading ---------------------------------------------------------------------------------
    def get_run(self, run_id: str, with_history: bool = False) -> Run:
        return self._run(self._db, run_id, with_history=with_history)

    def runs(self, sweep_id: str, states: Sequence[str] | None = None, with_history: bool = False) -> list[Run]:
        """The sweep's runs in creation order, optionally only those in `states`."""
        self._sweep_row(self._db, sweep_id)  # unknown id -> SweepError
        runs = self._runs(self._db, sweep_id, with_history=with_history)
        return [run for run in runs if states is None or run.state in states]

    def counts(self, sweep_id: str) -> dict[str, int]:
        """Number of runs per state (every state present, zero included)."""
        counts = {state: 0 for state in RUN_STATES}
        for row in self._db.execute("SELECT state, COUNT(*) AS n FROM runs WHERE sweep_id = ? GROUP BY state",
                                    (sweep_id,)):
            counts[row["state"]] = row["n"]
        return counts

    def unfinished(self, sweep_id: str, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> tuple[int, int]:
        """(active runs, resumable runs with fewer than `max_attempts` failures of their own): what an agent
        with nothing to claim waits for."""
        row = self._db.execute(
            f"SELECT COALESCE(SUM(state IN {ACTIVE_STATES}), 0), COALESCE(SUM(state IN {RESUMABLE_STATES} AND "
            "failures < ?), 0) FROM runs WHERE sweep_id = ?", (max_attempts, sweep_id)).fetchone()
        return int(row[0]), int(row[1])

    # --- internals -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database's write lock from its first statement."""
        if self.read_only:
            raise SweepError(f"the sweep store {self.path} was opened read-only (a command that only looks)")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def _sweep_row(self, db: sqlite3.Connection, sweep_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            self.get_sweep(sweep_id)  # raises with the known ids
        return row

    def _runs(self, db: sqlite3.Connection, sweep_id: str, with_history: bool = False) -> list[Run]:
        columns = _LIGHT_COLUMNS + (", history" if with_history else "")
        rows = db.execute(f"SELECT {columns} FROM runs WHERE sweep_id = ? ORDER BY seq", (sweep_id,))
        return [_run_from_row(row) for row in rows]

    def _run(self, db: sqlite3.Connection, run_id: str, with_history: bool = False) -> Run:
        columns = _LIGHT_COLUMNS + (", history" if with_history else "")
        row = db.execute(f"SELECT {columns} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise SweepError(f"unknown run id {run_id!r} in {self.path}")
        return _run_from_row(row)

    def _new_run_id(self, db: sqlite3.Connection) -> str:
        while True:
            run_id = _random_id()
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                return run_id

    def _finish_if_idle(self, db: sqlite3.Connection, sweep_id: str, max_attempts: int) -> None:
        busy = db.execute(
            f"SELECT COUNT(*) FROM runs WHERE sweep_id = ? AND (state IN {ACTIVE_STATES} OR "
            f"(state IN {RESUMABLE_STATES} AND failures < ?))", (sweep_id, max_attempts)).fetchone()[0]
        if not busy:
            db.execute("UPDATE sweeps SET state = 'finished', updated = ? WHERE id = ? AND state = 'running'",
                       (time.time(), sweep_id))

    def _converted_runs(self, db: sqlite3.Connection, sweep: Sweep, max_attempts: int) -> list[Any]:
        """The sweep's runs as the engine's `SweepRun`s, from the few columns it reads (grid: the configs; bayes
        also the metric values). A conversion is kept until its row's columns change (a config never does):
        decoding and converting every run on every claim made the store, not the engine, most of a grid claim's
        cost at 5 000 runs (benchmarks/scale.py)."""
        with_metrics = sweep.method == "bayes"
        rows = db.execute("SELECT id, config, state, metric_values, failures FROM runs WHERE sweep_id = ? "
                          "ORDER BY seq", (sweep.id,))
        converted = []
        for run_id, config, state, metric_values, failures in rows:
            key = (config, state, metric_values if with_metrics else None, failures, sweep.metric_name, max_attempts)
            kept = self._converted.get(run_id)
            if kept is None or kept[0] != key:
                run = engine.EngineRun(run_id, json.loads(config), state,
                                       json.loads(metric_values) if with_metrics else [], failures)
                kept = self._converted[run_id] = (key, engine.sweep_run(run, sweep.metric_name, max_attempts))
            converted.append(kept[1])
        return converted

    def _metric_of_run(self, run_id: str) -> tuple[str | None, str]:
        row = self._db.execute("SELECT sweep_id FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise SweepError(f"unknown run id {run_id!r} in {self.path}")
        sweep_id = row["sweep_id"]
        if sweep_id not in self._metric_cache:
            sweep = self.get_sweep(sweep_id)
            self._metric_cache[sweep_id] = (sweep.metric_name, sweep.goal)
        return self._metric_cache[sweep_id]


@dataclasses.dataclass(frozen=True)
class AttemptResult:
    """What recording an attempt did: its id, whether the run's state was recorded (`finish_attempt`: False
    when it was taken over), the places it quarantined and the runs it gave back."""

    attempt_id: int | None
    finished: bool = True
    quarantined: list[quarantine.Quarantine] = dataclasses.field(default_factory=list)
    given_back: list[str] = dataclasses.field(default_factory=list)
    at_quarantined_place: bool = False  # a failure at start at a place quarantined now (or before)


def _check_final_state(state: str) -> None:
    if state not in RUN_STATES or state in ACTIVE_STATES:
        raise SweepError(f"finish_run: state must be one of "
                         f"{', '.join(s for s in RUN_STATES if s not in ACTIVE_STATES)}, got {state!r}")


def _attempt_from_row(row: sqlite3.Row) -> Attempt:
    return from_row(row, json.loads(row["segments"]))


def _column(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _sweep_from_row(row: sqlite3.Row) -> Sweep:
    return Sweep(id=row["id"], name=row["name"], spec=json.loads(row["spec"]), state=row["state"],
                 created=row["created"], updated=row["updated"], workdir=row["workdir"])


def _run_from_row(row: sqlite3.Row) -> Run:
    keys = row.keys()
    return Run(
        id=row["id"], sweep_id=row["sweep_id"], seq=row["seq"], config=json.loads(row["config"]),
        state=row["state"], agent=row["agent"], host=row["host"], gpu=row["gpu"], pid=row["pid"],
        job_id=row["job_id"], attempts=row["attempts"], created=row["created"], started=row["started"],
        ended=row["ended"], heartbeat=row["heartbeat"], metric_values=json.loads(row["metric_values"]),
        best_metric=row["best_metric"], summary=json.loads(row["summary"]), exit_code=row["exit_code"],
        stop_requested=bool(row["stop_requested"]),
        search_info=json.loads(row["search_info"]) if row["search_info"] else None,
        history=json.loads(row["history"]) if "history" in keys else None,
        failures=row["failures"],
    )


def _random_id(length: int = 8) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
