"""Attempts: one record per claim of a run that started a process (an agent's child, a SLURM job), with
where it ran, how it ended and what it cost. Pure: the store keeps them (table `attempts`), the agent and
the SLURM controller build them, `harness status` and the sweep report sum them up.

An attempt is one or more segments: the agent's child process, or a SLURM job's starts (a job requeued
after a node failure or a time limit keeps its id and adds a segment, sacct -D lists each). Its cost:
- wall time: the segments' lengths (SLURM: sacct ElapsedRaw; a box: the child's start to its exit);
- GPU-hours: wall time x the GPUs it held (SLURM: AllocTRES gres/gpu; a box: the ids in the agent's
  CUDA_VISIBLE_DEVICES). A CPU attempt holds 0 GPUs: 0 GPU-hours, its wall time shown apart;
- lost: the time of each interrupted segment since its last completed epoch (metrics.jsonl `time`): the
  training a resume does again (an upper bound where the run saved mid-epoch; none for the segment that
  finished the run). Everything else is useful (start-up included: it is the price of a run).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

# How an attempt counts for its place (harness.sweep.quarantine): failed at start, a success, or neither.
START_FAILURE, SUCCESS, NEUTRAL = "start_failure", "success", "neutral"
FAILURE_STATES = ("failed", "crashed", "preempted")
RELEASED = "released"  # the claim was given back unspent (its folder was another live process's)
# sacct's times are whole seconds, cut down: an epoch row up to this much past a segment's End is in it.
ROW_SLACK_S = 1.0


@dataclasses.dataclass(frozen=True)
class Segment:
    """One start of an attempt: [start, end] in epoch seconds on `host`."""

    start: float
    end: float
    host: str | None = None

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One claim's process(es): where, how it ended (`outcome`: the run state it left, or `released`),
    and its cost. `new_epochs`: epochs its last segment logged (progress at the place it ended);
    `own_failure`: False when an outside cause ended it (a forwarded signal, scancel, a lost node);
    `accounting`: where the times come from (`agent`, `sacct`, or `pending` while SLURM's accounting lags)."""

    sweep_id: str
    run_id: str
    number: int
    launcher: str  # "agent" or "slurm"
    host: str | None
    gpu: str | None
    job_id: str | None
    outcome: str
    exit_code: int | None
    own_failure: bool
    new_epochs: int
    gpus: float
    segments: tuple[Segment, ...]
    wall_s: float
    lost_s: float
    accounting: str = "agent"
    best_metric: float | None = None  # the run's best metric value when the attempt ended
    id: int | None = None

    @property
    def started(self) -> float | None:
        return self.segments[0].start if self.segments else None

    @property
    def ended(self) -> float:
        return self.segments[-1].end if self.segments else 0.0

    @property
    def useful_s(self) -> float:
        return max(0.0, self.wall_s - self.lost_s)

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.wall_s / 3600.0

    @property
    def lost_gpu_hours(self) -> float:
        return self.gpus * self.lost_s / 3600.0

    @property
    def kind(self) -> str:
        """START_FAILURE, SUCCESS or NEUTRAL (see harness.sweep.quarantine)."""
        return attempt_kind(self.outcome, self.own_failure, self.new_epochs)


def attempt_kind(outcome: str, own_failure: bool, new_epochs: int) -> str:
    """A success: the run finished or logged an epoch there. A failure at start: it ended failed, crashed or
    preempted by its own doing (no outside cause) without a new epoch. Anything else (a stop, an outside
    cause, a claim given back) says nothing about the place."""
    if outcome == "finished" or new_epochs > 0:
        return SUCCESS
    if outcome in FAILURE_STATES and own_failure:
        return START_FAILURE
    return NEUTRAL


def gpu_count(devices: str | None) -> int:
    """GPUs named by a CUDA_VISIBLE_DEVICES value: `0,1` -> 2; unset, empty or `-1` -> 0 (a CPU run)."""
    if not devices:
        return 0
    return len([part for part in devices.split(",") if part.strip() and part.strip() != "-1"])


