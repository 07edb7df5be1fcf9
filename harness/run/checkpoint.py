"""The resumable state of a run folder: checkpoint, best model and the per-epoch metrics file.

Layout (inside `<run_dir>/`):
    checkpoint/LATEST                  name of the current checkpoint folder (replaced atomically)
    checkpoint/ckpt-000007/            one complete checkpoint:
        model.weights.h5               model weights + optimizer variables (iterations, LR, moments)
        state.json                     TrainState (epochs done, batch within the epoch in flight, ...)
    best.keras                         the best model by config.monitor (never replaced by a worse one)
    metrics.jsonl                      one row per completed epoch

Every write is crash-safe: a checkpoint is written into a hidden temporary folder, renamed to its
final name, and only then does `LATEST` point to it (`harness.io.atomic_write_text`); a kill at any
moment leaves the previous checkpoint in force. The best model is written in two phases: staged as
`.best-epochNNNNN.keras` before the checkpoint that records its score, renamed to `best.keras` after;
on resume a staged file is promoted only if the checkpoint in force names its epoch as the best, so
`best.keras` always matches the best score the run resumes with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import io

if TYPE_CHECKING:  # pragma: no cover
    import keras

CHECKPOINT_DIR = "checkpoint"
POINTER = "LATEST"
WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
BEST_FILE = "best.keras"
METRICS_FILE = "metrics.jsonl"
_STAGED_BEST = re.compile(r"^\.best-epoch(\d+)\.keras$")
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")


@dataclasses.dataclass
class TrainState:
    """Counters a resumed run needs beyond the weights (saved as state.json)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # training batches done in epoch `epoch + 1` when saved mid-epoch (0 at an epoch end)
    iterations: int = 0  # optimizer steps so far (also inside the weights file; here for reading)
    best_value: float | None = None  # best value of config.monitor so far
    best_epoch: int = 0  # 1-based epoch of best.keras (0: none yet)
    learning_rate: float = 0.0  # learning rate at save time (changed by LR-on-plateau)
    callbacks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # their counters
    stopped_early: bool = False  # early stopping ended the run
    reason: str = "epoch_end"  # epoch_end | signal:<NAME>
    saved: float = 0.0  # time.time() at save

    @property
    def mid_epoch(self) -> bool:
        return self.batch > 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def checkpoint_root(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_checkpoint(run_dir: str | os.PathLike[str], model: "keras.Model", state: TrainState) -> Path:
    """Write model + optimizer + `state` as a new checkpoint and make it the current one."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    number = max((_checkpoint_number(path.name) for path in root.iterdir()), default=0) + 1
    name = f"ckpt-{number:06d}"
    staging = root / f".tmp-{name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    state = dataclasses.replace(state, saved=time.time())
    weights = staging / WEIGHTS_FILE
    model.save_weights(str(weights))
    _fsync_file(weights)
    io.atomic_write_json(staging / STATE_FILE, dataclasses.asdict(state))
    _fsync_dir(staging)
    final = root / name
    os.rename(staging, final)
    _fsync_dir(root)
    io.atomic_write_text(root / POINTER, name + "\n")  # the commit point
    _remove_old(root, keep=name)
    return final


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder in force, or None when the run has none."""
    root = checkpoint_root(run_dir)
    try:
        name = (root / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    folder = root / name
    if _CHECKPOINT_NAME.match(name) and (folder / STATE_FILE).exists() and (folder / WEIGHTS_FILE).exists():
        return folder
    return None


def load_state(run_dir: str | os.PathLike[str]) -> TrainState | None:
    """The TrainState of the checkpoint in force (None when the run has no checkpoint)."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    return TrainState.from_dict(io.read_json(folder / STATE_FILE))


def restore_weights(run_dir: str | os.PathLike[str], model: "keras.Model") -> TrainState | None:
    """Load the checkpoint in force into a compiled `model` (weights and optimizer state)."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        # The optimizer's slots must exist before its saved variables can be loaded into them.
        optimizer.build(model.trainable_variables)
    model.load_weights(str(folder / WEIGHTS_FILE))
    return TrainState.from_dict(io.read_json(folder / STATE_FILE))


# --- best model -------------------------------------------------------------------------------------
def stage_best(run_dir: str | os.PathLike[str], model: "keras.Model", epoch: int) -> Path:
    """Save `model` as the best-model candidate of `epoch` (promoted by `commit_best`)."""
    path = Path(run_dir) / f".best-epoch{epoch:05d}.keras"
    model.save(str(path))
    _fsync_file(path)
    return path


def commit_best(run_dir: str | os.PathLike[str], epoch: int) -> None:
    """Make the staged candidate of `epoch` the run's best.keras."""
    run_dir = Path(run_dir)
    os.replace(run_dir / f".best-epoch{epoch:05d}.keras", run_dir / BEST_FILE)
    _fsync_dir(run_dir)


def recover_best(run_dir: str | os.PathLike[str], state: TrainState | None) -> None:
    """After a kill: promote the staged best model that the checkpoint in force vouches for, drop others."""
    run_dir = Path(run_dir)
    for path in run_dir.iterdir():
        match = _STAGED_BEST.match(path.name)
        if not match:
            continue
        if state is not None and state.best_epoch == int(match.group(1)):
            os.replace(path, run_dir / BEST_FILE)
        else:
            path.unlink()


def load_best(run_dir: str | os.PathLike[str]) -> "keras.Model":
    """The run's best model, uncompiled (for evaluation and prediction)."""
    import keras

    from harness.errors import HarnessError
    from harness.run import losses  # noqa: F401  (registers the custom objects a saved model names)

    path = Path(run_dir) / BEST_FILE
    if not path.exists():
        raise HarnessError(f"no best model in {run_dir}: {BEST_FILE} is missing (has the run finished an epoch?)")
    return keras.models.load_model(str(path), compile=False)


# --- metrics.jsonl ----------------------------------------------------------------------------------
def append_metrics(run_dir: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one epoch's row (one write call and an fsync, so a kill leaves at most a torn last line)."""
    path = Path(run_dir) / METRICS_FILE
    line = json.dumps(row, sort_keys=True, default=io._json_default) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(run_dir: str | os.PathLike[str], epochs_completed: int) -> list[dict[str, Any]]:
    """Keep one row per epoch 1..epochs_completed (rows past a checkpoint would be repeated on resume)."""
    path = Path(run_dir) / METRICS_FILE
    rows = io.read_jsonl(path)
    kept: dict[int, dict[str, Any]] = {}
    for row in rows:
        epoch = int(row.get("epoch", 0))
        if 1 <= epoch <= epochs_completed:
            kept[epoch] = row  # the latest row of an epoch wins
    ordered = [kept[epoch] for epoch in sorted(kept)]
    if path.exists() and ordered != rows:
        io.atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in ordered))
    return ordered


# --- helpers ----------------------------------------------------------------------------------------
def _checkpoint_number(name: str) -> int:
    match = _CHECKPOINT_NAME.match(name) or re.match(r"^\.tmp-ckpt-(\d+)-\d+$", name)
    return int(match.group(1)) if match else 0


def _remove_old(root: Path, keep: str) -> None:
    for path in root.iterdir():
        if path.name in (keep, POINTER) or path.name.startswith(f".{POINTER}."):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".tmp-"):
            path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable on a machine crash, not only a process kill.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
