"""The chaos test: a 12-cell grid of real `python -m harness.train` runs (TensorFlow on CPU, tiny
generated data) under a seeded random schedule of kill -9s and SIGTERMs of training processes,
agents / SLURM jobs and the launcher itself (restarted with `--resume`), and in the SLURM variant an
outage of the scheduler (slurmctld and slurmdbd stopped, then started again).

Afterwards, from the store and the run folders: 12 finished runs, each grid cell exactly once,
every metrics.jsonl holds epochs 1..N exactly once at the optimizer steps of an uninterrupted run,
and no two processes ever held one run folder at once. That last one is proved from each folder's
lease journal (harness/run/lease.py: every acquisition and release, with pid and time) against
when each holder is known to be dead: its journalled release, or, for a holder that died without
one, the moment this test saw it gone (the test's own kill -9, or a /proc monitor that samples
every training process of this runs root). The work the kills cost (epochs started beyond 12 x N,
from Keras's "Epoch k/N" lines in each run's output.log) is counted and printed.

The schedule is fixed by CHAOS_SEED (default below) and printed, so a failure reproduces. Victims
are found by /proc, restricted to this test's runs root (cmdline or HARNESS_ROOT): nothing else on
the machine is touched.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from harness import io
from harness import processes as processes_module
from harness.run import lease
from harness.sweep.store import Store
from tests.conftest import tiny_overrides
from tests.launch import test_slurm_outages as slurm_outages
from tests.launch.conftest import create_sweep, launch, wait_until

SEED = int(os.environ.get("CHAOS_SEED", "12"))
EPOCHS = 3
LEARNING_RATES = [0.001, 0.002, 0.003]
SEEDS = [1, 2, 3, 4]
CELLS = len(LEARNING_RATES) * len(SEEDS)
EPOCH_LINE = re.compile(rf"^Epoch (\d+)/{EPOCHS}\s*$", re.MULTILINE)


# --- processes of this test's runs root ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    start: str  # /proc/PID/stat start time: a reused pid is another process
    kind: str  # launcher, agent, trainer, job


def _kind(pid: int, root: str) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    mentions_root = any(arg == root or arg.startswith(root + "/") for arg in argv)
    if "harness.launch" in argv and mentions_root:
        return "launcher"
    if argv[1:4] == ["-m", "harness", "agent"] and mentions_root:
        return "agent"
    if any("submitit.core._submit" in arg for arg in argv) and mentions_root:
        return "job"
    if "harness.train" in argv:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        if f"HARNESS_ROOT={root}".encode() in environ:
            return "trainer"
    return None


def processes(root: Path, kind: str | None = None) -> list[Proc]:
    """This runs root's live processes (of `kind`), by pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        what = _kind(pid, str(root))
        start = processes_module.process_start(pid) if what else None
        if what and start and (kind is None or what == kind):
            found.append(Proc(pid, start, what))
    return sorted(found, key=lambda proc: proc.pid)


