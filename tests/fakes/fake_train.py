"""A small, fast training program that keeps the run-folder contract of `python -m harness.train`.

Not a mock of the trainer: a real child program that the sweep and launcher tests start through
agents, GPU launchers and SLURM jobs, so that they exercise real processes, signals, requeues and
resumes in a fraction of a second per epoch instead of the minutes a TensorFlow model takes to import
and train on two cores (docs/architecture.md has the contract; a few tests use the real trainer too).

    python tests/fakes/fake_train.py --epochs=3 --epoch_s=1.0 --quality=0.5

Arguments: parameters as `--key=value`, `key=value`, `--key value`, a bare `--flag`, or `--config FILE`
(JSON only, what `${args_json_file}` writes); `--run_id/--root/--sweep_id` or the environment's
WANDB_RUN_ID / HARNESS_ROOT / HARNESS_SWEEP_ID say which run this is (run id `fakerun0` by default).

The run folder `<root>/<sweep_id or single>/<run_id>/`:
- `config.json` (the parameters, written once: kept on resume);
- `metrics.jsonl`, one row per epoch; on a start it is cut back to the checkpoint, like harness.train
  (a process killed between an epoch's row and its checkpoint would otherwise log that epoch twice);
- `summary.json` (status running/finished/preempted/failed, the best value, the last row) after each
  epoch and at exit;
- `checkpoint/state.json`, its resumable state (epochs completed, best, step), written atomically: a
  start resumes after the last completed epoch, and an already finished run exits 0 at once;
- for the tests: `starts.jsonl` (one line per process start: time of its first instruction, pid, the
  epoch it starts at, host, CUDA_VISIBLE_DEVICES, SLURM job id and restart count), `fake_argv.json`
  and `fake_env.json` (what it was given: the run's variables, and a GPU memory share when it has one).

The metric, val_dice_coef, rises with the epoch towards a quality: an explicit `quality=Q` is reached
at the last epoch (Q * epoch / epochs: the launcher tests rank runs by it); otherwise the quality is a
deterministic function of the parameters (best near learning_rate=1e-3, more filters, less dropout)
approached as quality * (1 - 0.5 ** epoch) (the sweep tests' searches).

Signals: SIGTERM/SIGINT/SIGUSR1 stop it at once, keeping the last completed epoch's checkpoint, with
status preempted, and exit 128 + the signal.
Knobs: the parameter `epoch_s` (seconds per epoch; else env FAKE_EPOCH_SECONDS; default 0.05), the
parameter `fail_at_epoch=N` (status failed and exit 3 at that epoch; not a training key, tests only),
env FAKE_PAUSE_AFTER_EPOCH=N (after epoch N is saved, write `paused.json` and wait for a stop signal,
like harness.train's HARNESS_PAUSE_AT), env FAKE_FAIL_AT_START=FILE (a bad place: when a line
`NAME=VALUE` of FILE matches this process's environment, e.g. `SLURMD_NODENAME=node1` or
`CUDA_VISIBLE_DEVICES=2`, exit 1 at once, after recording the start, before any epoch: a broken node or GPU).
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

STARTED = time.time()  # the first instruction, as near as a program can tell (benchmarks/controller.py)
CONTROL = ("config", "run_id", "root", "sweep_id")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
FAIL_EXIT_CODE = 3
BAD_PLACE_EXIT_CODE = 1
ENVIRONMENT_RECORDED = ("WANDB_RUN_ID", "WANDB_RUN_GROUP", "HARNESS_SWEEP_ID", "HARNESS_ROOT", "WANDB_MODE",
                        "CUDA_VISIBLE_DEVICES", "WANDB_SWEEP_ID", "WANDB_SERVICE")
# Recorded only when set: a GPU memory share from the launcher (--agents-per-gpu N > 1; harness.run.device).
ENVIRONMENT_RECORDED_IF_SET = ("HARNESS_GPU_MEMORY_FRACTION", "TF_FORCE_GPU_ALLOW_GROWTH")
received: list[int] = []


def parse(argv: list[str]) -> tuple[dict, dict]:
    """The parameters (numbers parsed) and the control arguments (which run this is)."""
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


def derived_quality(params: dict) -> float:
    lr = float(params.get("learning_rate", 1e-3))
    filters = float(params.get("filters", 8))
    dropout = float(params.get("dropout", 0.2))
    return 1.0 / (1.0 + abs(math.log10(lr) + 3.0)) * filters / (filters + 8.0) * (1.0 - dropout / 2.0)


def metric_at(params: dict, epoch: int, epochs: int) -> float:
    if "quality" in params:
        return float(params["quality"]) * epoch / epochs
    return derived_quality(params) * (1.0 - 0.5 ** epoch)


def cut_metrics_to(path: Path, done: int) -> None:
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["epoch"] <= done]
    if len(kept) != len(rows):
        path.write_text("".join(line + "\n" for line in kept))


def record_start(folder: Path, argv: list[str], state: dict) -> None:
    with open(folder / "starts.jsonl", "a") as handle:
        handle.write(json.dumps({
            "time": STARTED, "pid": os.getpid(), "resumed_from": state["epoch"], "start_epoch": state["epoch"] + 1,
            "host": socket.gethostname(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        }) + "\n")
    write_json(folder / "fake_argv.json", argv)
    write_json(folder / "fake_env.json",
               {**{name: os.environ.get(name) for name in ENVIRONMENT_RECORDED},
                **{name: os.environ[name] for name in ENVIRONMENT_RECORDED_IF_SET if name in os.environ},
                "cwd": os.getcwd()})


def bad_place() -> str | None:
    """The `NAME=VALUE` line of $FAKE_FAIL_AT_START's file that this process's environment matches, if any."""
    path = os.environ.get("FAKE_FAIL_AT_START")
    if not path or not Path(path).exists():
        return None
    for line in Path(path).read_text().splitlines():
        name, _, value = line.strip().partition("=")
        if name and os.environ.get(name) == value:
            return line.strip()
    return None


def sleep_epoch(seconds: float) -> None:
    """Sleep one epoch's time, returning early at a stop signal."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not received:
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


