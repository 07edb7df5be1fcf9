"""The local sweep agent: claim a run, start it as a child process, watch it, record how it ended.

One agent runs one child at a time (one agent per GPU). The loop, until the sweep ends or `count` runs:
1. `Store.mark_stale` (runs whose agent stopped heartbeating, or whose agent on this host has exited,
   become crashed), then `Store.claim_run`
   (a crashed or preempted run first, with its id and config; else the engine's next proposal).
2. Start the sweep's `command` with W&B's macros expanded (`spec.expand_command`) in the directory
   the sweep was created from, with `spec.run_variables` (WANDB_RUN_ID, WANDB_RUN_GROUP = sweep id,
   HARNESS_SWEEP_ID, HARNESS_ROOT, WANDB_MODE offline unless set) and the agent's CUDA_VISIBLE_DEVICES;
   its output goes to `<run folder>/output.log`.
3. While it runs: heartbeat, copy `metrics.jsonl` into the store, ask hyperband whether to stop it,
   and stop it (SIGTERM, then SIGKILL after a grace period) when told to.
4. When it exits: finished / stopped / preempted / failed from its exit code and `summary.json`.

SIGTERM or SIGINT to the agent is forwarded to the child; the agent waits for it to checkpoint and
exit, marks the run preempted and exits with 128 + the signal number. A second signal kills the child.
On Linux the child also gets SIGTERM if the agent dies without warning (kill -9), so it checkpoints
instead of training on unwatched; the next agent then finds the run crashed and resumes it.

One process per run folder (harness/run/lease.py): before starting a child, the agent looks at the
folder's lease. A live holder on this host (the previous attempt, still checkpointing) is waited
for, heartbeating the claim all the while so no other agent takes it, and killed after the grace
period; a live holder on another host makes the agent give the run back unspent
(`Store.release_run`). A child that exits with lease.EXIT_OWNED (75: it lost the race for the
lease) is handled the same way: not a crash, no attempt spent.

Every child is one attempt record in the store (harness.sweep.attempts: where, how it ended, wall time,
GPUs, GPU-hours, work lost), written with the run's final state in one transaction that also applies the
quarantine rule (harness.sweep.quarantine): a GPU whose runs keep failing at start is retired for the
sweep. An agent whose GPU is retired claims nothing more and exits with quarantine.EXIT_RETIRED, which
its launcher does not restart.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from harness import processes, runfolder
from harness.run import lease as lease_module
from harness.sweep import engine, outcome, quarantine, spec as sweep_spec
from harness.sweep.attempts import RELEASED, Attempt, Segment, gpu_count, segment_costs
from harness.sweep.states import DEFAULT_MAX_ATTEMPTS
from harness.sweep.store import AttemptResult, Run, Store, Sweep

DEFAULT_HEARTBEAT_S = 10.0
DEFAULT_STALE_AFTER_S = 120.0
DEFAULT_POLL_S = 0.5
DEFAULT_KILL_GRACE_S = 120.0


def run_agent(
    sweep_id: str,
    root: str | os.PathLike[str] | None = None,
    count: int | None = None,
    gpu: str | None = None,
    *,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    poll_s: float = DEFAULT_POLL_S,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    quarantine_after: int = quarantine.DEFAULT_AFTER,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Run sweep runs until the sweep ends (or `count` runs); returns the agent's exit code.

    0 when the sweep ended (finished, stopped, grid exhausted, run_cap) or `count` runs were done;
    128 + N when signal N stopped it (its run, if any, was left preempted for another agent);
    quarantine.EXIT_RETIRED when its GPU is quarantined for the sweep (`quarantine_after`: 0 never).
    `gpu`: the CUDA_VISIBLE_DEVICES to give runs (default: the agent's own, inherited) and to record.
    """
    store = Store(root)
    store.get_sweep(sweep_id)  # an unknown id: SweepError naming the known ones
    host = socket.gethostname()
    agent = processes.agent_id(host, os.getpid())
    gpu = gpu if gpu is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    say = echo or (lambda line: print(f"[agent {agent}] {line}", file=sys.stderr, flush=True))
    signals = processes.SignalFlag().install()
    done = 0
    waiting_said: str | None = ""
    retired = False
    try:
        while not signals.count and (count is None or done < count):
            if quarantine_after and _retired(store, sweep_id, host, gpu, say):
                retired = True
                break
            crashed = store.mark_stale(sweep_id, stale_after_s, host=host)
            if crashed:
                say(f"their agent is gone (no heartbeat for {stale_after_s:g} s, or its process ended on this "
                    f"host): marked crashed {', '.join(crashed)}")
            run = store.claim_run(sweep_id, agent=agent, host=host, gpu=gpu, max_attempts=max_attempts)
            if run is None:
                waiting_said = _idle(store, sweep_id, max_attempts, done, waiting_said, say)
                if waiting_said is None:
                    break
                # Idle agents poll slowly (each poll is a claim), but often enough to catch a stale run soon.
                processes.sleep_unless(max(poll_s, min(2.0, heartbeat_s * 5, stale_after_s / 4)), lambda: signals.count)
                continue
            waiting_said = ""
            done += 1
            _run_one(store, store.get_sweep(sweep_id), run, agent, gpu, signals, say, heartbeat_s=heartbeat_s,
                     poll_s=poll_s, kill_grace_s=kill_grace_s, quarantine_after=quarantine_after)
    finally:
        signals.restore()
        store.close()
    if retired or signals.count:
        return quarantine.EXIT_RETIRED if retired else _stopped_by(signals, say)
    return 0


