"""`harness sweep report --sweep ID`: what the W&B dashboard shows, offline, from the local sweep store.

Writes into `<root>/<sweep_id>/report/`:
    best_runs.png                the best runs (by the sweep's metric and goal) as a table
    parallel_coordinates.png     one line per run across the varying parameters and the metric
    parameter_importance.png     per parameter: correlation with the metric and an importance
    report.md                    the same tables in Markdown, with the pictures linked, and what the sweep
                                 cost (GPU-hours useful and lost, the best metric against GPU-hours spent)

Parameters that take a single value in the sweep are left out. Numeric parameters are used as
numbers (on a log10 axis when they are positive and span two decades or more, like learning
rates); categorical ones (strings, booleans) are mapped to positions in the order of the sweep's
`values`. Correlation is Pearson's r of the (encoded) parameter with the metric, shown for numeric and
two-level parameters only (a position order of three or more categories means nothing). Importance
is |Spearman's rho| for numeric parameters and the correlation ratio eta (the share of the metric's
spread explained by the category means, square-rooted) for categorical ones: both in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness import io, runfolder
from harness.errors import SweepError
from harness.evaluate import plots
from harness.tables import format_table

REPORT_FILE = "report.md"
BEST_RUNS = 10


@dataclasses.dataclass
class Parameter:
    name: str
    kind: str  # "numeric" or "categorical"
    values: np.ndarray  # encoded per run (NaN where the run lacks it)
    log: bool = False
    levels: list[Any] = dataclasses.field(default_factory=list)  # categorical: value of each position


def encode_parameters(configs: Sequence[dict[str, Any]], spec_parameters: dict[str, Any] | None = None) -> list[Parameter]:
    """The parameters that vary across `configs`, encoded as numbers per run."""
    spec_parameters = spec_parameters or {}
    names: list[str] = []
    for config in configs:
        for name in config:
            if name not in names:
                names.append(name)
    parameters = []
    for name in names:
        raw = [config.get(name) for config in configs]
        present = [value for value in raw if value is not None]
        if len({repr(value) for value in present}) < 2:
            continue  # fixed in this sweep: nothing to learn from it
        numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present)
        if numeric:
            values = np.array([float(value) if value is not None else np.nan for value in raw])
            finite = values[np.isfinite(values)]
            log = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() >= 100)
            parameters.append(Parameter(name, "numeric", np.log10(values) if log else values, log=log))
        else:
            order = list((spec_parameters.get(name) or {}).get("values") or [])
            levels = [value for value in order if value in present]
            levels += sorted({value for value in present if value not in levels}, key=repr)
            positions = {repr(level): float(index) for index, level in enumerate(levels)}
            values = np.array([positions[repr(value)] if value is not None else np.nan for value in raw])
            parameters.append(Parameter(name, "categorical", values, levels=levels))
    return parameters


def importance(parameter: Parameter, metric: np.ndarray) -> tuple[float, float]:
    """(Pearson r or NaN, importance in [0, 1]) of one parameter against the metric, on finite pairs."""
    from scipy import stats

    mask = np.isfinite(parameter.values) & np.isfinite(metric)
    x, y = parameter.values[mask], metric[mask]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    two_levels = parameter.kind == "categorical" and len(np.unique(x)) == 2
    pearson = float(np.corrcoef(x, y)[0, 1]) if parameter.kind == "numeric" or two_levels else math.nan
    if parameter.kind == "numeric":
        rho = stats.spearmanr(x, y).statistic
        return pearson, float(abs(rho)) if np.isfinite(rho) else math.nan
    # Correlation ratio: sqrt(between-group sum of squares / total sum of squares).
    total = float(((y - y.mean()) ** 2).sum())
    between = sum(float((y[x == level].size) * (y[x == level].mean() - y.mean()) ** 2) for level in np.unique(x))
    return pearson, math.sqrt(between / total) if total > 0 else math.nan


def _metric_of(run: Any, metric_name: str | None) -> float:
    if run.best_metric is not None and math.isfinite(run.best_metric):
        return float(run.best_metric)
    if metric_name:
        value = (run.summary or {}).get(metric_name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return math.nan


def _evaluation_of(run_dir: Path) -> float | None:
    """The run's post-processed dice: the held-out estimate when it was tuned with folds, else the
    tuned-on score (evaluation.json, then postprocess.json)."""
    tuned = io.read_json(run_dir / runfolder.POSTPROCESS_FILE)
    held_out = ((tuned or {}).get("mean") or {}).get("dice_held_out")
    if held_out is not None:
        return float(held_out)
    evaluation = io.read_json(run_dir / runfolder.EVALUATION_FILE)
    if evaluation:
        return float(evaluation["results"]["plain"]["kaggle_dice_post"])
    if tuned:
        return float(tuned["mean"]["dice_after"])
    return None


def sweep_report(sweep_id: str, root: str | os.PathLike[str] | None = None, top: int = BEST_RUNS) -> dict[str, Any]:
    """Build the report of a local sweep; returns {'folder', 'files', 'best', 'importance', 'header'}."""
    from harness.sweep.store import Store

    from harness.sweep import status

    with Store(root, read_only=True) as store:
        sweep = store.get_sweep(sweep_id)
        runs = store.runs(sweep_id)
        root_path = store.root
        attempts = store.attempts(sweep_id)
        cost = status.cost_lines(store, sweep)
    if not runs:
        raise SweepError(f"sweep {sweep_id} has no runs yet: nothing to report (start an agent: harness agent --sweep {sweep_id})")
    metric_name = sweep.metric_name or "metric"
    metric = np.array([_metric_of(run, sweep.metric_name) for run in runs])
    parameters = encode_parameters([dict(run.config) for run in runs], sweep.spec.get("parameters") or {})
    folder = runfolder.sweep_dir(root_path, sweep_id) / runfolder.REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)

    best_header, best_rows = _best_runs(sweep, runs, metric, parameters, top, root_path)
    files = {"best_runs": plots.table_png(best_header, best_rows, folder / "best_runs.png",
                                          title=f"sweep {sweep_id}: best runs by {metric_name} ({sweep.goal})")}
    rows = _importance_rows(parameters, metric)
    if parameters:
        files.update(_parameter_pictures(sweep_id, len(runs), parameters, metric, metric_name, rows, folder))
    report = _markdown(sweep, runs, metric_name, best_header, best_rows, rows, files, folder)
    io.atomic_write_text(folder / REPORT_FILE, report + _cost_markdown(sweep, attempts))
    files["report"] = folder / REPORT_FILE
    return {"folder": str(folder), "files": {key: str(path) for key, path in files.items()}, "best": best_rows,
            "importance": rows, "header": best_header, "cost": cost}


def format_best_runs(report: dict[str, Any]) -> str:
    """The best-runs table of a `sweep_report` as text (what `harness sweep report` prints), then its cost."""
    return "\n".join([format_table(report["best"], header=report["header"]), *report.get("cost", [])])


def _cost_markdown(sweep: Any, attempts: Sequence[Any]) -> str:
    """## Cost: GPU-hours of the sweep's ended attempts (useful, lost), CPU wall-hours, the best metric by cost."""
    from harness.sweep import attempts as costs

    if not attempts:
        return ""
    total = costs.sweep_cost(attempts)
    axis = costs.cost_axis(attempts)
    lines = ["", "## Cost", "", "| attempts | GPU-hours | useful | lost | attempts cut short | CPU wall-hours |",
             "|---|---|---|---|---|---|",
             f"| {total.attempts} | {total.gpu_hours:.4g} | {total.useful_gpu_hours:.4g} | {total.lost_gpu_hours:.4g} | "
             f"{total.interrupted} | {total.cpu_wall_hours:.4g} |", "",
             "Lost: the time since each interrupted process's last completed epoch (an upper bound where it saved "
             "mid-epoch). A CPU attempt counts 0 GPU-hours.", ""]
    points = costs.best_by_cost(attempts, sweep.goal)
    if points:
        lines += [f"Best `{sweep.metric_name or 'metric'}` so far against the {axis} spent:", "",
                  f"| {axis} spent | best | run |", "|---|---|---|"]
        lines += [f"| {spent:.4g} | {value:.4f} | {run_id} |" for spent, value, run_id in points]
        lines.append("")
    return "\n".join(lines) + "\n"


