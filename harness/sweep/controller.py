"""The bridge to W&B's sweep engine (`sweeps`) and to the run folder, for agents and controllers.

Anything that hands out runs (the local agent, the SLURM launcher) uses these functions, so both
propose, stop and judge runs the same way:
- `propose(spec, runs)`: the next parameters from `sweeps.next_run`, given every run of the sweep;
- `runs_to_stop(spec, runs)`: hyperband (`sweeps.stop_runs`) over the runs' metric histories;
- `final_state(exit_code, summary, ...)`: a finished child's state from its exit code and summary.json;
- `run_dir`, `read_history`, `read_summary`: the run folder contract (docs/architecture.md).

How our run states reach the engine (its `RunState`): running and pending as they are (so random
and bayes account for runs in flight and grid never proposes a cell that exists); crashed and
preempted runs that will be resumed as pending (they are not results yet); crashed runs out of
attempts as crashed (imputed as the worst result, like failed); stopped runs with metric values as
finished (hyperband stopped them on real, lagging numbers), without any as killed.
"""

from __future__ import annotations

import math
import os
import signal
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from harness.io import read_json, read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    from harness.sweep.store import Run, Store

RESUMABLE_STATES = ("preempted", "crashed")


def run_dir(root: str | os.PathLike[str], sweep_id: str, run_id: str) -> Path:
    """`<root>/<sweep_id>/<run_id>/`, the run folder of the training contract."""
    return Path(root) / sweep_id / run_id


def load_engine() -> Any:
    """Import the `sweeps` engine and the search modules `next_run` imports on its first call."""
    from harness.sweep.spec import import_engine

    sweeps = import_engine()
    import sweeps.bayes_search  # noqa: F401 - next_run imports all three on every call
    import sweeps.grid_search  # noqa: F401
    import sweeps.random_search  # noqa: F401

    return sweeps


def engine_state(run: "Run", max_attempts: int) -> str:
    """The engine's RunState name for one of our runs (see the module docstring)."""
    if run.state in RESUMABLE_STATES:
        return "pending" if run.failures < max_attempts else ("crashed" if run.state == "crashed" else "killed")
    if run.state == "stopped":
        return "finished" if run.metric_values else "killed"
    return run.state  # pending, running, finished, failed


def engine_runs(runs: Sequence["Run"], metric_name: str | None, max_attempts: int) -> list[Any]:
    """Our runs as `sweeps.SweepRun`s, with only the sweep metric in their history (all the engine reads)."""
    from harness.sweep.spec import import_engine

    sweeps = import_engine()
    converted = []
    for run in runs:
        history = [{metric_name: value} for value in run.metric_values] if metric_name else []
        summary = {metric_name: run.metric_values[-1]} if metric_name and run.metric_values else {}
        converted.append(sweeps.SweepRun(
            name=run.id,
            state=engine_state(run, max_attempts),
            config={key: {"value": value} for key, value in run.config.items()},
            history=history,
            summary_metrics=summary,
        ))
    return converted