def segment_costs(segments: Sequence[Segment], row_times: Iterable[float], finished: bool) -> tuple[float, float, float]:
    """(wall seconds, lost seconds, epochs of the last segment) of an attempt.

    Each segment that did not finish the run loses the time since its last epoch row (all of it without
    one); the segment that finished the run loses nothing.
    """
    times = sorted(float(value) for value in row_times if _finite(value))
    wall = lost = 0.0
    last_epochs = 0
    for index, segment in enumerate(segments):
        inside = [value for value in times if segment.start <= value <= segment.end + ROW_SLACK_S]
        wall += segment.seconds
        last_epochs = len(inside)
        if finished and index == len(segments) - 1:
            continue
        since = segment.end - max(inside) if inside else segment.seconds
        lost += min(segment.seconds, max(0.0, since))
    return wall, lost, last_epochs


@dataclasses.dataclass(frozen=True)
class SweepCost:
    """What a sweep's ended attempts cost: GPU-hours (useful vs lost) and the wall-hours of CPU attempts."""

    attempts: int
    gpu_hours: float
    lost_gpu_hours: float
    interrupted: int  # attempts that lost work (stops, crashes, preemptions, failures)
    cpu_wall_hours: float
    pending: int  # SLURM attempts whose accounting has not arrived yet (their launcher times are used)

    @property
    def useful_gpu_hours(self) -> float:
        return max(0.0, self.gpu_hours - self.lost_gpu_hours)


def sweep_cost(attempts: Sequence[Attempt]) -> SweepCost:
    return SweepCost(
        attempts=len(attempts),
        gpu_hours=sum(attempt.gpu_hours for attempt in attempts),
        lost_gpu_hours=sum(attempt.lost_gpu_hours for attempt in attempts),
        interrupted=sum(1 for attempt in attempts if attempt.lost_s > 0),
        cpu_wall_hours=sum(attempt.wall_s for attempt in attempts if attempt.gpus == 0) / 3600.0,
        pending=sum(1 for attempt in attempts if attempt.accounting == "pending"),
    )


def best_by_cost(attempts: Sequence[Attempt], goal: str) -> list[tuple[float, float, str]]:
    """The best metric so far against what had been spent: (hours spent when it was reached, value, run id),
    one point per improvement, attempts in the order they ended. Hours are GPU-hours, or wall-hours for a
    sweep that used no GPU (`cost_axis` says which)."""
    use_gpu = cost_axis(attempts) == "GPU-h"
    spent = 0.0
    best: float | None = None
    points: list[tuple[float, float, str]] = []
    for attempt in sorted(attempts, key=lambda item: item.ended):
        spent += attempt.gpu_hours if use_gpu else attempt.wall_s / 3600.0
        value = attempt.best_metric
        if value is None or not _finite(value):
            continue
        if best is None or (value > best if goal == "maximize" else value < best):
            best = value
            points.append((spent, value, attempt.run_id))
    return points


def cost_axis(attempts: Sequence[Attempt]) -> str:
    """`GPU-h` when any attempt held a GPU, else `wall-h` (a CPU sweep)."""
    return "GPU-h" if any(attempt.gpus > 0 for attempt in attempts) else "wall-h"


def to_row(attempt: Attempt) -> dict[str, Any]:
    """The store's columns of an attempt (segments as plain lists)."""
    row = dataclasses.asdict(attempt)
    row.pop("id")
    row["segments"] = [[segment.start, segment.end, segment.host] for segment in attempt.segments]
    row["own_failure"] = int(attempt.own_failure)
    return row


def from_row(row: Mapping[str, Any], segments: Sequence[Sequence[Any]]) -> Attempt:
    values = {field.name: row[field.name] for field in dataclasses.fields(Attempt) if field.name != "segments"}
    values["own_failure"] = bool(values["own_failure"])
    return Attempt(**values, segments=tuple(Segment(float(start), float(end), host) for start, end, host in segments))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