def pause_here(folder: Path, epoch: int) -> None:
    """Hold still at a known point (like harness.train's HARNESS_PAUSE_AT) until a stop signal."""
    write_json(folder / "paused.json", {"epoch": epoch, "pid": os.getpid()})
    while not received:
        time.sleep(0.02)
    (folder / "paused.json").unlink()


def main(argv: list[str]) -> int:
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda number, frame: received.append(number))
    params, control = parse(argv)
    run_id = control.get("run_id") or os.environ.get("WANDB_RUN_ID") or "fakerun0"
    sweep_id = control.get("sweep_id") or os.environ.get("HARNESS_SWEEP_ID") or "single"
    folder = Path(control.get("root") or os.environ.get("HARNESS_ROOT") or "runs") / sweep_id / run_id
    (folder / "checkpoint").mkdir(parents=True, exist_ok=True)
    epochs = int(params.get("epochs", 3))
    fail_at = int(params.get("fail_at_epoch", 0))
    epoch_s = float(params["epoch_s"]) if "epoch_s" in params else float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05"))
    state_path = folder / "checkpoint" / "state.json"
    state = {"epoch": 0, "best": None, "step": 0}
    if state_path.exists():
        state.update(json.loads(state_path.read_text()))
    cut_metrics_to(folder / "metrics.jsonl", state["epoch"])
    record_start(folder, argv, state)
    bad = bad_place()
    if bad:
        print(f"fake_train: failing at start: {bad} is a bad place (FAKE_FAIL_AT_START)", file=sys.stderr)
        return BAD_PLACE_EXIT_CODE
    if not (folder / "config.json").exists():
        write_json(folder / "config.json", {**params, "run_id": run_id, "sweep_id": sweep_id})

    def summary(status: str, final: dict | None, **extra) -> None:
        best = state["best"]
        write_json(folder / "summary.json", {
            "run_id": run_id, "sweep_id": sweep_id, "status": status, "epochs_completed": state["epoch"],
            "epochs": epochs, "best": {"metric": "val_dice_coef", "value": best[0], "epoch": best[1]} if best else None,
            "final": final or {}, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **extra,
        })

    last: dict = {}
    summary("running", None)
    while state["epoch"] < epochs:
        epoch = state["epoch"] + 1
        epoch_started = time.monotonic()
        sleep_epoch(epoch_s)
        if received:
            signum = received[0]
            summary("preempted", last, signal=signal.Signals(signum).name, exit_code=128 + signum)
            return 128 + signum
        if fail_at and epoch >= fail_at:
            summary("failed", last)
            print(f"fake_train: failing at epoch {epoch} as asked", file=sys.stderr)
            return FAIL_EXIT_CODE
        value = metric_at(params, epoch, epochs)
        state["step"] += 10
        last = {"epoch": epoch, "loss": 1.0 - value, "dice_coef": value, "kaggle_dice": value,
                "val_loss": 1.0 - value, "val_dice_coef": value, "val_kaggle_dice": value,
                "lr": float(params.get("learning_rate", 1e-3)), "step": state["step"],
                "seconds": time.monotonic() - epoch_started, "time": time.time()}
        with open(folder / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(last) + "\n")
        if state["best"] is None or value > state["best"][0]:
            state["best"] = [value, epoch]
        state["epoch"] = epoch
        write_json(state_path, state)
        summary("running", last)
        if os.environ.get("FAKE_PAUSE_AFTER_EPOCH") == str(epoch):
            pause_here(folder, epoch)
    summary("finished", last)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