class Monitor(threading.Thread):
    """Samples the live training processes of the runs root every `poll_s`: the first sample that
    lacks a process bounds the moment it died (from above)."""

    def __init__(self, root: Path, poll_s: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.poll_s = root, poll_s
        self.samples: list[tuple[float, frozenset[tuple[int, str]]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            live = frozenset((proc.pid, proc.start) for proc in processes(self.root, "trainer"))
            self.samples.append((time.time(), live))
            self.halt.wait(self.poll_s)

    def seen_dead_after(self, pid: int, start: str | None, since: float) -> float | None:
        for moment, live in self.samples:
            if moment > since and (pid, start) not in live:
                return moment
        return None


# --- the schedule ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Event:
    after_s: float  # after the previous event
    target: str  # trainer, agent, job, launcher, scancel
    signum: int

    def describe(self) -> str:
        what = (self.target if self.target in ("scancel", "outage")
                else f"{signal.Signals(self.signum).name} {self.target}")
        return f"+{self.after_s:4.1f} s  {what}"


def make_schedule(rng: random.Random, counts: dict[tuple[str, int], int], first_s: float,
                  gaps_s: tuple[float, float]) -> list[Event]:
    """Shuffled events; the last is a launcher kill -9, so the final launcher starts with `--resume`
    after every other kill (`--resume` judges the runs of dead holders crashed at once)."""
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    last = ("launcher", int(signal.SIGKILL))
    kinds.remove(last)
    rng.shuffle(kinds)
    kinds.append(last)
    return [Event(round(first_s if index == 0 else rng.uniform(*gaps_s), 1), target, signum)
            for index, (target, signum) in enumerate(kinds)]


@dataclasses.dataclass
class Chaos:
    root: Path
    sweep_id: str
    log: Path
    launcher_args: list[str]
    rng: random.Random
    kills: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # what was done, when
    launcher: subprocess.Popen | None = None

    def start_launcher(self, resume: bool) -> None:
        args = [*self.launcher_args, "--sweep", self.sweep_id] + (["--resume"] if resume else [])
        self.launcher = launch(args, self.root, self.log)

    def finished(self) -> bool:
        return self.launcher is not None and self.launcher.poll() is not None

    def victim(self, kind: str) -> Proc | None:
        candidates = processes(self.root, kind)
        return self.rng.choice(candidates) if candidates else None

    def signal_process(self, proc: Proc, signum: int) -> None:
        if processes_module.process_start(proc.pid) != proc.start:
            return  # gone meanwhile (never signal a reused pid)
        os.kill(proc.pid, signum)
        record = {"time": time.time(), "pid": proc.pid, "start": proc.start, "kind": proc.kind,
                  "signal": signal.Signals(signum).name}
        if signum == signal.SIGKILL:
            wait_until(lambda: processes_module.process_start(proc.pid) != proc.start, 10, f"pid {proc.pid} to die", poll_s=0.005)
            record["dead_by"] = time.time()
        self.kills.append(record)

    def apply(self, event: Event) -> None:
        if event.target == "launcher":
            assert self.launcher is not None
            proc = Proc(self.launcher.pid, processes_module.process_start(self.launcher.pid) or "", "launcher")
            self.signal_process(proc, event.signum)
            self.launcher.wait(timeout=180)  # SIGTERM: the agents' runs save first
            self.start_launcher(resume=True)
            return
        if event.target == "outage":  # slurmctld and slurmdbd down for longer than the launcher's grace
            outage_s = float(os.environ["HARNESS_SLURM_UNKNOWN_GRACE_S"]) * 1.5
            try:
                slurm_outages._stop_daemon("slurmctld")
                slurm_outages._stop_daemon("slurmdbd")
                self.kills.append({"time": time.time(), "kind": "scheduler", "signal": "outage"})
                time.sleep(outage_s)  # the outage's length is the event itself, not a wait for a state
            finally:
                slurm_outages._restore_cluster()
            return
        if event.target == "scancel":
            with Store(self.root) as store:
                jobs = sorted(run.job_id for run in store.runs(self.sweep_id, states=("running",)) if run.job_id)
            if not jobs:
                raise LookupError("no running job")
            job_id = self.rng.choice(jobs)
            cancelled = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=30)
            if cancelled.returncode != 0:  # it ended between the store's row and scancel: pick again
                raise LookupError(f"scancel {job_id}: {cancelled.stderr.strip()}")
            self.kills.append({"time": time.time(), "job_id": job_id, "kind": "job", "signal": "scancel"})
            return
        proc = self.victim(event.target)
        if proc is None:
            raise LookupError(f"no {event.target}")
        self.signal_process(proc, event.signum)

    def play(self, schedule: list[Event]) -> None:
        for number, event in enumerate(schedule, start=1):
            time.sleep(event.after_s)  # the schedule's own pace, not a wait for a state
            deadline = time.monotonic() + 90
            while True:
                assert not self.finished(), (f"the sweep ended before event {number}/{len(schedule)} "
                                             f"({event.describe()}): the schedule is longer than the sweep\n"
                                             + self.log.read_text()[-3000:])
                try:
                    self.apply(event)
                    break
                except LookupError as missing:
                    assert time.monotonic() < deadline, f"event {number} ({event.describe()}): {missing} for 90 s"
                    time.sleep(0.2)
            print(f"[chaos] event {number}: {event.describe()} done at {time.strftime('%H:%M:%S')}", flush=True)


# --- what must hold afterwards ----------------------------------------------------------------------
def holder_intervals(folder: Path, kills: list[dict[str, Any]], monitor: Monitor) -> list[tuple[float, float, int]]:
    """(start, end, pid) of every lease holder of `folder`; end: its release, else when it was seen dead."""
    rows = lease.read_journal(folder)
    released = {row["token"]: row["time"] for row in rows if row["event"] == "released"}
    intervals = []
    for row in rows:
        if row["event"] != "acquired":
            continue
        ends = [released.get(row["token"])]
        ends += [kill["dead_by"] for kill in kills if (kill.get("pid"), kill.get("start")) == (row["pid"], row["pid_start"])
                 and "dead_by" in kill and kill["dead_by"] > row["time"]]
        ends.append(monitor.seen_dead_after(row["pid"], row["pid_start"], row["time"]))
        known = [end for end in ends if end is not None]
        assert known, f"{folder}: holder pid {row['pid']} (since {row['time']:.3f}) neither released nor seen dead"
        intervals.append((row["time"], min(known), row["pid"]))
    return sorted(intervals)


def check_outcome(chaos: Chaos, monitor: Monitor, started: float) -> dict[str, Any]:
    root, sweep_id = chaos.root, chaos.sweep_id
    with Store(root) as store:
        runs = store.runs(sweep_id)
        sweep = store.get_sweep(sweep_id)
    cells = sorted((run.config["learning_rate"], run.config["seed"]) for run in runs)
    histories = {run.id: [row["epoch"] for row in io.read_jsonl(root / sweep_id / run.id / "metrics.jsonl")] for run in runs}
    # Counted before the checks below, so a failing round still prints what it found.
    duplicates = (len(cells) - len(set(cells))) + sum(len(epochs) - len(set(epochs)) for epochs in histories.values())
    print(f"[chaos] {len(runs)} runs, {duplicates} duplicate cell(s) or epoch row(s)", flush=True)
    assert [run.state for run in runs] == ["finished"] * CELLS, [(run.id, run.state) for run in runs]
    assert cells == sorted(itertools.product(LEARNING_RATES, SEEDS))  # each grid cell exactly once
    assert sweep.state == "finished"
    epochs_started = 0
    trainer_starts = 0
    for run in runs:
        folder = root / sweep_id / run.id
        rows = io.read_jsonl(folder / "metrics.jsonl")
        assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1)), (run.id, rows)
        assert [row["step"] for row in rows] == [2, 4, 6], (run.id, rows)  # no batch trained twice or lost
        intervals = holder_intervals(folder, chaos.kills, monitor)
        for (_, end, pid), (next_start, _, next_pid) in zip(intervals, intervals[1:]):
            assert next_start >= end, (f"run {run.id}: pid {next_pid} took the folder at {next_start:.3f} while "
                                       f"pid {pid} held it until {end:.3f}")
        assert lease.read(folder) is None  # released by the trainer that finished
        trainer_starts += len(intervals)
        epochs_started += len(EPOCH_LINE.findall((folder / "output.log").read_text()))
    kills = [kill for kill in chaos.kills if kill["signal"] in ("SIGKILL", "scancel")]
    figures = {
        "seed": SEED, "wall_s": round(time.time() - started, 1), "runs_finished": len(runs), "duplicates": duplicates,
        "kill9": sum(kill["signal"] == "SIGKILL" for kill in chaos.kills),
        "scancel": sum(kill["signal"] == "scancel" for kill in chaos.kills),
        "sigterm": sum(kill["signal"] == "SIGTERM" for kill in chaos.kills),
        "outages": sum(kill["signal"] == "outage" for kill in chaos.kills),
        "by_kind": {kind: sum(kill["kind"] == kind for kill in chaos.kills) for kind in ("trainer", "agent", "job", "launcher")},
        "trainer_starts": trainer_starts, "epochs_started": epochs_started,
        "epochs_lost": epochs_started - CELLS * EPOCHS,
    }
    figures["epochs_lost_per_kill"] = round(figures["epochs_lost"] / max(1, len(kills)), 2)
    print("[chaos] figures " + json.dumps(figures, sort_keys=True), flush=True)
    return figures


