"""Sweeps on SLURM through submitit.

A local sweep (`local-xxxxxxxx`): this launcher is the sweep's controller and the only writer of its
SQLite store. It claims runs (state pending until their job starts), submits each as its own job (a
`jobs.TrainingJob`, one GPU) with at most `parallel` in flight, and records each job id in the store.
Compute nodes only write the run folder; every poll the launcher reads `slurm.json` (where the job
runs: host, SLURM's CUDA_VISIBLE_DEVICES -> the store's gpu column), `metrics.jsonl` (-> history,
hyperband) and, when the job is over, `summary.json` and the job's result (exit code) -> the run's
final state. Hyperband losers and runs of a stopped sweep are cancelled (`scancel`: SIGTERM, the run
saves) and recorded stopped. A job that ends without finishing its run (node lost, external scancel,
preemption without requeue) leaves the run preempted, and it is resubmitted as a new job that
resumes from the run folder. Time limits and submitit's `_interrupt()` never get that far: the job
checkpoints and requeues itself (same job id). A run is submitted only while no live process holds
its folder's lease (harness/run/lease.py); a job whose trainer exits with lease.EXIT_OWNED (75) found
the folder in use: its run goes back unspent (no attempt counted) and is submitted again later.

Every ended job is an attempt in the store (harness.launch.accounting: its node, wall time and GPUs from
sacct, the work it lost), recorded with the run's final state in one transaction that applies the
quarantine rule (harness.sweep.quarantine): a node where runs keep failing at start while they succeed
elsewhere gets no more jobs (`--exclude`) and the runs it failed are given back.

Restarting the launcher (after Ctrl-C, kill -9, or a lost login node) re-attaches: runs that are
pending/running with a job id are watched again, never resubmitted; a run claimed but killed before
its job id was saved is found by its job name (`cs-<run id>`) or, failing that, marked crashed and
resumed. Ctrl-C/SIGTERM only detaches: the jobs keep running.

A W&B sweep (`entity/project/id`): a job array of `wandb agent --forward-signals` tasks; W&B's server
is the controller (`wandb_array_plan` is what gets submitted).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable

from harness import processes, runfolder
from harness.errors import LaunchError
from harness.launch import accounting, jobs
from harness.launch.profiles import Profile
from harness.run import lease

AGENT = "slurm"  # the store's agent column for runs this launcher hands to SLURM
JOB_PREFIX = "cs-"  # job name cs-<run id>: a restarted launcher finds a job whose id it never saved
# sacct states of a job that is over (anything else: still queued, running or being requeued).
TERMINAL_JOB_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                       "BOOT_FAIL", "DEADLINE", "REVOKED")
# sacct states of a job ended from outside (someone's scancel, preemption, a lost node): never the run's own failure.
OUTSIDE_END_STATES = ("CANCELLED", "PREEMPTED", "NODE_FAIL")
# squeue states of a job SLURM still means to run. After a node failure the job's sacct row says
# NODE_FAIL for a few seconds while squeue already shows it PENDING again (requeued, same id).
QUEUED_JOB_STATES = ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                     "SUSPENDED", "RESIZING")
DEFAULT_POLL_S = 2.0
RESULT_GRACE_S = 10.0  # a job over by sacct whose result file is not visible yet (NFS): wait this long
# A job the scheduler (answering) no longer lists at all is treated as gone after this long; a scheduler that
# does not answer (slurmctld restart, maintenance) never makes a job gone. $HARNESS_SLURM_UNKNOWN_GRACE_S
# overrides it (tests, sites whose accounting lags).
UNKNOWN_JOB_GRACE_S = 120.0
PREEMPTED_GRACE_S = 60.0  # a job PREEMPTED for this long is not being requeued by SLURM
OUTAGE_BACKOFF_MAX_S = 30.0  # polls slow down to this while the scheduler does not answer
SUBMIT_TRIES = 4  # sbatch attempts per run (back-off 2, 4, 8 s) before the launcher stops submitting
CANCEL_CONFIRM_S = 120.0  # how long to wait for SLURM to confirm a cancelled job is gone before saying so
# SLURM's default MaxArraySize (array indices 0..1000): what a cluster whose `scontrol show config` does not
# answer is taken to allow.
DEFAULT_MAX_ARRAY_SIZE = 1001
ACCOUNTING_WAIT_S = 20.0  # at the end, how long to wait for slurmdbd to record the last jobs' cost


def unknown_job_grace_s() -> float:
    value = os.environ.get("HARNESS_SLURM_UNKNOWN_GRACE_S")
    return float(value) if value else UNKNOWN_JOB_GRACE_S


def make_executor(folder: Path, profile: Profile, parallel: int | None = None, python: str | None = None):
    import submitit

    arguments = profile.executor_arguments()
    if python:
        arguments["slurm_python"] = python
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **arguments)
    executor.update_parameters(**profile.submitit_parameters(parallel))
    return executor


def run_env(sweep_id: str, run_id: str, root: Path) -> dict[str, str]:
    """The environment a run's job adds: the run variables a local agent gives its child runs too
    (harness.sweep.spec.run_variables), unbuffered output, and `--sync`'s flush interval.

    CUDA_VISIBLE_DEVICES is left alone: SLURM sets it to the GPU it gave the job.
    """
    from harness.launch import sync
    from harness.sweep import spec as sweep_spec

    return {
        **sweep_spec.run_variables(sweep_id, run_id, root),
        "PYTHONUNBUFFERED": "1",
        # `--sync` (harness.launch.sync) has runs flush their offline .wandb file often: pass it on.
        **{key: os.environ[key] for key in sync.RUN_ENV if key in os.environ},
    }


def training_job(sweep: Any, run: Any, root: Path, python: str | None = None,
                 save_timeout_s: float = 240.0) -> jobs.TrainingJob:
    """The submitit callable for one run: the sweep's command expanded for the run's parameters."""
    from harness.sweep import spec as sweep_spec

    folder = runfolder.run_dir(root, sweep.id, run.id)
    folder.mkdir(parents=True, exist_ok=True)
    argv = sweep_spec.expand_command(sweep_spec.sweep_command(sweep.spec), run.config,
                                     program=sweep.spec.get("program"), run_dir=folder, interpreter=python)
    workdir = sweep.workdir if sweep.workdir and Path(sweep.workdir).is_dir() else os.getcwd()
    return jobs.TrainingJob(run.id, str(folder), argv, run_env(sweep.id, run.id, root), workdir,
                            save_timeout_s=save_timeout_s, unset_env=list(sweep_spec.RUN_UNSET_VARIABLES))


# --- the controller of a local sweep -------------------------------------------------------------
@dataclasses.dataclass
class _InFlight:
    run_id: str
    job: Any  # submitit.SlurmJob
    folder: Path
    submitted: float
    history: Any = dataclasses.field(init=False)  # outcome.HistoryFollower of the run folder
    placement_seen: tuple[Any, ...] | None = None  # (job id, restart count) last recorded
    stop_reason: str | None = None
    over_since: float | None = None  # when sacct first said the job is over
    unknown_since: float | None = None
    preempted_since: float | None = None
    cancel_sent: float | None = None  # scancel sent before a resubmission; waiting for SLURM to confirm
    requeue_noted: str | None = None  # the sacct state last reported as requeued (said once)

    def __post_init__(self) -> None:
        from harness.sweep import outcome

        self.history = outcome.HistoryFollower(self.folder)


class SlurmController:
    """Runs a local sweep's runs as SLURM jobs; see the module docstring."""

    def __init__(self, store: Any, sweep_id: str, profile: Profile, parallel: int | None = None,
                 count: int | None = None, poll_s: float = DEFAULT_POLL_S, echo: Callable[[str], None] = print,
                 python: str | None = None, max_job_failures: int = 3) -> None:
        self.store = store
        self.sweep_id = sweep_id
        self.profile = profile
        self.parallel = parallel or profile.parallel
        self.count = count
        self.poll_s = poll_s
        self.echo = echo
        self.python = python or profile.python or sys.executable
        self.max_job_failures = max_job_failures
        self.root: Path = store.root
        self.folder = runfolder.slurm_dir(self.root, sweep_id)  # submitit's pickles, the jobs' stdout/stderr
        self.host = socket.gethostname()
        self.in_flight: dict[str, _InFlight] = {}
        self._held_back: dict[str, str] = {}  # run id -> lease token already reported as holding it
        self.claimed = 0
        self.job_failures = 0  # jobs in a row that ended without ever starting their run
        self.signals = processes.SignalFlag((signal.SIGINT, signal.SIGTERM))
        self._executor = None
        self.max_in_flight_seen = 0
        self.outage_since: float | None = None  # the scheduler has not answered since then
        self.submit_error: str | None = None  # sbatch kept failing: no more submissions
        self.unknown_grace_s = unknown_job_grace_s()
        # Each ended job's attempt (node, cost) and the sweep's quarantined nodes (kept out with --exclude).
        self.ledger = accounting.Ledger(store, sweep_id, profile, echo)

    # -- public ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Drive the sweep until it is over (0), detached by a signal (128+N) or jobs keep failing (1)."""
        self.signals.install()
        try:
            self.reattach()
            code = self._loop()
        finally:
            self.signals.restore()
        if self.stop_signal:
            ids = ", ".join(item.job.job_id for item in self.in_flight.values()) or "none"
            self.echo(f"[slurm] detached; {len(self.in_flight)} job(s) keep running ({ids}). Re-attach with the same "
                      f"command; stop them with `harness sweep stop {self.sweep_id}` and re-attach.")
            return 128 + self.stop_signal
        return code

    def reattach(self) -> None:
        """Watch again the jobs of runs this launcher (or an earlier one) submitted."""
        from harness.sweep.states import ACTIVE_STATES

        import submitit

        for run in self.store.runs(self.sweep_id, states=ACTIVE_STATES):
            if run.agent != AGENT:
                continue
            job_id = run.job_id or self._job_by_name(run.id)
            if job_id is None:
                # Claimed, but the launcher died before submitting: hand it out again (same id, config).
                self.store.finish_run(run.id, "crashed", agent=AGENT)
                self.echo(f"[slurm] run {run.id} was claimed but never submitted: it will be resubmitted")
                continue
            if not run.job_id:
                self.store.set_job_id(run.id, job_id)
            job = submitit.SlurmJob(folder=self.folder, job_id=job_id)
            self.in_flight[run.id] = _InFlight(run.id, job, self._run_folder(run.id), submitted=time.time())
            self.echo(f"[slurm] re-attached to job {job_id} (run {run.id}, {run.state})")

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> int:
        announced = False
        while True:
            self._poll()
            self.ledger.settle()  # the accounting of ended jobs, once slurmdbd has it (one sacct call)
            if self.stop_signal:
                return 0
            sweep = self.store.get_sweep(self.sweep_id)
            if sweep.state == "stopped":
                for item in self.in_flight.values():
                    self._cancel(item, "sweep stopped")
            if self.job_failures >= self.max_job_failures:
                self.echo(f"[slurm] {self.job_failures} jobs in a row ended without starting their run: "
                          f"not submitting more (job logs: {self.folder})")
                if not self.in_flight:
                    return 1
            elif self.submit_error is not None:
                if not self.in_flight:
                    self.echo(f"[slurm] stopped: {self.submit_error}")
                    return 1
            elif self.outage_since is not None:
                pass  # nothing is submitted while the scheduler does not answer
            else:
                self._hyperband(sweep)
                exhausted = self._fill(sweep)
                if not announced and self.in_flight:
                    announced = True
                    self._announce()
                if not self.in_flight and (exhausted or sweep.state != "running"):
                    self._goodbye(sweep)
                    return 0
            self._sleep(self._poll_interval())

    def _fill(self, sweep: Any) -> bool:
        """Submit runs up to `parallel` in flight; True when no more runs will come from here."""
        if sweep.state != "running":
            return True
        while len(self.in_flight) < self.parallel and self.submit_error is None:
            if self.count is not None and self.claimed >= self.count:
                return True
            if self.job_failures and any(item.placement_seen is None for item in self.in_flight.values()):
                return False  # a job just failed to start its run: submit more only once one is seen to start
            run = self.store.claim_run(self.sweep_id, agent=AGENT, host=self.host, gpu=None, state="pending")
            if run is None:
                return True
            holder = lease.live_holder(self._run_folder(run.id))
            if holder is not None:
                # Someone still trains in its folder (an old job this controller lost track of, a
                # process on another node): submitting now would make two writers. Wait for the lease.
                self.store.release_run(run.id, AGENT)
                if self._held_back.get(run.id) != holder.token:
                    self._held_back[run.id] = holder.token
                    self.echo(f"[slurm] run {run.id} not submitted: its folder is held by {holder.describe()}")
                return False
            self.claimed += 1
            self._submit(sweep, run)
        self.max_in_flight_seen = max(self.max_in_flight_seen, len(self.in_flight))
        return False

    def _submit(self, sweep: Any, run: Any) -> None:
        executor = self._get_executor()
        job_callable = training_job(sweep, run, self.root, python=self.python,
                                    save_timeout_s=self.profile.save_timeout_s())
        executor.update_parameters(name=f"{JOB_PREFIX}{run.id}", **self.ledger.submit_parameters())
        job = None
        for attempt in range(1, SUBMIT_TRIES + 1):
            try:
                job = executor.submit(job_callable)
                break
            except Exception as error:  # noqa: BLE001 - sbatch failed: transient (controller busy) or not
                message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                if attempt == SUBMIT_TRIES or self.stop_signal:
                    # The claim goes back unspent; jobs already in flight are still watched to their end.
                    self.store.release_run(run.id, agent=AGENT)
                    self.submit_error = (f"sbatch failed {attempt} time(s) for run {run.id} (profile "
                                         f"{self.profile.name!r}): {message}")
                    self.echo(f"[slurm] error: {self.submit_error}; not submitting more, "
                              f"watching the {len(self.in_flight)} job(s) in flight")
                    return
                delay = 2.0 ** attempt
                self.echo(f"[slurm] sbatch failed for run {run.id} (try {attempt} of {SUBMIT_TRIES}): {message}; "
                          f"retrying in {delay:.0f} s")
                self._sleep(delay)
        self.store.set_job_id(run.id, job.job_id)
        self.in_flight[run.id] = _InFlight(run.id, job, self._run_folder(run.id), submitted=time.time())
        params = " ".join(f"{key}={value}" for key, value in run.config.items())
        what = f"resumes (attempt {run.attempts})" if run.attempts > 1 else "new"
        excluded = self.ledger.excluded
        away = f" (not on quarantined {', '.join(excluded)})" if excluded else ""
        self.echo(f"[slurm] job {job.job_id}: run {run.id} ({what}) {params}{away}")

    def _poll(self) -> None:
        if not self.in_flight:
            self._check_scheduler()
            return
        answer = job_states([item.job.job_id for item in self.in_flight.values()])
        self._note_scheduler(answer is not None)
        states = answer or {}
        self._note_requeued(states)
        now = time.time()
        for item in list(self.in_flight.values()):
            self._sync(item)
            state = states.get(item.job.job_id)
            if answer is None and not _result_exists(item.job):
                # The scheduler is unknown, not the job: keep it, its run goes on (or waits) on its node.
                self.store.heartbeat(item.run_id, agent=AGENT)
                continue
            over = _result_exists(item.job) or (state is not None and state.split()[0] in TERMINAL_JOB_STATES)
            believed_gone = False
            if state is None and not _result_exists(item.job):
                item.unknown_since = item.unknown_since or now
                believed_gone = (now - item.unknown_since > self.unknown_grace_s
                                 and now - item.submitted > self.unknown_grace_s)
            else:
                item.unknown_since = None
            if state is not None and state.startswith("PREEMPTED"):
                # Requeued jobs leave PREEMPTED within seconds; one still there was cancelled for good
                # (PreemptMode=CANCEL): over, and its run is resubmitted.
                item.preempted_since = item.preempted_since or now
                believed_gone = believed_gone or now - item.preempted_since > PREEMPTED_GRACE_S
            else:
                item.preempted_since = None
            if believed_gone and not over:
                # Before its run is handed to a new job, make sure this one can never come back and write
                # the run folder too: cancel it and wait until SLURM confirms it is gone.
                over = self._cancelled_and_gone(item, now)
            if not over:
                reply = self.store.heartbeat(item.run_id, agent=AGENT)
                if reply == "stop" and item.stop_reason is None:
                    self._cancel(item, "stop requested")
                continue
            item.over_since = item.over_since or now
            if not _result_exists(item.job) and (state or "").startswith("COMPLETED") and \
                    now - item.over_since < RESULT_GRACE_S:
                continue  # a job that completed wrote its result: on a slow shared filesystem it may lag
            self._finish(item, state)

    def _note_requeued(self, states: dict[str, str]) -> None:
        """Jobs sacct calls over but squeue still queues were requeued by SLURM: not over (in place).

        Without this a job requeued after a node failure would be seen NODE_FAIL, its run resubmitted
        as a new job, and the run trained twice (the requeued job and the new one).
        """
        by_id = {item.job.job_id: item for item in self.in_flight.values()}
        suspects = [job_id for job_id, state in states.items() if job_id in by_id and state
                    and state.split()[0] in TERMINAL_JOB_STATES and not _result_exists(by_id[job_id].job)]
        queued_now = queue_states(suspects)
        if queued_now is None:  # squeue does not answer: whether they were requeued is unknown, so not over yet
            for job_id in suspects:
                states[job_id] = "UNKNOWN"
            return
        for job_id, queued in queued_now.items():
            if queued.split()[0] not in QUEUED_JOB_STATES:
                continue
            item = by_id[job_id]
            if item.requeue_noted != states[job_id]:
                item.requeue_noted = states[job_id]
                self.echo(f"[slurm] job {job_id}: {states[job_id]} but queued again ({queued}): SLURM requeued it "
                          f"(run {item.run_id} resumes from its folder)")
            states[job_id] = queued

    def _sync(self, item: _InFlight) -> bool:
        """Run folder -> store: placement (host, GPU) and metrics. True when new epochs arrived."""
        placement = jobs.read_placement(item.folder)
        if placement and str(placement.get("job_id")) == str(item.job.job_id):
            key = (placement.get("job_id"), placement.get("restart_count"))
            if key != item.placement_seen:
                item.placement_seen = key
                gpu = placement.get("cuda_visible_devices")
                self.store.mark_started(item.run_id, host=placement.get("host"), gpu=gpu)
                again = f", restart {placement.get('restart_count')}" if placement.get("restart_count") else ""
                self.echo(f"[slurm] job {item.job.job_id}: run {item.run_id} running on {placement.get('host')} "
                          f"GPU {gpu}{again}")
        return item.history.sync(self.store, item.run_id)

    def _hyperband(self, sweep: Any) -> None:
        if not sweep.spec.get("early_terminate") or not self.in_flight:
            return
        from harness.sweep import engine

        try:
            to_stop = engine.runs_to_stop(sweep.spec, self.store.runs(self.sweep_id))
        except ValueError as error:
            self.echo(f"[slurm] early_terminate ignored: {error}")
            return
        for run_id in to_stop:
            item = self.in_flight.get(run_id)
            if item is not None and item.stop_reason is None:
                self.store.request_stop(run_id)
                self._cancel(item, "hyperband")

    def _cancel(self, item: _InFlight, reason: str) -> None:
        if item.stop_reason is not None:
            return
        item.stop_reason = reason
        self.echo(f"[slurm] cancelling job {item.job.job_id} (run {item.run_id}): {reason}")
        item.job.cancel(check=False)  # scancel: SIGTERM to the run, which saves and exits

    def _finish(self, item: _InFlight, job_state: str | None) -> None:
        self._sync(item)
        summary = runfolder.read_summary(item.folder)
        exit_code, error = _job_exit(item.job)
        placement = jobs.read_placement(item.folder)
        started_here = bool(placement) and str(placement.get("job_id")) == str(item.job.job_id)
        here = placement if started_here else None
        outside = exit_code is None and (job_state or "").split(" ")[0] in OUTSIDE_END_STATES
        if exit_code == lease.EXIT_OWNED:
            # The job's trainer found the folder's lease held by another live process: not a crash,
            # no attempt spent; it is submitted again once the lease is free.
            self.store.release_run(item.run_id, AGENT)
            self.ledger.job_given_back(item.run_id, item.job.job_id, exit_code, here, item.submitted)
            del self.in_flight[item.run_id]
            self.echo(f"[slurm] job {item.job.job_id}: run {item.run_id} found its folder owned by another process "
                      f"(exit {exit_code}): given back, no attempt spent")
            return
        state, error = self._end_state(item, job_state, summary, exit_code, error, started_here, outside)
        # The run's state and its attempt (node, wall time, GPU-hours) in one transaction, which also applies
        # the quarantine rule: a node where runs keep failing at start gets no more jobs.
        result = self.ledger.job_ended(item.run_id, item.job.job_id, state, summary, exit_code,
                                       own_failure=not outside, placement=here, submitted=item.submitted)
        if result.quarantined or result.at_quarantined_place:
            self.job_failures = 0  # those failures were a quarantined node's, not a broken setup's
        del self.in_flight[item.run_id]
        best = self.store.get_run(item.run_id).best_metric
        metric = f", best {best:.4g}" if best is not None else ""
        detail = f": {error} (see {item.job.paths.stderr})" if error else ""
        self.echo(f"[slurm] job {item.job.job_id}: run {item.run_id} {state} "
                  f"(job {job_state or 'done'}, exit {exit_code}){metric}{detail}")
        self.ledger.report(result)

    def _end_state(self, item: _InFlight, job_state: str | None, summary: dict | None, exit_code: int | None,
                   error: str, started_here: bool, outside: bool) -> tuple[str, str]:
        """The run's final state after its job ended, and what to say about it."""
        from harness.sweep import outcome

        if exit_code is not None:
            self.job_failures = 0
            return outcome.final_state(exit_code, summary, stop_requested=item.stop_reason is not None), error
        if summary and summary.get("status") == "finished":
            return "finished", error
        if item.stop_reason is not None:
            return "stopped", error
        if outside:
            # Cancelled by someone else, preempted, node lost: not the run's failure nor a broken setup,
            # even when it came before the job started the run (found by the chaos test: such a run
            # used to be marked failed for good). A new job resumes it from its folder.
            return "preempted", error
        if not started_here:
            # The job never started the run: its setup, Python or node is broken, or its job step was
            # killed (found by the chaos test: kill -9 of a job step before its run began left the run
            # failed for good). Not the run's own bug: crashed, one attempt spent, submitted again; three
            # such jobs in a row stop the submitting (a broken setup fails every job).
            self.job_failures += 1
            return "crashed", error or f"job {item.job.job_id} ended ({job_state or 'unknown'}) before starting the run"
        return "preempted", error  # killed from outside mid-run: a new job resumes it from its folder

    def _cancelled_and_gone(self, item: _InFlight, now: float) -> bool:
        if item.cancel_sent is None:
            item.cancel_sent = now
            self.echo(f"[slurm] job {item.job.job_id} (run {item.run_id}) is not listed by SLURM any more: "
                      "cancelling it before its run is resubmitted")
            item.job.cancel(check=False)
            return False
        listed = job_listed(item.job.job_id)
        if listed is False:
            return True
        if now - item.cancel_sent > CANCEL_CONFIRM_S:
            self.echo(f"[slurm] job {item.job.job_id}: SLURM has not confirmed it is gone after "
                      f"{now - item.cancel_sent:.0f} s; its run stays with it (retrying scancel)")
            item.cancel_sent = now
            item.job.cancel(check=False)
        return False

    def _check_scheduler(self) -> None:
        """With no job in flight, only know whether the scheduler answers (so nothing is submitted into an
        outage)."""
        if self.outage_since is not None:
            self._note_scheduler(job_listed("1") is not None)

    def _note_scheduler(self, answered: bool) -> None:
        now = time.time()
        if answered:
            if self.outage_since is not None:
                self.echo(f"[slurm] the scheduler answers again after {now - self.outage_since:.0f} s; "
                          f"{len(self.in_flight)} job(s) kept")
                for item in self.in_flight.values():
                    item.unknown_since = None  # the outage does not count towards a job's grace
                self.outage_since = None
            return
        if self.outage_since is None:
            self.outage_since = now
            self.echo(f"[slurm] the scheduler does not answer (sacct and squeue failed): keeping the "
                      f"{len(self.in_flight)} job(s) in flight, submitting nothing, polling less often")

    def _poll_interval(self) -> float:
        if self.outage_since is None:
            return self.poll_s
        elapsed = time.time() - self.outage_since
        return min(OUTAGE_BACKOFF_MAX_S, max(self.poll_s, elapsed / 4))

    # -- helpers -----------------------------------------------------------------------------------
    def _get_executor(self):
        if self._executor is None:
            self._executor = make_executor(self.folder, self.profile, self.parallel, python=self.python)
        return self._executor

    def _run_folder(self, run_id: str) -> Path:
        return runfolder.run_dir(self.root, self.sweep_id, run_id)

    def _job_by_name(self, run_id: str) -> str | None:
        """The queued/running job named for the run, or None once squeue has answered that there is none.
        While squeue does not answer, wait (a run must not be resubmitted on the strength of an outage)."""
        delay = self.poll_s
        while True:
            try:
                listing = subprocess.run(["squeue", "-h", "-n", f"{JOB_PREFIX}{run_id}", "-o", "%A"],
                                         capture_output=True, text=True, timeout=60)
                if listing.returncode == 0:
                    ids = listing.stdout.split()
                    return ids[0] if ids else None
                problem = listing.stderr.strip() or f"exit {listing.returncode}"
            except (OSError, subprocess.TimeoutExpired) as error:
                problem = str(error)
            if self.stop_signal:
                raise LaunchError(f"squeue does not answer ({problem}): cannot re-attach run {run_id} safely")
            self.echo(f"[slurm] squeue does not answer ({problem}); re-attaching run {run_id} when it does "
                      f"(retry in {delay:.0f} s)")
            self._sleep(delay)
            delay = min(OUTAGE_BACKOFF_MAX_S, delay * 2)

    def _announce(self) -> None:
        self.echo(f"[slurm] watch: squeue -u $USER | sacct -X -o JobID,JobName%20,State,Elapsed,AllocTRES%40 | "
                  f"harness status {self.sweep_id} --root {self.root} --watch; job logs in {self.folder}")

    def _goodbye(self, sweep: Any) -> None:
        sweep = self.store.get_sweep(self.sweep_id)  # the last claim may have just finished it
        from harness.sweep import status

        counts = self.store.counts(self.sweep_id)
        summary = ", ".join(f"{count} {state}" for state, count in counts.items() if count)
        self.echo(f"[slurm] sweep {self.sweep_id} is {status.outcome(sweep, counts)}: {summary or 'no runs'}")
        self.ledger.settle(wait_s=ACCOUNTING_WAIT_S)
        for line in status.cost_lines(self.store, sweep):
            self.echo(f"[slurm] {line}")

    @property
    def stop_signal(self) -> int | None:
        """The first signal that asked the launcher to detach (None: none yet)."""
        return self.signals.first

    def _sleep(self, seconds: float) -> None:
        processes.sleep_unless(seconds, lambda: self.signals.count)


