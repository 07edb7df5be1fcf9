"""The bridge to W&B's sweep engine (`sweeps`): what the store, the agents and the SLURM launcher use to
propose and stop runs, so every path does it the same way:
- `propose(spec, runs)`: the next parameters from `sweeps.next_run`, given every run of the sweep;
- `runs_to_stop(spec, runs)`: hyperband (`sweeps.stop_runs`) over the runs' metric histories;
- `suggest(spec, sweep_runs)`: `propose` on runs already converted (`sweep_run`, kept by the store between claims);
- `grid_size(spec)`, `load_engine()`, `engine_runs(...)`.

How our run states reach the engine (its `RunState`): running and pending as they are (so random
and bayes account for runs in flight and grid never proposes a cell that exists); crashed and
preempted runs that will be resumed as pending (they are not results yet); crashed runs out of
attempts as crashed (imputed as the worst result, like failed); stopped runs with metric values as
finished (hyperband stopped them on real, lagging numbers), without any as killed.

Below the store, which imports it: it reads runs through `EngineRun`'s attributes (the store's `Run`
has them too) and the run states from harness.sweep.states.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, NamedTuple, Sequence

from harness.sweep.spec import import_engine, sweep_metric
from harness.sweep.states import DEFAULT_MAX_ATTEMPTS, RESUMABLE_STATES


class EngineRun(NamedTuple):
    """What the engine reads of a run: the store builds these from a few columns when it claims (a full
    `Run` has the same attributes, so either may be passed)."""

    id: str
    config: dict[str, Any]
    state: str
    metric_values: list[float]
    failures: int = 0


def load_engine() -> Any:
    """Import the `sweeps` engine and the search modules `next_run` imports on its first call."""
    sweeps = import_engine()
    import sweeps.bayes_search  # noqa: F401 - next_run imports all three on every call
    import sweeps.grid_search  # noqa: F401
    import sweeps.random_search  # noqa: F401

    return sweeps


def engine_state(run: EngineRun, max_attempts: int) -> str:
    """The engine's RunState name for one of our runs (see the module docstring)."""
    if run.state in RESUMABLE_STATES:
        return "pending" if run.failures < max_attempts else ("crashed" if run.state == "crashed" else "killed")
    if run.state == "stopped":
        return "finished" if run.metric_values else "killed"
    return run.state  # pending, running, finished, failed


def engine_runs(runs: Sequence[EngineRun], metric_name: str | None, max_attempts: int) -> list[Any]:
    """Our runs as `sweeps.SweepRun`s, with only the sweep metric in their history (all the engine reads)."""
    return [sweep_run(run, metric_name, max_attempts) for run in runs]


def sweep_run(run: EngineRun, metric_name: str | None, max_attempts: int) -> Any:
    """One run as a `sweeps.SweepRun` (a pydantic model: the store keeps them between claims, harness.sweep.store)."""
    sweeps = import_engine()
    history = [{metric_name: value} for value in run.metric_values] if metric_name else []
    summary = {metric_name: run.metric_values[-1]} if metric_name and run.metric_values else {}
    return sweeps.SweepRun(
        name=run.id,
        state=engine_state(run, max_attempts),
        config={key: {"value": value} for key, value in run.config.items()},
        history=history,
        summary_metrics=summary,
    )


def propose(spec: Mapping[str, Any], runs: Sequence[EngineRun],
            max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(parameters, the engine's search info) of the next run, or None when a grid is exhausted.

    Parameters come back flat ({"learning_rate": 0.001}), in the order of the sweep file, as plain
    Python values (the engine may hand out NumPy scalars).
    """
    metric_name, _ = sweep_metric(spec)
    return suggest(spec, engine_runs(runs, metric_name, max_attempts))


def suggest(spec: Mapping[str, Any], sweep_runs: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """`propose` on runs already converted (`sweep_run`); the engine only reads them."""
    sweeps = import_engine()
    with warnings.catch_warnings():
        # The GP's fit reports length scales at their bounds on every proposal; it is noise in agent logs.
        warnings.filterwarnings("ignore", message="The optimal value found for dimension")
        suggestion = sweeps.next_run(dict(spec), list(sweep_runs))
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


def runs_to_stop(spec: Mapping[str, Any], runs: Sequence[EngineRun],
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> set[str]:
    """Ids of running runs that hyperband (`early_terminate`) says to stop; empty without early_terminate."""
    if not spec.get("early_terminate"):
        return set()
    sweeps = import_engine()
    metric_name, _ = sweep_metric(spec)
    return {run.name for run in sweeps.stop_runs(dict(spec), engine_runs(runs, metric_name, max_attempts))}


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