def propose(spec: Mapping[str, Any], runs: Sequence["Run"],
            max_attempts: int = 5) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(parameters, the engine's search info) of the next run, or None when a grid is exhausted.

    Parameters come back flat ({"learning_rate": 0.001}), in the order of the sweep file, as plain
    Python values (the engine may hand out NumPy scalars).
    """
    from harness.sweep.spec import import_engine

    sweeps = import_engine()
    metric_name = (spec.get("metric") or {}).get("name") if isinstance(spec.get("metric"), dict) else None
    with warnings.catch_warnings():
        # The GP's fit reports length scales at their bounds on every proposal; it is noise in agent logs.
        warnings.filterwarnings("ignore", message="The optimal value found for dimension")
        suggestion = sweeps.next_run(dict(spec), engine_runs(runs, metric_name, max_attempts))
    if suggestion is None:
        return None
    order = list((spec.get("parameters") or {}).keys())
    values = {key: plain(entry["value"]) for key, entry in suggestion.config.items()}
    params = {key: values[key] for key in order if key in values}
    params.update({key: value for key, value in values.items() if key not in params})
    info = plain(suggestion.search_info) if suggestion.search_info else None
    return params, info


def grid_size(spec: Mapping[str, Any]) -> int | None:
    """Number of cells of a grid sweep (None: not a grid, or a size this function cannot tell)."""
    if spec.get("method") != "grid" or not isinstance(spec.get("parameters"), dict):
        return None
    size = 1
    for definition in spec["parameters"].values():
        if not isinstance(definition, dict):
            return None
        if "value" in definition:
            continue
        if isinstance(definition.get("values"), list) and "probabilities" not in definition:
            size *= len(definition["values"])
        elif definition.get("distribution") == "int_uniform":
            size *= int(definition["max"]) - int(definition["min"]) + 1
        else:
            return None  # q_uniform and the like: let the engine decide
    return size


def runs_to_stop(spec: Mapping[str, Any], runs: Sequence["Run"], max_attempts: int = 5) -> set[str]:
    """Ids of running runs that hyperband (`early_terminate`) says to stop; empty without early_terminate."""
    if not spec.get("early_terminate"):
        return set()
    from harness.sweep.spec import import_engine

    sweeps = import_engine()
    metric_name = (spec.get("metric") or {}).get("name")
    return {run.name for run in sweeps.stop_runs(dict(spec), engine_runs(runs, metric_name, max_attempts))}


def final_state(exit_code: int, summary: Mapping[str, Any] | None, stop_requested: bool = False,
                preempt_requested: bool = False) -> str:
    """A finished child's run state.

    finished: exit 0 (and summary.json, if any, does not say preempted); stopped: we asked it to stop
    (hyperband, `sweep stop`); preempted: we forwarded a signal to it, or it exited 128+N / by signal N,
    or its summary says preempted; failed: anything else (exit 1, 2, ...).
    """
    status = (summary or {}).get("status")
    if exit_code == 0 and status != "preempted":
        return "finished"
    if stop_requested:
        return "stopped"
    if preempt_requested or status == "preempted" or _killed_by_signal(exit_code):
        return "preempted"
    return "failed"


def _killed_by_signal(exit_code: int) -> bool:
    if exit_code < 0:  # subprocess reports death by signal N as -N
        return True
    valid = {int(sig) for sig in signal.valid_signals()}
    return exit_code > 128 and (exit_code - 128) in valid


def read_history(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl`, one per epoch (a resumed run's repeated epoch: the last row wins)."""
    rows = read_jsonl(Path(folder) / "metrics.jsonl")
    by_epoch: dict[Any, dict[str, Any]] = {}
    unnumbered = []
    for row in rows:
        if "epoch" in row:
            by_epoch[row["epoch"]] = row
        else:
            unnumbered.append(row)
    ordered = [by_epoch[epoch] for epoch in sorted(by_epoch, key=_epoch_key)]
    return ordered + unnumbered


class HistoryFollower:
    """Copies a run folder's metrics.jsonl into the store whenever the file changes.

    Used by the agent (for its child) and by the SLURM controller (for its jobs): both learn a run's
    progress only from its folder, never from the run itself.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / "metrics.jsonl"
        self.epochs_seen = 0
        self._stamp: tuple[int, int] | None = None

    def sync(self, store: "Store", run_id: str) -> bool:
        """Record the history if metrics.jsonl changed since the last call; True when it has new epochs."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        rows = read_history(self.path.parent)
        store.record_history(run_id, rows)
        grew = len(rows) > self.epochs_seen
        self.epochs_seen = len(rows)
        return grew


def read_summary(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """`summary.json` of a run folder, or None when the run never wrote one."""
    try:
        summary = read_json(Path(folder) / "summary.json")
    except ValueError:  # written atomically by train, so only a foreign program leaves a torn file
        return None
    return summary if isinstance(summary, dict) else None


def plain(value: Any) -> Any:
    """NumPy scalars/arrays inside dicts and lists -> Python values (JSON-safe); NaN/inf kept as floats."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return value


def _epoch_key(epoch: Any) -> float:
    try:
        return float(epoch)
    except (TypeError, ValueError):
        return math.inf
