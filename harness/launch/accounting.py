"""What a local sweep's SLURM jobs cost and where they ran, and the nodes its controller keeps away from.

`Ledger` is the SLURM controller's book of attempts (harness.sweep.attempts): when a job ends its attempt
goes into the store with the run's final state (`Store.finish_attempt`, which also applies the quarantine
rule of harness.sweep.quarantine). Its node, wall time and GPUs come from SLURM's accounting (`sacct -X -D`:
one row per start of the job, so a job requeued after a node failure counts each start): NodeList,
Start/End, ElapsedRaw and AllocTRES `gres/gpu=N`. slurmdbd lags the controller by seconds, so an attempt
whose rows are not final yet is recorded from the run folder's `slurm.json` and the launcher's clock
(`accounting: pending`) and replaced once sacct has it (a restarted launcher picks those up too); after
`GIVE_UP_S` the estimate stays (`accounting: launcher`). Quarantined nodes go into every later job's
`--exclude`, with the profile's own exclude.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from harness import processes, runfolder
from harness.launch.profiles import Profile
from harness.sweep.attempts import RELEASED, Attempt, Segment, gpu_count, segment_costs

SACCT_FIELDS = ("JobID", "JobName", "State", "NodeList", "Start", "End", "ElapsedRaw", "AllocTRES")
LAUNCHER = "slurm"  # the attempts' launcher column
GIVE_UP_S = 300.0  # accounting still missing this long after a job ended: keep the launcher's estimate
_UNSET = ("", "Unknown", "None", "None assigned")
_NOT_OVER = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUE_HOLD", "RESIZING", "SUSPENDED")
_GPUS = re.compile(r"gres/gpu(?::[^=,]+)?=(\d+)")


def parse_sacct(text: str) -> dict[str, list[dict[str, str]]]:
    """`sacct -X -D -n -P -o SACCT_FIELDS` output -> {job id: its rows, oldest first}."""
    jobs: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        values = line.split("|")
        if len(values) == len(SACCT_FIELDS) and values[0].strip():
            jobs.setdefault(values[0].strip(), []).append(dict(zip(SACCT_FIELDS, (value.strip() for value in values))))
    return jobs


def read_accounting(job_ids: Sequence[str]) -> dict[str, list[dict[str, str]]] | None:
    """sacct's rows of these jobs (one call); None when sacct does not answer (no accounting, an outage)."""
    if not job_ids:
        return {}
    command = ["sacct", "-X", "-D", "-n", "-P", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(job_ids)]
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sacct(listing.stdout) if listing.returncode == 0 else None


def settled(rows: Sequence[Mapping[str, str]]) -> bool:
    """Whether slurmdbd has every start of the job, each over (sacct may list a placeholder `allocation`)."""
    return bool(rows) and all(row["JobName"] != "allocation" and row["End"] not in _UNSET
                              and row["State"].split(" ")[0] not in _NOT_OVER for row in rows)


def _stamp(text: str) -> float | None:
    if text in _UNSET:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()  # sacct prints local time
    except ValueError:
        return None


def job_segments(rows: Sequence[Mapping[str, str]]) -> tuple[tuple[Segment, ...], str | None, int | None]:
    """(the job's starts as segments, the node it ended on, the GPUs it held: None when AllocTRES lacks gres/gpu)."""
    segments = []
    gpus: int | None = None
    for row in rows:
        start, end = _stamp(row["Start"]), _stamp(row["End"])
        elapsed = int(row["ElapsedRaw"]) if row["ElapsedRaw"].isdigit() else None
        if start is None or (end is None and elapsed is None):
            continue  # never started (cancelled while queued)
        segments.append(Segment(start, start + elapsed if elapsed is not None else end, row["NodeList"] or None))
        match = _GPUS.search(row["AllocTRES"])
        if match:
            gpus = max(gpus or 0, int(match.group(1)))
    host = next((row["NodeList"] for row in reversed(rows) if row["NodeList"] not in _UNSET), None)
    return tuple(segments), host, gpus