def _stopped_by(signals: processes.SignalFlag, say: Callable[[str], None]) -> int:
    say(f"stopped by signal {signals.last}")
    return 128 + int(signals.last or signal.SIGTERM)


def _idle(store: Store, sweep_id: str, max_attempts: int, done: int, said: str, say: Callable[[str], None]) -> str | None:
    """No run to claim: the reason to wait (said when it changes), or None to exit (said too)."""
    sweep = store.get_sweep(sweep_id)
    reason = _idle_reason(store, sweep, max_attempts)
    if reason is None:
        say(f"sweep {sweep_id} is {sweep.state}; {done} run(s) done here")
    elif reason != said:
        say(f"waiting: {reason}")
    return reason


def _idle_reason(store: Store, sweep: Sweep, max_attempts: int) -> str | None:
    """Why to wait instead of exiting when there is no run to claim (None: exit)."""
    if sweep.state == "paused":
        return f"sweep {sweep.id} is paused (`harness sweep resume {sweep.id}`)"
    if sweep.state != "running":
        return None
    active, resumable = store.unfinished(sweep.id, max_attempts)  # counted in SQL: idle agents poll often
    if active or resumable:
        # Those may still crash or be preempted; stay to resume them.
        return f"no new run to hand out; {active} run(s) still active elsewhere"
    return None


def _retired(store: Store, sweep_id: str, host: str, gpu: str | None, say: Callable[[str], None]) -> bool:
    """Whether this agent's GPU is quarantined for the sweep (then it says so and claims nothing)."""
    place = quarantine.agent_place(host, gpu)
    found = [item for item in store.quarantined(sweep_id) if item.place == place] if place else []
    if found:
        since = time.strftime("%H:%M:%S", time.localtime(found[0].since))
        say(f"GPU {gpu} is retired for sweep {sweep_id} since {since} ({found[0].describe()}): claiming no more "
            f"runs (`harness sweep unquarantine --sweep {sweep_id} '{place}'` gives it back)")
    return bool(found)


