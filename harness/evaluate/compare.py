"""`harness compare RUN_A RUN_B`: two runs' per-class validation dice side by side, printed and charted.

Each run's numbers come from its evaluation.json (raw and post-processed dice of the plain setting)
or, for a run only tuned, from its postprocess.json (dice before/after); a run with neither is an
error naming the command to run first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from harness import CLASSES
from harness import io, runfolder
from harness.errors import HarnessError
from harness.evaluate import plots
from harness.tables import format_table

COMPARISON_FILE = "comparison.png"


def run_scores(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{'name', 'model', 'source', 'raw': {class: dice}, 'post': {class: dice}, 'held_out': {class: dice}
    or None} with 'mean' in each; held_out is the tuning's held-out estimate (postprocess.json with folds)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HarnessError(f"run folder not found: {run_dir}")
    config = runfolder.read_config(run_dir) or {}
    name = str(config.get("run_id") or run_dir.name)
    model = str(config.get("model", "?"))
    tuned = io.read_json(run_dir / runfolder.POSTPROCESS_FILE)
    held_out = _held_out(tuned)
    evaluation = io.read_json(run_dir / runfolder.EVALUATION_FILE)
    if evaluation is not None:
        plain = evaluation["results"]["plain"]
        raw = {class_name: plain["per_class"][class_name]["dice"] for class_name in CLASSES}
        post = {class_name: plain["per_class"][class_name]["dice_post"] for class_name in CLASSES}
        raw["mean"], post["mean"] = plain["kaggle_dice"], plain["kaggle_dice_post"]
        return {"name": name, "model": model, "source": runfolder.EVALUATION_FILE, "raw": raw, "post": post,
                "held_out": held_out, "images": evaluation.get("validation_images")}
    if tuned is not None:
        raw = {class_name: tuned["classes"][class_name]["dice_before"] for class_name in CLASSES}
        post = {class_name: tuned["classes"][class_name]["dice_after"] for class_name in CLASSES}
        raw["mean"], post["mean"] = tuned["mean"]["dice_before"], tuned["mean"]["dice_after"]
        return {"name": name, "model": model, "source": runfolder.POSTPROCESS_FILE, "raw": raw, "post": post,
                "held_out": held_out, "images": tuned.get("validation_images")}
    raise HarnessError(f"{run_dir} has neither {runfolder.EVALUATION_FILE} nor {runfolder.POSTPROCESS_FILE}: "
                       f"run `harness evaluate {run_dir}` first")


def _held_out(tuned: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not tuned or ((tuned.get("mean") or {}).get("dice_held_out")) is None:
        return None
    held_out = {class_name: float(tuned["classes"][class_name]["dice_held_out"]) for class_name in CLASSES}
    held_out["mean"] = float(tuned["mean"]["dice_held_out"])
    return held_out


def compare_runs(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Both runs' scores and the chart (default: <RUN_A>/plots/comparison.png)."""
    first, second = run_scores(run_a), run_scores(run_b)
    if first["name"] == second["name"]:
        first["name"], second["name"] = str(run_a), str(run_b)
    chart = Path(out) if out else Path(run_a) / runfolder.PLOTS_DIR / COMPARISON_FILE
    groups = list(CLASSES) + ["mean"]
    series = {}
    for scores in (first, second):
        label = scores["name"] if scores["name"] == scores["model"] else f"{scores['name']} ({scores['model']})"
        series[f"{label} raw"] = [scores["raw"][group] for group in groups]
        series[f"{label} post"] = [scores["post"][group] for group in groups]
    plots.grouped_bars(groups, series, chart, title="validation dice per class: raw (threshold) and post-processed")
    return {"runs": [first, second], "chart": str(chart)}


def format_comparison(comparison: Mapping[str, Any]) -> str:
    first, second = comparison["runs"]
    # Held-out columns when both runs were tuned with folds: the estimate to compare by.
    held_out = first.get("held_out") is not None and second.get("held_out") is not None
    header = ["class", "A raw", "A post", "B raw", "B post", "B-A post"]
    if held_out:
        header += ["A held-out", "B held-out", "B-A held-out"]
    rows = []
    for group in list(CLASSES) + ["mean"]:
        row = [
            group,
            f"{first['raw'][group]:.4f}",
            f"{first['post'][group]:.4f}",
            f"{second['raw'][group]:.4f}",
            f"{second['post'][group]:.4f}",
            f"{second['post'][group] - first['post'][group]:+.4f}",
        ]
        if held_out:
            row += [f"{first['held_out'][group]:.4f}", f"{second['held_out'][group]:.4f}",
                    f"{second['held_out'][group] - first['held_out'][group]:+.4f}"]
        rows.append(row)
    lines = [
        f"A: {first['name']} ({first['model']}, {first['images']} validation images, from {first['source']})",
        f"B: {second['name']} ({second['model']}, {second['images']} validation images, from {second['source']})",
        format_table(rows, header=header, align="l" + "r" * (len(header) - 1), rules=(1, -1)),
        f"chart: {comparison['chart']}",
    ]
    return "\n".join(lines)