@dataclasses.dataclass
class Ledger:
    """The SLURM controller's attempts and quarantined nodes (see the module docstring)."""

    store: Any
    sweep_id: str
    profile: Profile
    echo: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.pending = {attempt.id: attempt for attempt in self.store.attempts(self.sweep_id, accounting="pending")}
        for found in self.store.quarantined(self.sweep_id):
            if found.gpu is None:
                self.echo(f"[slurm] node {found.place} is quarantined for this sweep (since "
                          f"{time.strftime('%H:%M:%S', time.localtime(found.since))}): no jobs go there")

    @property
    def excluded(self) -> list[str]:
        """The sweep's quarantined nodes (read each time: `harness sweep unquarantine` may lift one)."""
        return [found.place for found in self.store.quarantined(self.sweep_id) if found.gpu is None]

    def submit_parameters(self) -> dict[str, Any]:
        """submitit parameters for the next job: the profile's sbatch options, --exclude merged."""
        options = dict(self.profile.sbatch)
        exclude = self.profile.exclude(self.excluded)
        if exclude:
            options["exclude"] = exclude
        return {"slurm_additional_parameters": options}

    def job_ended(self, run_id: str, job_id: str, state: str, summary: Mapping[str, Any] | None, exit_code: int | None,
                  own_failure: bool, placement: Mapping[str, Any] | None, submitted: float) -> Any:
        """Record the run's final state with its attempt (`Store.finish_attempt`); returns its AttemptResult, for
        the caller to `report` once it has said how the job ended."""
        attempt = self._attempt(run_id, job_id, state, exit_code, own_failure, placement, submitted)
        result = self.store.finish_attempt(run_id, state, attempt, summary, exit_code=exit_code, agent=LAUNCHER,
                                           own_failure=own_failure, quarantine_after=self.profile.quarantine_after)
        self._keep(result, attempt)
        return result

    def job_given_back(self, run_id: str, job_id: str, exit_code: int, placement: Mapping[str, Any] | None,
                       submitted: float) -> None:
        """A job whose run found its folder owned (exit 75): its attempt, which spends nothing."""
        attempt = self._attempt(run_id, job_id, RELEASED, exit_code, False, placement, submitted)
        self._keep(self.store.add_attempt(attempt, self.profile.quarantine_after), attempt)

    def settle(self, wait_s: float = 0.0) -> None:
        """Replace the pending attempts whose accounting has arrived (waiting up to `wait_s` for all of them)."""
        processes.wait_until(self._settle_once, wait_s, tick_s=1.0)

    def _settle_once(self) -> bool:
        if not self.pending:
            return True
        rows = read_accounting(sorted({attempt.job_id for attempt in self.pending.values() if attempt.job_id}))
        for attempt_id, attempt in list(self.pending.items()):
            found = (rows or {}).get(attempt.job_id or "", [])
            if settled(found):
                updated = self._costed(attempt, found, "sacct")
            elif time.time() - attempt.ended > GIVE_UP_S:
                updated = dataclasses.replace(attempt, accounting="launcher")
            else:
                continue
            del self.pending[attempt_id]
            self.report(self.store.update_attempt(updated, self.profile.quarantine_after))
        return not self.pending

    def _attempt(self, run_id: str, job_id: str, outcome: str, exit_code: int | None, own_failure: bool,
                 placement: Mapping[str, Any] | None, submitted: float) -> Attempt:
        """The job's attempt: from sacct when it has the job, else from slurm.json and this clock (pending)."""
        placement = placement or {}
        gpu = placement.get("cuda_visible_devices")
        started = float(placement.get("started") or submitted)
        estimate = Attempt(self.sweep_id, run_id, self.store.get_run(run_id).attempts, LAUNCHER, placement.get("host"),
                           gpu, job_id, outcome, exit_code, own_failure, 0,
                           float(gpu_count(gpu) or self.profile.gpus_per_job), (Segment(started, time.time(),
                                                                                         placement.get("host")),),
                           0.0, 0.0, accounting="pending")
        rows = (read_accounting([job_id]) or {}).get(job_id, [])
        return self._costed(estimate, rows, "sacct") if settled(rows) else self._costed(estimate, [], "pending")

    def _costed(self, attempt: Attempt, rows: Sequence[Mapping[str, str]], accounting: str) -> Attempt:
        """The attempt with its segments (from sacct's rows when given) and its cost from the run folder."""
        segments, host, gpus = job_segments(rows) if rows else (attempt.segments, attempt.host, None)
        if not segments:  # the job never started: it cost nothing, it ended now
            segments = (Segment(attempt.ended, attempt.ended, host),)
        folder = runfolder.run_dir(self.store.root, self.sweep_id, attempt.run_id)
        wall, lost, new_epochs = segment_costs(segments, runfolder.epoch_times(folder), attempt.outcome == "finished")
        return dataclasses.replace(attempt, host=attempt.host or host, segments=segments, wall_s=wall, lost_s=lost,
                                   new_epochs=new_epochs, gpus=float(gpus) if gpus is not None else attempt.gpus,
                                   accounting=accounting)

    def _keep(self, result: Any, attempt: Attempt) -> None:
        """Remember an attempt whose accounting is pending (settled later)."""
        if attempt.accounting == "pending" and result.attempt_id is not None:
            self.pending[result.attempt_id] = dataclasses.replace(attempt, id=result.attempt_id)

    def report(self, result: Any) -> None:
        """Say what recording an attempt decided: nodes quarantined, runs given back."""
        for found in result.quarantined:
            self.echo(f"[slurm] node {found.place} quarantined for sweep {self.sweep_id}: {len(found.runs)} run(s) in "
                      f"a row failed at start there ({', '.join(found.runs)}) while runs succeed on other nodes; no "
                      f"more jobs go there (--exclude={self.profile.exclude(self.excluded)})")
        if result.given_back:
            self.echo(f"[slurm] given back (they failed at start only on quarantined nodes; resubmitted elsewhere, "
                      f"no failure counted): {', '.join(result.given_back)}")
