"""How busy the agents' slots were: from the store's run start/end times.

A slot is one agent (the store's `agent` column). Each run occupies its slot from its claim
(`started`) to its end (`ended`), which includes the run's own start-up; the gaps between runs are
what the launcher and agents cost: claiming, the sweep engine's proposal, recording the result.
Two numbers:
- `utilisation`: busy slot-seconds / (slots x the whole window), the window being the launcher's
  start to its end when given (else the first claim to the last end): start-up and tail included;
- `steady_utilisation`: the same per slot over its own first claim to last end, averaged: the cost
  of the gaps between runs alone.
"""

from __future__ import annotations

from typing import Any, Iterable


def slot_utilisation(runs: Iterable[Any], window_start: float | None = None,
                     window_end: float | None = None) -> dict[str, Any]:
    """Utilisation of the slots that ran `runs` (store `Run`s with agent, started, ended)."""
    intervals: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        if run.agent and run.started is not None and run.ended is not None and run.ended > run.started:
            intervals.setdefault(run.agent, []).append((float(run.started), float(run.ended)))
    if not intervals:
        return {"slots": 0, "runs": 0, "busy_s": 0.0, "wall_s": 0.0, "utilisation": 0.0,
                "steady_utilisation": 0.0, "mean_gap_s": 0.0, "per_slot": {}}
    first = min(start for spans in intervals.values() for start, _ in spans)
    last = max(end for spans in intervals.values() for _, end in spans)
    start = window_start if window_start is not None else first
    end = window_end if window_end is not None else last
    per_slot = {}
    busy_total = 0.0
    gaps = []
    for agent, spans in intervals.items():
        busy = _union_length(spans)
        busy_total += busy
        own = max(end for _, end in spans) - min(start for start, _ in spans)
        per_slot[agent] = busy / own if own > 0 else 0.0
        if len(spans) > 1:
            gaps.append((own - busy) / (len(spans) - 1))
    wall = max(end - start, 1e-9)
    return {
        "slots": len(intervals),
        "runs": sum(len(spans) for spans in intervals.values()),
        "busy_s": busy_total,
        "wall_s": end - start,
        "utilisation": busy_total / (len(intervals) * wall),
        "steady_utilisation": sum(per_slot.values()) / len(per_slot),
        "mean_gap_s": sum(gaps) / len(gaps) if gaps else 0.0,  # idle time of a slot between two runs
        "per_slot": per_slot,
    }


def _union_length(spans: list[tuple[float, float]]) -> float:
    total = 0.0
    current_start, current_end = None, None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total
