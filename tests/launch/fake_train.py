"""A small, fast training program that keeps the run-folder contract of `python -m harness.train`.

Not a mock: a real child process that the launcher tests start through agents and SLURM jobs, so
that they exercise real processes, signals, requeues and resumes in seconds instead of the minutes a
TensorFlow model takes to import and train on two cores. One test uses the real trainer as well.

    python tests/launch/fake_train.py --epochs=3 --epoch_s=1.0 --quality=0.5

Run folder `<HARNESS_ROOT>/<HARNESS_SWEEP_ID>/<WANDB_RUN_ID>/`: `metrics.jsonl` (one row per epoch,
`val_dice_coef` = quality * epoch / epochs), `summary.json` (status running/finished/preempted),
`checkpoint/state.json` (epochs completed: a restart resumes after it and cuts metrics.jsonl back
to it), and `starts.jsonl` (one line per process start: pid, first epoch, CUDA_VISIBLE_DEVICES,
SLURM job id and restart count) so tests can check where each attempt ran and resumed.
SIGTERM/SIGINT/SIGUSR1: save and exit 128 + signal.
FAKE_PAUSE_AFTER_EPOCH=N: after epoch N is saved, write `paused.json` and wait for a stop signal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    args = {}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        args[key] = value
    epochs = int(float(args.get("epochs", 3)))
    epoch_s = float(args.get("epoch_s", 0.5))
    quality = float(args.get("quality", 0.5))
    fail_at = int(float(args.get("fail_at_epoch", 0)))
    run_id = os.environ["WANDB_RUN_ID"]
    sweep_id = os.environ.get("HARNESS_SWEEP_ID", "single")
    folder = Path(os.environ.get("HARNESS_ROOT", "runs")) / sweep_id / run_id
    (folder / "checkpoint").mkdir(parents=True, exist_ok=True)
    state_path = folder / "checkpoint" / "state.json"
    done = json.loads(state_path.read_text())["epoch"] if state_path.exists() else 0
    # Like harness.train: cut metrics.jsonl back to the checkpoint (a process killed between writing
    # an epoch's row and its checkpoint would otherwise log that epoch twice).
    metrics_path = folder / "metrics.jsonl"
    if metrics_path.exists():
        rows = [line for line in metrics_path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["epoch"] <= done]
        if len(kept) != len(rows):
            metrics_path.write_text("".join(line + "\n" for line in kept))

    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, lambda number, frame: received.append(number))

    with open(folder / "starts.jsonl", "a") as starts:
        starts.write(json.dumps({
            "time": time.time(), "pid": os.getpid(), "start_epoch": done + 1, "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        }) + "\n")

    def summary(status: str, **extra) -> dict:
        data = {"run_id": run_id, "sweep_id": sweep_id, "status": status, "epochs_completed": done,
                "epochs": epochs, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        data.update(extra)
        write_json(folder / "summary.json", data)
        return data

    summary("running")
    while done < epochs:
        started = time.monotonic()
        while time.monotonic() - started < epoch_s:
            if received:
                signum = received[0]
                summary("preempted", signal=signal.Signals(signum).name, exit_code=128 + signum)
                return 128 + signum
            time.sleep(0.02)
        epoch = done + 1
        if fail_at and epoch == fail_at:
            summary("failed")
            print(f"fake_train: failing at epoch {epoch} as asked", file=sys.stderr)
            return 1
        row = {"epoch": epoch, "val_dice_coef": quality * epoch / epochs, "loss": 1.0 - quality * epoch / epochs,
               "seconds": time.monotonic() - started, "time": time.time()}
        with open(folder / "metrics.jsonl", "a") as metrics:
            metrics.write(json.dumps(row) + "\n")
        done = epoch
        write_json(state_path, {"epoch": done})
        summary("running", final=row)
        if os.environ.get("FAKE_PAUSE_AFTER_EPOCH") == str(done):
            # Hold still at a known point (like harness.train's HARNESS_PAUSE_AT) until a stop signal.
            write_json(folder / "paused.json", {"epoch": done, "pid": os.getpid()})
            while not received:
                time.sleep(0.02)
            (folder / "paused.json").unlink()
    summary("finished")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
