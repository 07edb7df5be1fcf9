"""Bad-place quarantine: a node (SLURM) or a GPU (a box) whose runs keep failing at start gets no more runs.

Pure: a rule over attempt records (harness.sweep.attempts). A place is a SLURM node (`node013`) or a
GPU of a box (`gpubox GPU 2`); a CPU agent has none (CPU slots are all alike). The rule:
- an attempt that failed at start (failed, crashed or preempted by its own doing, no new epoch) adds to
  its place's streak; a success there (the run finished or logged an epoch) ends the streak;
- a run that already failed at start somewhere else is the suspect, not the place: its later failures
  add to no streak (a broken run, config or setup fails everywhere);
- a place is quarantined once its streak holds `after` failures while runs succeed at some other place
  (without that, a failing sweep or a broken setup would be taken for a bad place, and a single-node
  cluster or a one-GPU box would lock itself out).
Runs are given back (`runs_to_give_back`: failed -> crashed, resumable; no failure counted beyond the
attempt rules that exist) when every failure at start they had was at a quarantined place.

The store applies the rule in the transaction that records an attempt (`Store.finish_attempt`), keeps
what it decided in its `quarantine` table (a restarted launcher keeps it), and the SLURM controller
adds the sweep's quarantined nodes to `--exclude`; an agent whose GPU is quarantined exits with
`EXIT_RETIRED` and its launcher does not restart it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from harness.sweep.attempts import START_FAILURE, SUCCESS, Attempt, gpu_count

DEFAULT_AFTER = 3  # failures at start in a row that quarantine a place (profile key `quarantine_after`)
EXIT_RETIRED = 69  # an agent whose GPU is quarantined for the sweep (EX_UNAVAILABLE): not restarted


@dataclasses.dataclass(frozen=True)
class Quarantine:
    """A place that gets no more runs of a sweep: since when, after which failures at start (runs, in order)."""

    sweep_id: str
    place: str
    host: str | None
    gpu: str | None  # None: the whole node (SLURM)
    since: float
    runs: tuple[str, ...]

    def describe(self) -> str:
        given = ", ".join(self.runs)
        return f"{self.place}: {len(self.runs)} run(s) in a row failed at start there ({given})"


def place_of(attempt: Attempt) -> str | None:
    """The node of a SLURM attempt, `HOST GPU G` of an agent's attempt with a GPU, None for a CPU agent."""
    if not attempt.host:
        return None
    if attempt.launcher == "slurm":
        return attempt.host
    return agent_place(attempt.host, attempt.gpu)


def agent_place(host: str | None, gpu: str | None) -> str | None:
    """The place of an agent on `host` giving its runs `gpu` (CUDA_VISIBLE_DEVICES); None without a GPU."""
    return f"{host} GPU {gpu}" if host and gpu_count(gpu) else None


@dataclasses.dataclass
class _Tally:
    """What the attempts, in the order they ended, say per place."""

    streaks: dict[str, list[Attempt]] = dataclasses.field(default_factory=dict)
    successes: dict[str, float] = dataclasses.field(default_factory=dict)  # place -> its first success
    failed_at: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # run -> places it failed at start

    def add(self, attempt: Attempt) -> None:
        place = place_of(attempt)
        if place is None:
            return
        if attempt.kind == SUCCESS:
            self.successes.setdefault(place, attempt.ended)
            self.streaks[place] = []
        elif attempt.kind == START_FAILURE:
            places = self.failed_at.setdefault(attempt.run_id, set())
            if not places - {place}:  # no failure at start elsewhere first: it may be the place's fault
                self.streaks.setdefault(place, []).append(attempt)
            places.add(place)


def tally(attempts: Iterable[Attempt]) -> _Tally:
    counted = _Tally()
    for attempt in sorted(attempts, key=lambda item: (item.ended, item.id or 0)):
        counted.add(attempt)
    return counted


def newly_quarantined(attempts: Sequence[Attempt], after: int, quarantined: Iterable[str] = ()) -> list[Quarantine]:
    """The places the rule quarantines now that are not in `quarantined` yet (none when `after` < 1)."""
    if after < 1:
        return []
    counted = tally(attempts)
    known = set(quarantined)
    found = []
    for place, streak in sorted(counted.streaks.items()):
        if place in known or len(streak) < after:
            continue
        elsewhere = [when for other, when in counted.successes.items() if other != place]
        if not elsewhere:
            continue
        since = max(streak[after - 1].ended, min(elsewhere))
        first = streak[0]
        found.append(Quarantine(first.sweep_id, place, first.host, first.gpu if first.launcher != "slurm" else None,
                                since, tuple(attempt.run_id for attempt in streak)))
    return found


def runs_to_give_back(attempts: Sequence[Attempt], quarantined: Iterable[str]) -> list[str]:
    """Runs whose last attempt failed at start and whose every failure at start was at a quarantined place
    (`attempts`: every attempt of the runs in question)."""
    places = set(quarantined)
    latest: dict[str, Attempt] = {}
    failed_at: dict[str, set[str]] = {}
    for attempt in sorted(attempts, key=lambda item: (item.ended, item.id or 0)):
        latest[attempt.run_id] = attempt
        if attempt.kind == START_FAILURE:
            failed_at.setdefault(attempt.run_id, set()).add(place_of(attempt) or "")
    return [run_id for run_id, attempt in latest.items()
            if attempt.kind == START_FAILURE and failed_at[run_id] <= places]