def _run_one(store: Store, sweep: Sweep, run: Run, agent: str, gpu: str | None, signals: processes.SignalFlag,
             say: Callable[[str], None], *, heartbeat_s: float, poll_s: float, kill_grace_s: float,
             quarantine_after: int = quarantine.DEFAULT_AFTER) -> str | None:
    """Start, watch and record one run; returns its final state (None if another agent or process owns it)."""
    folder = runfolder.run_dir(store.root, sweep.id, run.id)
    folder.mkdir(parents=True, exist_ok=True)
    if not _wait_for_previous_process(store, run, agent, folder, kill_grace_s, heartbeat_s, signals, say):
        return None
    argv = sweep_spec.expand_command(sweep_spec.sweep_command(sweep.spec), run.config,
                                     program=sweep.spec.get("program"), run_dir=folder)
    cwd = sweep.workdir if sweep.workdir and Path(sweep.workdir).is_dir() else os.getcwd()
    params = " ".join(f"{key}={value}" for key, value in run.config.items())
    say(f"run {run.id} (#{run.seq}, attempt {run.attempts}): {params} -> {folder / runfolder.OUTPUT_FILE}")
    started = time.time()
    with open(folder / runfolder.OUTPUT_FILE, "ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {run.attempts} by agent {agent}: "
                  f"{' '.join(argv)}\n".encode())
        log.flush()
        try:
            child = subprocess.Popen(argv, cwd=cwd, env=_child_env(sweep.id, run.id, store.root, gpu),
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=processes.die_with_parent)
        except OSError as error:
            log.write(f"cannot start the run: {error}\n".encode())
            store.finish_run(run.id, "failed", exit_code=127, agent=agent)
            say(f"run {run.id} failed to start: {error}")
            return "failed"
    store.mark_started(run.id, pid=child.pid)
    watch = _Watch(store, sweep, run, agent, child, signals, say, heartbeat_s=heartbeat_s,
                   kill_grace_s=kill_grace_s)
    exit_code = watch.wait(poll_s)
    watch.sync_metrics()
    return _record_end(store, sweep, run, agent, gpu, watch, exit_code, started, say, quarantine_after, kill_grace_s)


def _record_end(store: Store, sweep: Sweep, run: Run, agent: str, gpu: str | None, watch: "_Watch", exit_code: int,
                started: float, say: Callable[[str], None], quarantine_after: int, kill_grace_s: float) -> str | None:
    """The child exited: its attempt and the run's final state into the store; returns the state (None: not ours)."""
    summary = runfolder.read_summary(watch.folder)
    host = socket.gethostname()

    def attempt(state: str, own_failure: bool) -> Attempt:
        return _attempt(sweep.id, run, host, gpu, Segment(started, time.time(), host), state, exit_code,
                        own_failure, watch.folder)

    if watch.lost:
        store.add_attempt(attempt("lost", False), quarantine_after)
        say(f"run {run.id} was taken over by another agent; its child exited {exit_code}")
        return None
    if exit_code == lease_module.EXIT_OWNED:
        # The child found the folder's lease held by another live process and touched nothing.
        store.release_run(run.id, agent)
        store.add_attempt(attempt(RELEASED, False), quarantine_after)
        say(f"run {run.id}: its folder is another process's (exit {exit_code}): given back, no attempt spent")
        processes.sleep_unless(min(5.0, kill_grace_s), lambda: watch.signals.count)  # do not claim it straight back
        return None
    state = outcome.final_state(exit_code, summary, stop_requested=watch.stop_reason is not None,
                                preempt_requested=watch.forwarded)
    # A signal the agent forwarded (Ctrl-C of the launcher, SIGTERM) is not the run's failure.
    result = store.finish_attempt(run.id, state, attempt(state, not watch.forwarded), summary, exit_code=exit_code,
                                  agent=agent, own_failure=not watch.forwarded, quarantine_after=quarantine_after)
    best = store.get_run(run.id).best_metric
    metric = f", {sweep.metric_name} best {best:.4g}" if best is not None and sweep.metric_name else ""
    why = f" ({watch.stop_reason})" if watch.stop_reason and state == "stopped" else ""
    say(f"run {run.id} {state}{why} after {time.time() - started:.1f} s (exit {exit_code}){metric}")
    _say_quarantine(result, say)
    return state


def _attempt(sweep_id: str, run: Run, host: str, gpu: str | None, segment: Segment, state: str, exit_code: int | None,
             own_failure: bool, folder: Path) -> Attempt:
    """One child process of a run as an attempt record: its GPUs are the ids the agent gave it (none: CPU)."""
    wall, lost, new_epochs = segment_costs([segment], runfolder.epoch_times(folder), finished=state == "finished")
    return Attempt(sweep_id, run.id, run.attempts, "agent", host, gpu or None, None, state, exit_code, own_failure,
                   new_epochs, float(gpu_count(gpu)), (segment,), wall, lost)


