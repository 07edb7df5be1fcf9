"""The run folder, `<root>/<sweep folder>/<run_id>/`: its paths, its file names and its readers.

This is the one owner of the run-folder contract (docs/architecture.md, "The run folder"): training
writes these files, and the agents, the SLURM controller, `harness status`, evaluation and reports read
them. Nothing else spells a run-folder file name or builds a run-folder path.

Below every package (it imports only harness.io), so any of them may use it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from harness import io

# Files of a run folder (who writes each: docs/architecture.md).
CONFIG_FILE = "config.json"  # the full config plus run_id and sweep_id, written when training starts
SUMMARY_FILE = "summary.json"  # status, best and final metrics; rewritten every epoch and at exit
METRICS_FILE = "metrics.jsonl"  # one row per completed epoch
BEST_FILE = "best.keras"  # the best model by config.monitor
CHECKPOINT_DIR = "checkpoint"  # resumable state (harness.run.checkpoint)
OUTPUT_FILE = "output.log"  # the run's stdout/stderr, written by the agent or the SLURM job
PLACEMENT_FILE = "slurm.json"  # where a SLURM job runs the run (harness.launch.jobs)
PAUSED_FILE = "paused.json"  # written while HARNESS_PAUSE_AT holds the run still (tests)
ARGS_FILE = "args.json"  # the W&B ${args_json_file} macro's file
# Written by evaluation (harness.evaluate) into a run folder, or into an ensemble's folder.
POSTPROCESS_FILE = "postprocess.json"  # the tuned post-processing parameters (`harness postprocess`)
EVALUATION_FILE = "evaluation.json"  # the scores of `harness evaluate`
PLOTS_DIR = "plots"  # the pictures of both
CACHE_DIR = "cache"  # the validation predictions (float16 logits; safe to delete)
# Folders of a sweep folder, beside its run folders.
AGENTS_DIR = "agents"  # agent logs (harness.launch.local)
SLURM_DIR = "slurm"  # submitit's files (harness.launch.slurm)
SYNC_DIR = "sync"  # what the live W&B sync processes printed, one log per run (harness.launch.sync)
REPORT_DIR = "report"  # `harness sweep report`'s pictures and report.md (harness.evaluate.reports)
SINGLE = "single"  # the sweep folder of runs started outside any sweep


def sweep_folder_name(sweep_id: str | None) -> str:
    """The folder under the runs root that holds a sweep's runs: a W&B path's last part; `single` for none."""
    return sweep_id.rsplit("/", 1)[-1] if sweep_id else SINGLE


def sweep_dir(root: str | os.PathLike[str] | None, sweep_id: str | None) -> Path:
    """`<root>/<sweep folder>/`, with root as harness.io.runs_root resolves it (argument, $HARNESS_ROOT, ./runs)."""
    return io.runs_root(root) / sweep_folder_name(sweep_id)


def run_dir(root: str | os.PathLike[str] | None, sweep_id: str | None, run_id: str) -> Path:
    """`<root>/<sweep folder>/<run_id>/`, the run folder of the training contract."""
    return sweep_dir(root, sweep_id) / run_id


def agents_dir(root: str | os.PathLike[str] | None, sweep_id: str) -> Path:
    return sweep_dir(root, sweep_id) / AGENTS_DIR


def slurm_dir(root: str | os.PathLike[str] | None, sweep_id: str) -> Path:
    return sweep_dir(root, sweep_id) / SLURM_DIR


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """`config.json` of a run folder, or None when training never started there."""
    saved = io.read_json(Path(folder) / CONFIG_FILE)
    return saved if isinstance(saved, dict) else None


def read_summary(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """`summary.json` of a run folder, or None when the run never wrote one (or another program tore it)."""
    try:
        summary = io.read_json(Path(folder) / SUMMARY_FILE)
    except ValueError:  # written atomically by train, so only a foreign program leaves a torn file
        return None
    return summary if isinstance(summary, dict) else None


def write_summary(folder: str | os.PathLike[str], summary: dict[str, Any]) -> None:
    io.atomic_write_json(Path(folder) / SUMMARY_FILE, summary)


def read_history(folder: str | os.PathLike[str], skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl`, one per epoch (a resumed run's repeated epoch: the last row wins).

    Read through `harness.io.read_jsonl`, the one tolerant reader: a torn line anywhere is skipped
    (and reported: into `skipped` when given, else on stderr), the rows after it are kept.
    """
    rows = io.read_jsonl(Path(folder) / METRICS_FILE, skipped)
    by_epoch: dict[Any, dict[str, Any]] = {}
    unnumbered = []
    for row in rows:
        if "epoch" in row:
            by_epoch[row["epoch"]] = row
        else:
            unnumbered.append(row)
    ordered = [by_epoch[epoch] for epoch in sorted(by_epoch, key=_epoch_key)]
    return ordered + unnumbered


def epoch_times(folder: str | os.PathLike[str]) -> list[float]:
    """When each epoch row of `metrics.jsonl` was written (its `time`), for what an attempt cost. Quiet about
    a torn line: whoever follows the history (harness.sweep.outcome) reports it."""
    rows = read_history(folder, skipped=[])
    return [float(row["time"]) for row in rows if isinstance(row.get("time"), (int, float))]


def _epoch_key(epoch: Any) -> float:
    try:
        return float(epoch)
    except (TypeError, ValueError):
        return math.inf
