"""`harness status`: a sweep's runs as a table, best first, with counts per state, what the sweep cost
(GPU-hours of its ended attempts, useful vs lost, the best metric against the GPU-hours spent) and its
quarantined places (nodes, GPUs).

The `device` column is what each run trained on (harness.run.summary.device_label of its summary's
`device` record: "cpu", "gpu:H100 80GB HBM3 bf16", ...). An ended run's summary is the store's copy
of its summary.json; only an active run's is read from its folder (at most one file per agent: the
store holds a run's summary once it has ended), so the table costs no file reads per ended run.
"""

from __future__ import annotations

import math
import time
from typing import Any

from harness import runfolder
from harness.run.summary import device_label
from harness.sweep import attempts as attempt_costs
from harness.sweep.spec import swept_keys
from harness.sweep.states import ACTIVE_STATES, RUN_STATES
from harness.sweep.store import Run, Store, Sweep
from harness.tables import format_table


def sorted_runs(sweep: Sweep, runs: list[Run]) -> list[Run]:
    """Best metric first (by the sweep's goal); runs without a metric value after, oldest first."""
    sign = -1.0 if sweep.goal == "maximize" else 1.0
    return sorted(runs, key=lambda run: (run.best_metric is None,
                                         sign * run.best_metric if run.best_metric is not None else 0.0, run.seq))


def best_run(store: Store, sweep_id: str) -> Run | None:
    """The finished run with the best metric (by the sweep's goal), or None while there is none."""
    sweep = store.get_sweep(sweep_id)
    finished = [run for run in store.runs(sweep_id, states=["finished"]) if run.best_metric is not None]
    ranked = sorted_runs(sweep, finished)
    return ranked[0] if ranked else None


UNSUCCESSFUL_STATES = ("failed", "crashed", "preempted")  # runs a sweep that is over did not finish


def outcome(sweep: Sweep, counts: dict[str, int]) -> str:
    """The sweep's state, never plain `finished` while some of its runs failed or were left unfinished."""
    left = {state: counts.get(state, 0) for state in UNSUCCESSFUL_STATES if counts.get(state, 0)}
    if sweep.state != "finished" or not left:
        return sweep.state
    return "finished with " + ", ".join(f"{count} {state}" for state, count in left.items())


def unsuccessful_runs(store: Store, sweep_id: str) -> int:
    """How many runs of a sweep that is over did not finish (0 while it is still running or paused)."""
    sweep = store.get_sweep(sweep_id)
    if sweep.state != "finished":
        return 0
    counts = store.counts(sweep_id)
    return sum(counts[state] for state in UNSUCCESSFUL_STATES)


def status_text(store: Store, sweep_id: str, now: float | None = None, limit: int | None = None) -> str:
    """The whole status report of one sweep: a header, the runs table and counts per state."""
    now = time.time() if now is None else now
    sweep = store.get_sweep(sweep_id)
    runs = sorted_runs(sweep, store.runs(sweep_id))
    counts = store.counts(sweep_id)
    metric = sweep.metric_name or "metric"
    keys = swept_keys(sweep.spec)
    header = [
        f"sweep {sweep.id} ({sweep.method}; {metric} {sweep.goal}) is {outcome(sweep, counts)}; "
        f"{len(runs)} run(s)" + (f" of {sweep.run_cap}" if sweep.run_cap else "")
        + f"; created {time.strftime('%Y-%m-%d %H:%M', time.localtime(sweep.created))} in {sweep.workdir}",
        "runs: " + ", ".join(f"{counts[state]} {state}" for state in RUN_STATES if counts[state]) if runs
        else "runs: none yet (start one with `harness agent " + sweep.id + "`)",
        *cost_lines(store, sweep),
        *quarantine_lines(store, sweep.id),
    ]
    shown = runs if limit is None else runs[:limit]
    columns = ["#", "run", "state", metric, "epoch", *keys, "gpu", "device", "host", "beat", "try"]
    rows = [[_cell(value) for value in _row(run, keys, now, run_device(store, run))] for run in shown]
    table = format_table(rows, header=columns) if rows else ""
    lines = header + ([""] + [table] if table else [])
    if limit is not None and len(runs) > limit:
        lines.append(f"... and {len(runs) - limit} more")
    return "\n".join(lines)