def _say_quarantine(result: AttemptResult, say: Callable[[str], None]) -> None:
    for found in result.quarantined:
        say(f"quarantined {found.describe()}, while runs succeed elsewhere: its agents claim no more runs")
    if result.given_back:
        say(f"given back (failed at start only at quarantined places; resumed elsewhere): {', '.join(result.given_back)}")


class _Watch:
    """Heartbeats, metrics and stop requests for one running child."""

    def __init__(self, store: Store, sweep: Sweep, run: Run, agent: str, child: subprocess.Popen,
                 signals: processes.SignalFlag, say: Callable[[str], None], *, heartbeat_s: float,
                 kill_grace_s: float) -> None:
        self.store, self.sweep, self.run, self.agent, self.child = store, sweep, run, agent, child
        self.signals, self.say = signals, say
        self.heartbeat_s, self.kill_grace_s = heartbeat_s, kill_grace_s
        self.folder = runfolder.run_dir(store.root, sweep.id, run.id)
        self.stop_reason: str | None = None
        self.lost = False
        self.forwarded = False
        self._terminated_at: float | None = None
        self._killed = False
        self._signals_seen = 0
        self._history = outcome.HistoryFollower(self.folder)
        self._last_beat = time.monotonic()

    def wait(self, poll_s: float) -> int:
        while True:
            try:
                return self.child.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                pass
            self._on_signals()
            new_epochs = self.sync_metrics()
            if new_epochs and self.stop_reason is None and not self.forwarded:
                self._hyperband()
            if time.monotonic() - self._last_beat >= self.heartbeat_s:
                self._beat()
            if self._terminated_at is not None and not self._killed and \
                    time.monotonic() - self._terminated_at > self.kill_grace_s:
                self.say(f"run {self.run.id} did not exit {self.kill_grace_s:g} s after SIGTERM: SIGKILL")
                self._kill()

    def sync_metrics(self) -> bool:
        """Copy metrics.jsonl into the store when it changed; True when it has new epochs."""
        return self._history.sync(self.store, self.run.id)

    def _on_signals(self) -> None:
        if self.signals.count == self._signals_seen:
            return
        self._signals_seen = self.signals.count
        if not self.forwarded:
            self.forwarded = True
            self.say(f"signal {self.signals.last}: asking run {self.run.id} to checkpoint and exit")
            self._terminate()
        else:
            self.say(f"second signal: killing run {self.run.id}")
            self._kill()

    def _hyperband(self) -> None:
        if not self.sweep.spec.get("early_terminate"):
            return  # nothing to ask: spared reading every run of the sweep at each new epoch
        try:
            to_stop = engine.runs_to_stop(self.sweep.spec, self.store.runs(self.sweep.id))
        except ValueError as error:  # a malformed early_terminate section: report once, carry on
            self.say(f"early_terminate ignored: {error}")
            spec = {key: value for key, value in self.sweep.spec.items() if key != "early_terminate"}
            self.sweep = dataclasses.replace(self.sweep, spec=spec)
            return
        if self.run.id in to_stop:
            self.stop_reason = "hyperband"
            self.store.request_stop(self.run.id)
            self.say(f"hyperband: stopping run {self.run.id} ({self.sweep.metric_name} lags the other runs)")
            self._terminate()

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        reply = self.store.heartbeat(self.run.id, agent=self.agent)
        if reply == "lost" and not self.lost:
            self.lost = True
            self.say(f"run {self.run.id} is no longer this agent's (heartbeat too late?): stopping its child")
            self._terminate()
        elif reply == "stop" and self.stop_reason is None and not self.forwarded:
            self.stop_reason = "stop requested"
            self.say(f"stop requested for run {self.run.id}")
            self._terminate()

    def _terminate(self) -> None:
        if self._terminated_at is None:
            self._terminated_at = time.monotonic()
            processes.send_signal(self.child, signal.SIGTERM)

    def _kill(self) -> None:
        self._killed = True
        processes.send_signal(self.child, signal.SIGKILL)


