"""Slot utilisation of the GPU launcher: how much of the wall time the agents' slots were running runs.

A sweep of short runs (tests/launch/fake_train.py: a real child process keeping the run-folder
contract, a few seconds per run, so the launcher's own costs are not hidden behind long training) is
run by `python -m harness.launch --gpus 0,1` on this machine (GPU ids are only CUDA_VISIBLE_DEVICES
here). Utilisation comes from the store's run start/end times (harness.launch.utilisation).
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

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAIN = REPO / "tests" / "launch" / "fake_train.py"
TARGET = 0.95


def measure(runs_per_slot: int, epochs: int, epoch_s: float, slots: int = 2) -> dict:
    from harness.launch.utilisation import slot_utilisation
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