def _best_runs(sweep: Any, runs: Sequence[Any], metric: np.ndarray, parameters: Sequence[Parameter],
               top: int, root: Path) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the `top` runs by the sweep's metric and goal (runs without one last), with
    their post-processed dice where tuned or evaluated and the parameters that vary."""
    maximize = sweep.goal == "maximize"
    ranked = sorted(range(len(runs)), key=lambda index: (not math.isfinite(metric[index]),
                                                         -metric[index] if maximize else metric[index]))
    varying = [parameter.name for parameter in parameters]
    header = ["rank", "run", "state", sweep.metric_name or "metric", "post dice", "epochs"] + varying
    rows = []
    for rank, index in enumerate(ranked[:top], start=1):
        run = runs[index]
        post = _evaluation_of(runfolder.run_dir(root, run.sweep_id, run.id))
        rows.append(
            [str(rank), run.id, run.state, f"{metric[index]:.4f}" if math.isfinite(metric[index]) else "-",
             f"{post:.4f}" if post is not None else "-", str(run.epochs_completed)]
            + [_short(run.config.get(name)) for name in varying]
        )
    return header, rows


def _importance_rows(parameters: Sequence[Parameter], metric: np.ndarray) -> list[dict[str, Any]]:
    """Per parameter: its kind, correlation and importance against the metric; the most important first."""
    rows = []
    for parameter in parameters:
        pearson, weight = importance(parameter, metric)
        rows.append({"parameter": parameter.name, "kind": parameter.kind + (" (log10)" if parameter.log else ""),
                     "correlation": pearson, "importance": weight})
    rows.sort(key=lambda row: -(row["importance"] if math.isfinite(row["importance"]) else -1.0))
    return rows


def _parameter_pictures(sweep_id: str, run_count: int, parameters: Sequence[Parameter], metric: np.ndarray,
                        metric_name: str, rows: Sequence[dict[str, Any]], folder: Path) -> dict[str, Path]:
    """parallel_coordinates.png and parameter_importance.png."""
    columns = [parameter.name + (" (log10)" if parameter.log else "") for parameter in parameters] + [metric_name]
    matrix = np.column_stack([parameter.values for parameter in parameters] + [metric])
    ticks = {
        position: [(float(level_index), _short(level)) for level_index, level in enumerate(parameter.levels)]
        for position, parameter in enumerate(parameters) if parameter.kind == "categorical"
    }
    for position, parameter in enumerate(parameters):
        if parameter.log:  # label a log10 axis with the parameter's own values
            finite = parameter.values[np.isfinite(parameter.values)]
            ticks[position] = [(float(value), f"{10 ** value:.3g}") for value in (finite.min(), finite.max())]
    return {
        "parallel_coordinates": plots.parallel_coordinates(
            columns, matrix, ticks, metric, folder / "parallel_coordinates.png", color_label=metric_name,
            title=f"sweep {sweep_id}: {run_count} runs",
        ),
        "parameter_importance": plots.importance_bars(
            [row["parameter"] for row in rows], [row["correlation"] for row in rows],
            [row["importance"] for row in rows], folder / "parameter_importance.png", metric=metric_name,
        ),
    }


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(sweep: Any, runs: Sequence[Any], metric_name: str, header: Sequence[str], rows: Sequence[Sequence[str]],
              importance_rows: Sequence[dict[str, Any]], files: dict[str, Path], folder: Path) -> str:
    states: dict[str, int] = {}
    for run in runs:
        states[run.state] = states.get(run.state, 0) + 1
    lines = [
        f"# Sweep {sweep.id} ({sweep.name})",
        "",
        f"{sweep.method} search, metric `{metric_name}` ({sweep.goal}); state {sweep.state}; "
        f"{len(runs)} runs: " + ", ".join(f"{count} {state}" for state, count in sorted(states.items())) + ".",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        "## Best runs",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "`post dice`: challenge dice after post-processing, where the run was tuned (`harness postprocess`: "
              "its held-out estimate) or only evaluated (`harness evaluate`: scored on the tuning images).", ""]
    if importance_rows:
        lines += ["## Parameters", "", "| parameter | kind | correlation (Pearson) | importance |", "|---|---|---|---|"]
        for row in importance_rows:
            lines.append(f"| {row['parameter']} | {row['kind']} | {_number(row['correlation'])} | "
                         f"{_number(row['importance'], signed=False)} |")
        lines += ["", "Importance: |Spearman rho| for numeric parameters, the correlation ratio eta for categorical "
                  "ones. With few runs these numbers are noisy.", ""]
    lines += ["## Pictures", ""]
    for key, path in files.items():
        lines.append(f"![{key}]({Path(path).relative_to(folder)})")
    return "\n".join(lines) + "\n"


def _number(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"