def _child_env(sweep_id: str, run_id: str, root: Path, gpu: str | None) -> dict[str, str]:
    """The run's environment: the agent's, with the run's variables (and its GPU when the agent has one)."""
    extra = sweep_spec.run_variables(sweep_id, run_id, root)
    if gpu is not None:
        extra["CUDA_VISIBLE_DEVICES"] = gpu
    env = processes.child_environment(extra)
    for name in sweep_spec.RUN_UNSET_VARIABLES:
        env.pop(name, None)
    return env


def _wait_for_previous_process(store: Store, run: Run, agent: str, folder: Path, grace_s: float, heartbeat_s: float,
                               signals: processes.SignalFlag, say: Callable[[str], None]) -> bool:
    """Before (re)starting a run, make sure no other process trains in its folder; False: do not start.

    The folder's lease names its holder. On this host a live holder (the previous attempt, still
    checkpointing after its agent died) is waited for, then killed if it outlives `grace_s`; its pid
    and start time are checked, so a reused pid is never touched. The claim is heartbeated all the
    while (else other agents would mark it crashed and claim it again). A live holder on another host
    cannot be waited for from here: the run is given back unspent. Runs without a lease (an older
    attempt, or a program that is not harness.train) fall back to the recorded pid and its environment.
    """
    holder = lease_module.live_holder(folder)
    if holder is None:
        if run.attempts >= 2 and run.pid and _is_run_process(run.pid, run.id):
            return _wait_for(store, run, agent, run.pid, lambda: _is_run_process(run.pid, run.id),
                             grace_s, heartbeat_s, signals, say)
        return True
    if lease_module.holder_process_alive(holder) is None:
        store.release_run(run.id, agent)
        say(f"run {run.id}: its folder is held by {holder.describe()}: given back, no attempt spent")
        processes.sleep_unless(min(5.0, grace_s), lambda: signals.count)
        return False
    return _wait_for(store, run, agent, holder.pid, lambda: bool(lease_module.holder_process_alive(holder)),
                     grace_s, heartbeat_s, signals, say)


def _wait_for(store: Store, run: Run, agent: str, pid: int, alive: Callable[[], bool], grace_s: float,
              heartbeat_s: float, signals: processes.SignalFlag, say: Callable[[str], None]) -> bool:
    """Wait for process `pid` to exit, heartbeating the claim; SIGKILL it after `grace_s` (and again every
    30 s after). False: do not start the run (a signal came: the run is given back; or it was lost)."""
    say(f"run {run.id}: waiting for its previous process {pid} to exit")
    last_beat = time.monotonic()
    ended_by: list[str] = []  # "signal" or "lost" when the wait ends with the process still alive

    def over() -> bool:
        nonlocal last_beat
        if not alive():
            return True
        if signals.count:
            ended_by.append("signal")
        elif time.monotonic() - last_beat >= heartbeat_s:
            last_beat = time.monotonic()
            if store.heartbeat(run.id, agent=agent) == "lost":
                ended_by.append("lost")
        return bool(ended_by)

    wait_s = grace_s
    while not processes.wait_until(over, wait_s):
        say(f"run {run.id}: previous process {pid} still alive after {grace_s:g} s: SIGKILL")
        processes.send_signal(pid, signal.SIGKILL)
        wait_s = 30.0  # the kernel reaps it within moments
    if ended_by == ["signal"]:
        store.release_run(run.id, agent)
        return False
    if ended_by == ["lost"]:
        say(f"run {run.id}: no longer this agent's while waiting: not started")
        return False
    # Heartbeat once more: the claim must still be this agent's before a child is started.
    return store.heartbeat(run.id, agent=agent) != "lost"


def _is_run_process(pid: int, run_id: str) -> bool:
    """Whether `pid` is a live process (not a zombie) of run `run_id`, by the WANDB_RUN_ID it started with."""
    environment = processes.process_environment(pid)
    return environment is not None and processes.pid_alive(pid) and environment.get("WANDB_RUN_ID") == run_id