def _grid_sweep(root: Path, synth_dir: Path, prepared_cache: Path) -> str:
    # allow_cpu: on SLURM each job gets a fake GPU; without it the trainer exits 2 (no GPU here).
    fixed = tiny_overrides(synth_dir, prepared_cache, epochs=EPOCHS, steps_per_epoch=2, validation_steps=1,
                           allow_cpu=True)
    spec = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"learning_rate": {"values": LEARNING_RATES}, "seed": {"values": SEEDS},
                           **{key: {"value": value} for key, value in fixed.items()}},
            "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"]}
    return create_sweep(root, spec)


def _failure_report(chaos: Chaos) -> str:
    """What a failed round needs for its diagnosis: every launcher line about a run that did not
    finish, and the end of each such run's output.log (the temporary folder may be gone later)."""
    text = chaos.log.read_text()
    lines = [line for line in text.splitlines() if re.search(r"failed|crashed|abandoned|not submitted|giving up", line)]
    with Store(chaos.root) as store:
        unfinished = [run for run in store.runs(chaos.sweep_id) if run.state != "finished"]
    parts = ["\n".join(lines[-40:])]
    for run in unfinished:
        output = chaos.root / chaos.sweep_id / run.id / "output.log"
        tail = output.read_text()[-3000:] if output.exists() else "(no output.log)"
        parts.append(f"--- run {run.id} {run.state} (exit {run.exit_code}, attempts {run.attempts}):\n{tail}")
    parts.append("--- launch.log tail:\n" + text[-3000:])
    return "\n".join(parts)