def cost_lines(store: Store, sweep: Sweep, improvements: int = 4) -> list[str]:
    """What the sweep's ended attempts cost, and its best metric against the GPU-hours spent (none: no lines)."""
    attempts = store.attempts(sweep.id)
    if not attempts:
        return []
    cost = attempt_costs.sweep_cost(attempts)
    cpu = f"; CPU attempts {_hours(cost.cpu_wall_hours)} wall-h (0 GPU-h)" if cost.cpu_wall_hours else ""
    pending = f"; {cost.pending} awaiting SLURM's accounting (launcher's times)" if cost.pending else ""
    lines = [f"cost: {_hours(cost.gpu_hours)} GPU-h in {cost.attempts} attempt(s): {_hours(cost.useful_gpu_hours)} "
             f"useful, {_hours(cost.lost_gpu_hours)} lost ({cost.interrupted} attempt(s) cut short){cpu}{pending}"]
    points = attempt_costs.best_by_cost(attempts, sweep.goal)
    if points:
        axis = attempt_costs.cost_axis(attempts)
        shown = ", ".join(f"{value:.4g} at {_hours(spent)}" for spent, value, _ in points[-improvements:])
        lines.append(f"best {sweep.metric_name or 'metric'} by {axis} spent: {shown} (run {points[-1][2]})")
    return lines


def quarantine_lines(store: Store, sweep_id: str) -> list[str]:
    """One line per quarantined node or retired GPU of the sweep."""
    return [f"quarantined: {found.describe()}; since {time.strftime('%H:%M:%S', time.localtime(found.since))}, "
            + ("no job goes there (--exclude)" if found.gpu is None else "its agents claim no runs")
            for found in store.quarantined(sweep_id)]


def _hours(value: float) -> str:
    return f"{value:.3g}" if value >= 0.001 or value == 0 else f"{value:.2e}"


def sweeps_text(store: Store) -> str:
    """One line per sweep in the store (for `harness status` without an id)."""
    sweeps = store.sweeps()
    if not sweeps:
        return f"no sweeps in {store.path}"
    rows = []
    for sweep in sweeps:
        counts = store.counts(sweep.id)
        rows.append([sweep.id, sweep.method, outcome(sweep, counts), str(sum(counts.values())),
                     ", ".join(f"{n} {state}" for state, n in counts.items() if n),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(sweep.created))])
    return format_table(rows, header=["sweep", "method", "state", "runs", "states", "created"])


def is_settled(store: Store, sweep_id: str) -> bool:
    """True when the sweep hands out no more runs and none is active (for `--watch` to end)."""
    sweep = store.get_sweep(sweep_id)
    counts = store.counts(sweep_id)
    return sweep.state in ("finished", "stopped") and not any(counts[state] for state in ACTIVE_STATES)


def run_device(store: Store, run: Run) -> str:
    """The run's device in short ("" before it recorded one): from the store's summary of an ended run,
    from the folder's summary.json while it is active (the store's copy is that of its previous attempt)."""
    summary = run.summary
    if run.state in ACTIVE_STATES:
        summary = runfolder.read_summary(runfolder.run_dir(store.root, run.sweep_id, run.id)) or {}
    return device_label(summary.get("device"))


def _row(run: Run, keys: list[str], now: float, device: str = "") -> list[Any]:
    epochs = run.summary.get("epochs") or run.config.get("epochs")
    epoch = f"{run.epochs_completed}/{epochs}" if epochs else str(run.epochs_completed)
    beat = _age(now - run.heartbeat) if run.heartbeat and run.state in ACTIVE_STATES else ""
    return [run.seq, run.id, run.state, run.best_metric, epoch, *(run.config.get(key, "") for key in keys),
            run.gpu or "", device, run.host or "", beat, run.attempts]


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