def job_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: sacct state} for these jobs (one sacct call); jobs sacct does not list yet are absent.

    Falls back to squeue when sacct fails (no accounting): then a job that left the queue is absent.
    None when neither answers (controller or accounting down): the jobs' states are unknown, not over.
    """
    if not job_ids:
        return {}
    command = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)]
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        listing = None
    states: dict[str, str] = {}
    if listing is not None and listing.returncode == 0:
        for line in listing.stdout.splitlines():
            job_id, _, state = line.partition("|")
            if job_id:
                states[job_id.strip()] = state.strip()
        return states
    return queue_states(job_ids)


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: squeue state} for those of these jobs still in the queue (one squeue call); None when
    squeue does not answer."""
    if not job_ids:
        return {}
    try:
        queue = subprocess.run(["squeue", "-h", "-o", "%A|%T", "-j", ",".join(job_ids)],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if queue.returncode != 0 and not _invalid_job_id(queue.stderr):
        return None
    states: dict[str, str] = {}
    for line in queue.stdout.splitlines():
        job_id, _, state = line.partition("|")
        if job_id.strip():
            states[job_id.strip()] = state.strip()
    return states


def job_listed(job_id: str) -> bool | None:
    """Whether slurmctld still lists the job (queued, running, completing); None when it does not answer."""
    try:
        queue = subprocess.run(["squeue", "-h", "-o", "%T", "-j", str(job_id)], capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if queue.returncode == 0:
        return bool(queue.stdout.strip())
    return False if _invalid_job_id(queue.stderr) else None


def _invalid_job_id(stderr: str) -> bool:
    # squeue -j ID exits 1 with this when the controller answers but no longer knows the job.
    return "Invalid job id" in stderr


def _result_exists(job: Any) -> bool:
    return job.paths.result_pickle.exists()


def _job_exit(job: Any) -> tuple[int | None, str]:
    """(the run's exit code from the job's result, or None without one; the job's own error, if it raised)."""
    if not _result_exists(job):
        return None, ""
    try:
        result = job.result()
        return (int(result["exit_code"]) if isinstance(result, dict) else int(result)), ""
    except Exception as failure:  # the job's own Python failed (not the run): keep its message
        return None, str(failure).strip().splitlines()[-1] if str(failure).strip() else type(failure).__name__


# --- W&B sweeps: a job array of agents -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WandbArrayPlan:
    """What `submit_wandb_array` submits: the executor parameters, and each task's command and env."""

    folder: Path
    executor_arguments: dict[str, Any]
    parameters: dict[str, Any]
    tasks: int
    argv: tuple[str, ...]
    env: dict[str, str]
    log_dir: Path
    save_timeout_s: float = 240.0  # how long a task waits for its agent's run to save after SLURM's warning
    # The arrays actually submitted (`tasks` split to fit the cluster's MaxArraySize), in order.
    arrays: tuple[ArrayPart, ...] = ()


class ArrayPart(typing.NamedTuple):
    """One job array of a split: its tasks are the agents first .. first + tasks - 1, at most `parallel` at once."""

    first: int
    tasks: int
    parallel: int


def split_array(tasks: int, max_array_size: int, parallel: int) -> tuple[ArrayPart, ...]:
    """Pure: `tasks` agents as job arrays of at most `max_array_size` tasks each (SLURM's rule: indices below
    MaxArraySize; submitit numbers each array from 0), `parallel` shared between them so that the total in
    flight stays `parallel` (each array runs at least one: more arrays than `parallel` exceed it)."""
    if max_array_size < 1:
        raise LaunchError(f"this cluster allows no job arrays (MaxArraySize={max_array_size}); a W&B sweep on "
                          "SLURM is a job array of agents")
    sizes = [min(max_array_size, tasks - first) for first in range(0, tasks, max_array_size)]
    # One each, the rest in proportion to each array's other tasks (largest remainders first): the agents start
    # at the same pace in every array, and the shares add up to `parallel` exactly.
    rest, spare = max(0, min(parallel, tasks) - len(sizes)), tasks - len(sizes)
    shares = [1 + (rest * (size - 1) // spare if spare else 0) for size in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda index: -(rest * (sizes[index] - 1) % max(spare, 1)))
    for index in by_remainder[:len(sizes) + rest - sum(shares)]:
        shares[index] += 1
    firsts = [sum(sizes[:position]) for position in range(len(sizes))]
    return tuple(ArrayPart(first, size, share) for first, size, share in zip(firsts, sizes, shares))


def max_array_size(profile: Profile) -> int:
    """The most tasks in one job array here: the profile's `max_array_size`, else the cluster's MaxArraySize
    (`scontrol show config`), else SLURM's default."""
    if profile.max_array_size:
        return profile.max_array_size
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    for line in shown.stdout.splitlines() if shown.returncode == 0 else ():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return DEFAULT_MAX_ARRAY_SIZE


def wandb_array_plan(sweep_path: str, profile: Profile, root: Path, tasks: int | None = None,
                     parallel: int | None = None, count: int | None = None, python: str | None = None,
                     max_array_size: int | None = None) -> WandbArrayPlan:
    """Pure: the job array for a W&B sweep (`entity/project/id`), `tasks` agents (default: parallel), split
    into arrays of at most `max_array_size` (default: the profile's, else SLURM's default; the launcher passes
    the cluster's)."""
    python = python or profile.python or sys.executable
    parallel = parallel or profile.parallel
    tasks = tasks or parallel
    if tasks < 1:
        raise LaunchError(f"a W&B sweep on SLURM needs at least one task, got {tasks}")
    arrays = split_array(tasks, max_array_size or profile.max_array_size or DEFAULT_MAX_ARRAY_SIZE, parallel)
    count_args = ("--count", str(count)) if count is not None else ()
    argv = (python, "-m", "wandb", "agent", "--forward-signals", *count_args, sweep_path)
    parameters = profile.submitit_parameters(parallel)
    parameters["name"] = f"{JOB_PREFIX}wandb-{runfolder.sweep_folder_name(sweep_path)}"
    # W&B's agent needs its server: no WANDB_MODE here (offline would break the sweep). SLURM sets
    # CUDA_VISIBLE_DEVICES; HARNESS_ROOT says where the runs' folders go.
    env = {"HARNESS_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    return WandbArrayPlan(folder=runfolder.slurm_dir(root, sweep_path), executor_arguments=profile.executor_arguments(),
                          parameters=parameters, tasks=tasks, argv=argv,
                          env=env, log_dir=runfolder.agents_dir(root, sweep_path),
                          save_timeout_s=profile.save_timeout_s(), arrays=arrays)


def submit_wandb_array(plan: WandbArrayPlan, echo: Callable[[str], None] = print) -> list[Any]:
    """Submit the plan's job arrays (`executor.map_array`, one per part of the split); returns the submitit jobs.

    Each task gets its agent's number (first .. first + tasks - 1 of its part): its log is wandb-agent-N.log."""
    import submitit

    executor = submitit.AutoExecutor(folder=plan.folder, cluster="slurm", **plan.executor_arguments)
    executor.update_parameters(**plan.parameters)
    task = jobs.WandbAgentTask(plan.argv, plan.env, workdir=os.getcwd(), log_dir=str(plan.log_dir),
                               save_timeout_s=plan.save_timeout_s)
    array: list[Any] = []
    for part in plan.arrays or (ArrayPart(0, plan.tasks, plan.parameters["slurm_array_parallelism"]),):
        executor.update_parameters(slurm_array_parallelism=part.parallel)
        array.extend(executor.map_array(task, list(range(part.first, part.first + part.tasks))))
    ids = ", ".join(job.job_id for job in array)
    split = f" in {len(plan.arrays)} arrays (MaxArraySize)" if len(plan.arrays) > 1 else ""
    echo(f"[slurm] W&B sweep: job array of {plan.tasks} `wandb agent` task(s){split}: {ids}")
    echo(f"[slurm] watch: squeue -u $USER; sacct -X -o JobID,State,Elapsed; agent logs in {plan.log_dir}")
    return array
