"""Slot utilisation of the local launcher: how much of the wall time the agents' slots were running runs.

A sweep of short runs (tests/fakes/fake_train.py: a real child process keeping the run-folder
contract, a few seconds per run, so the launcher's own costs are not hidden behind long training) is
run by `python -m harness.launch --gpus 0,1` on this machine (GPU ids are only CUDA_VISIBLE_DEVICES
here). Utilisation comes from the store's run start/end times (`slot_utilisation`).

A slot is one agent (the store's `agent` column). Each run occupies its slot from its claim
(`started`) to its end (`ended`), which includes the run's own start-up; the gaps between runs are
what the launcher and agents cost: claiming, the sweep engine's proposal, recording the result.
Two numbers:
- `utilisation`: busy slot-seconds / (slots x the whole window), the window being the launcher's
  start to its end when given (else the first claim to the last end): start-up and tail included;
- `steady_utilisation`: the same per slot over its own first claim to last end, averaged: the cost
  of the gaps between runs alone.

The reference is the issue's target (0.95), not a measurement: ratio > 1 means above target.

    python -m benchmarks.utilisation [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAIN = REPO / "tests" / "fakes" / "fake_train.py"
TARGET = 0.95


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


def measure(runs_per_slot: int, epochs: int, epoch_s: float, slots: int = 2) -> dict:
    from harness.sweep.store import Store

    with tempfile.TemporaryDirectory(prefix="utilisation-") as folder:
        root = Path(folder) / "runs"
        spec = {
            "method": "grid",
            "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"quality": {"values": [round(0.01 * (i + 1), 2) for i in range(runs_per_slot * slots)]},
                           "epochs": {"value": epochs}, "epoch_s": {"value": epoch_s}},
            "command": ["${env}", "${interpreter}", str(FAKE_TRAIN), "${args}"],
        }
        with Store(root) as store:
            sweep_id = store.create_sweep(spec, workdir=folder)
        gpu_list = ",".join(str(index) for index in range(slots))
        started = time.time()
        result = subprocess.run([sys.executable, "-m", "harness.launch", "--gpus", gpu_list, "--sweep", sweep_id,
                                 "--root", str(root), "--stagger", "0.5"], capture_output=True, text=True, timeout=1800)
        ended = time.time()
        if result.returncode != 0:
            raise RuntimeError(f"launcher failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        with Store(root) as store:
            runs = store.runs(sweep_id)
        stats = slot_utilisation(runs, window_start=started, window_end=ended)
        stats["run_s"] = sum(run.ended - run.started for run in runs) / len(runs)
        return stats


def run(quick: bool = False) -> list[dict]:
    runs_per_slot, epochs, epoch_s = (4, 2, 0.5) if quick else (10, 3, 1.0)
    stats = measure(runs_per_slot, epochs, epoch_s)
    case = f"{stats['slots']} agents x {runs_per_slot} runs of ~{stats['run_s']:.1f} s"
    return [
        {"benchmark": "utilisation", "case": f"{case}: between runs (per slot)", "value": stats["steady_utilisation"],
         "unit": "fraction busy", "reference": TARGET, "ratio": stats["steady_utilisation"] / TARGET,
         "note": f"reference = the target, not a measurement; mean gap between runs {1000 * stats['mean_gap_s']:.0f} ms"},
        {"benchmark": "utilisation", "case": f"{case}: whole launch (start-up + tail)", "value": stats["utilisation"],
         "unit": "fraction busy", "reference": TARGET, "ratio": stats["utilisation"] / TARGET,
         "note": f"wall {stats['wall_s']:.1f} s incl. agent start-up and the last run's tail"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(quick=args.quick):
        print(f"{row['case']:60s} {row['value']:.4f} (target {row['reference']}, ratio {row['ratio']:.3f}) {row['note']}")


if __name__ == "__main__":
    main()