def _run_chaos(tmp_path: Path, synth_dir: Path, prepared_cache: Path, launcher_args: list[str],
               counts: dict[tuple[str, int], int], gaps_s: tuple[float, float], first_s: float,
               before: Callable[[], None] = lambda: None) -> dict[str, Any]:
    root = tmp_path / "runs"
    sweep_id = _grid_sweep(root, synth_dir, prepared_cache)
    rng = random.Random(SEED)
    schedule = make_schedule(rng, counts, first_s, gaps_s)
    print(f"[chaos] seed {SEED} (CHAOS_SEED): {len(schedule)} events", flush=True)
    for number, event in enumerate(schedule, start=1):
        print(f"[chaos]   {number:2d}. {event.describe()}", flush=True)
    chaos = Chaos(root, sweep_id, tmp_path / "launch.log", launcher_args, rng)
    monitor = Monitor(root)
    monitor.start()
    started = time.time()
    try:
        before()
        chaos.start_launcher(resume=False)
        chaos.play(schedule)
        assert chaos.launcher.wait(timeout=600) == 0, _failure_report(chaos)
        wait_until(lambda: not processes(root), 60, "every process of the runs root to exit")
    finally:
        monitor.halt.set()
        monitor.join(timeout=10)
        if chaos.launcher is not None and chaos.launcher.poll() is None:
            chaos.launcher.kill()
        for proc in processes(root):  # never leave one behind (each is this test's own)
            os.kill(proc.pid, signal.SIGKILL)
    return check_outcome(chaos, monitor, started)


KILL, TERM = int(signal.SIGKILL), int(signal.SIGTERM)


@pytest.mark.slow
def test_chaos_on_this_machine_every_cell_finishes_once_with_exact_histories(tmp_path, synth_dir, prepared_cache):
    """2 CPU agents through `python -m harness.launch --gpus none --agents 2`; 16 kill -9s (8 training
    processes, 4 agents, 4 launchers) and 3 SIGTERMs (2 training processes, 1 launcher)."""
    counts = {("trainer", KILL): 8, ("agent", KILL): 4, ("launcher", KILL): 4, ("trainer", TERM): 2, ("launcher", TERM): 1}
    figures = _run_chaos(tmp_path, synth_dir, prepared_cache,
                         ["--gpus", "none", "--agents", "2", "--stagger", "0", "--max-restarts", "20"],
                         counts, gaps_s=(2.5, 5.5), first_s=10.0)
    assert figures["kill9"] >= 15 and figures["sigterm"] >= 3


@pytest.mark.slow
@pytest.mark.slurm
def test_chaos_on_slurm_every_cell_finishes_once_with_exact_histories(tmp_path, slurm_cluster, synth_dir,
                                                                     prepared_cache, monkeypatch):
    """`--slurm local --parallel 2`: scancels, kill -9s of job steps (submitit's job process) and of
    training processes, SIGTERMs of training processes, the launcher killed -9 and restarted, and one
    outage of slurmctld and slurmdbd together (15 s, longer than the launcher's 10 s grace)."""
    # A job that sacct and squeue no longer list is gone after this long (default 120 s).
    monkeypatch.setenv("HARNESS_SLURM_UNKNOWN_GRACE_S", "10")
    counts = {("scancel", 0): 3, ("job", KILL): 3, ("trainer", KILL): 3, ("launcher", KILL): 3, ("trainer", TERM): 1,
              ("outage", 0): 1}
    figures = _run_chaos(tmp_path, synth_dir, prepared_cache, ["--slurm", "local", "--parallel", "2"],
                         counts, gaps_s=(3.0, 6.0), first_s=12.0)
    assert figures["kill9"] + figures["scancel"] >= 10 and figures["outages"] == 1
