"""A small, fast training program that follows the run-folder contract of `python -m harness.train`.

This is not a mock of the trainer: it is a real child program for the agent tests, doing everything
the agent relies on (docs/architecture.md) without TensorFlow, so a run takes a fraction of a second:
- parameters as `--key=value`, `key=value`, `--key value`, a bare `--flag`, or `--config FILE` (JSON/
  YAML-free: JSON only, what `${args_json_file}` writes); `--run_id/--root/--sweep_id` or the env
  WANDB_RUN_ID / HARNESS_ROOT / HARNESS_SWEEP_ID say which run this is;
- the run folder `<root>/<sweep_id or single>/<run_id>/`: config.json (kept on resume), one
  metrics.jsonl line per epoch, summary.json (status running/finished/preempted/failed) after each
  epoch and at exit, and its own resumable state in checkpoint/state.json, written atomically;
- SIGTERM/SIGINT: stop at once, keep the last completed epoch's checkpoint, write status preempted and
  exit 128 + the signal; started again, it resumes after the last completed epoch;
- an already finished run exits 0 at once.
Its metric is a deterministic function of the parameters (best near learning_rate=1e-3, more filters,
less dropout), rising with the epoch: val_dice_coef = quality * (1 - 0.5 ** epoch).
For the tests it also records what it was given (fake_argv.json, fake_env.json) and every start
(starts.jsonl). Knobs: env FAKE_EPOCH_SECONDS (sleep per epoch, default 0.05), parameter
`fail_at_epoch=N` (exit 3 with status failed at that epoch; not a training key, tests only).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

CONTROL = ("config", "run_id", "root", "sweep_id")
STOP = {"signal": None}


def parse(argv: list[str]) -> tuple[dict, dict]:
    params: dict = {}
    control: dict = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            elif index < len(argv) and not argv[index].startswith("--"):
                key, value = body, argv[index]
                index += 1
            else:
                key, value = body, "True"
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            print(f"fake_train: unexpected argument {arg!r}", file=sys.stderr)
            sys.exit(2)
        (control if key in CONTROL else params)[key] = value
    if "config" in control:
        params = {**json.loads(Path(control["config"]).read_text()), **params}
    return {key: number(value) for key, value in params.items()}, control


def number(value):
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(value, value)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def quality(params: dict) -> float:
    lr = float(params.get("learning_rate", 1e-3))
    filters = float(params.get("filters", 8))
    dropout = float(params.get("dropout", 0.2))
    return 1.0 / (1.0 + abs(math.log10(lr) + 3.0)) * filters / (filters + 8.0) * (1.0 - dropout / 2.0)


def on_signal(signum, frame) -> None:
    STOP["signal"] = signum


def main(argv: list[str]) -> int:
    started = time.time()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    params, control = parse(argv)
    run_id = control.get("run_id") or os.environ.get("WANDB_RUN_ID") or "fakerun0"
    sweep_id = control.get("sweep_id") or os.environ.get("HARNESS_SWEEP_ID") or "single"
    root = Path(control.get("root") or os.environ.get("HARNESS_ROOT") or "runs")
    folder = root / sweep_id / run_id
    folder.mkdir(parents=True, exist_ok=True)
    epochs = int(params.get("epochs", 3))
    fail_at = int(params.get("fail_at_epoch", 0))
    epoch_seconds = float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05"))
    state_path = folder / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"epoch": 0, "best": None, "step": 0}
    with open(folder / "starts.jsonl", "a") as handle:
        handle.write(json.dumps({"time": started, "pid": os.getpid(), "resumed_from": state["epoch"]}) + "\n")
    write_json(folder / "fake_argv.json", argv)
    names = ("WANDB_RUN_ID", "WANDB_RUN_GROUP", "HARNESS_SWEEP_ID", "HARNESS_ROOT", "WANDB_MODE",
             "CUDA_VISIBLE_DEVICES", "WANDB_SWEEP_ID", "WANDB_SERVICE")
    write_json(folder / "fake_env.json", {**{name: os.environ.get(name) for name in names}, "cwd": os.getcwd()})
    if not (folder / "config.json").exists():
        write_json(folder / "config.json", {**params, "run_id": run_id, "sweep_id": sweep_id})
    base = quality(params)

    def summary(status: str, final: dict | None) -> None:
        best = state["best"]
        write_json(folder / "summary.json", {
            "run_id": run_id, "sweep_id": sweep_id, "status": status, "epochs_completed": state["epoch"],
            "epochs": epochs, "best": {"metric": "val_dice_coef", "value": best[0], "epoch": best[1]} if best else None,
            "final": final or {}, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(),
        })

    last: dict = {}
    summary("running", None)
    while state["epoch"] < epochs:
        epoch = state["epoch"] + 1
        deadline = time.monotonic() + epoch_seconds
        while time.monotonic() < deadline and STOP["signal"] is None:
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        if STOP["signal"] is not None:
            summary("preempted", last)
            return 128 + int(STOP["signal"])
        if fail_at and epoch >= fail_at:
            summary("failed", last)
            print(f"fake_train: failing at epoch {epoch} as asked", file=sys.stderr)
            return 3
        value = base * (1.0 - 0.5 ** epoch)
        state["step"] += 10
        last = {"epoch": epoch, "loss": 1.0 - value, "dice_coef": value, "kaggle_dice": value,
                "val_loss": 1.0 - value, "val_dice_coef": value, "val_kaggle_dice": value,
                "lr": float(params.get("learning_rate", 1e-3)), "step": state["step"],
                "seconds": epoch_seconds, "time": time.time()}
        with open(folder / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(last) + "\n")
        if state["best"] is None or value > state["best"][0]:
            state["best"] = [value, epoch]
        state["epoch"] = epoch
        write_json(state_path, state)
        summary("running", last)
    summary("finished", last)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
