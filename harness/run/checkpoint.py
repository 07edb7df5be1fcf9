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
moment leaves the previous checkpoint in force. The checkpoint that was in force before the newest
one is kept too (one older complete checkpoint to fall back to by hand).

Damaged state fails loudly (`CheckpointError`, naming the file and how to recover): a `LATEST` that
names a missing or incomplete folder, a state.json that does not parse, weights that do not load.
A run is never silently restarted from epoch 0; `--restart` (see `discard`) is the explicit way. The best model is written in two phases: staged as
`.best-epochNNNNN.keras` before the checkpoint that records its score, renamed to `best.keras` after;
on resume a staged file is promoted only if the checkpoint in force names its epoch as the best, so
`best.keras` always matches the best score the run resumes with.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import io, runfolder
from harness.errors import HarnessError

if TYPE_CHECKING:  # pragma: no cover
    import keras

# Inside the run folder's checkpoint folder (harness.runfolder.CHECKPOINT_DIR); the run folder's own
# file names (best.keras, metrics.jsonl, summary.json) are harness.runfolder's.
POINTER = "LATEST"
WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
_STAGED_BEST = re.compile(r"^\.best-epoch(\d+)\.keras$")
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")


class CheckpointError(HarnessError):
    """The run folder's checkpoint is damaged: the run stops instead of starting again from epoch 0."""

    exit_code = 1  # not a usage error: the run's own state is broken (agents count it as the run's failure)


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
    # Mid-epoch only (exact resume): Keras's metric accumulators over the epoch's first `batch`
    # batches (model.metrics_variables, in order), so the resumed epoch's row covers all its batches.
    metric_sums: list[Any] = dataclasses.field(default_factory=list)
    # The random-seed generators' states (Dropout's), in model.variables order: they are not in the
    # weights file, and a resumed run must draw the dropout masks an uninterrupted one would.
    seed_states: list[list[int]] = dataclasses.field(default_factory=list)

    @property
    def mid_epoch(self) -> bool:
        return self.batch > 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def checkpoint_root(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / runfolder.CHECKPOINT_DIR


def save_checkpoint(run_dir: str | os.PathLike[str], model: "keras.Model", state: TrainState) -> Path:
    """Write model + optimizer + `state` as a new checkpoint and make it the current one."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    previous = _pointer_name(root)
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
    _remove_old(root, keep=(name, previous))
    return final


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder in force, or None when the run has none (no `LATEST` yet).

    A `LATEST` naming a missing or incomplete folder is a CheckpointError, never "no checkpoint".
    """
    root = checkpoint_root(run_dir)
    name = _pointer_name(root)
    if name is None:
        return None
    folder = root / name
    missing = [file for file in (STATE_FILE, WEIGHTS_FILE) if not (folder / file).is_file()]
    if not _CHECKPOINT_NAME.match(name) or missing:
        what = f"names {name!r}, which is not a checkpoint folder" if not _CHECKPOINT_NAME.match(name) else (
            f"names {name}, which is missing" if not folder.is_dir() else f"names {name}, which lacks {', '.join(missing)}")
        raise CheckpointError(f"{root / POINTER} {what}. {_recovery(root, name)}")
    return folder


def load_state(run_dir: str | os.PathLike[str]) -> TrainState | None:
    """The TrainState of the checkpoint in force (None when the run has no checkpoint)."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    return _read_state(folder)


def restore_weights(run_dir: str | os.PathLike[str], model: "keras.Model") -> TrainState | None:
    """Load the checkpoint in force into a compiled `model` (weights, optimizer and seed-generator state)."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    state = _read_state(folder)
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        # The optimizer's slots must exist before its saved variables can be loaded into them.
        optimizer.build(model.trainable_variables)
    try:
        model.load_weights(str(folder / WEIGHTS_FILE))
    except Exception as error:  # h5py/Keras raise many kinds (OSError, ValueError, KeyError) for one cause
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} does not load into this model ({type(error).__name__}: {error}). "
            f"{_recovery(folder.parent, folder.name)}"
        ) from error
    restore_seed_states(model, state.seed_states)
    return state


def seed_states(model: "keras.Model") -> list[list[int]]:
    """The states of the model's random-seed generators (Dropout's), in model.variables order
    (their paths are not unique: every generator's variable is `seed_generator.../seed_generator_state`)."""
    return [[int(value) for value in variable.numpy().ravel()] for variable in _seed_variables(model)]


def restore_seed_states(model: "keras.Model", saved: list[list[int]]) -> None:
    import numpy as np

    variables = _seed_variables(model)
    if not saved:
        return  # a checkpoint written before seed states were saved: dropout masks start afresh
    if len(saved) != len(variables):
        raise CheckpointError(f"the checkpoint holds {len(saved)} random-seed states, the model has {len(variables)}")
    for variable, values in zip(variables, saved):
        variable.assign(np.asarray(values, dtype=variable.dtype).reshape(variable.shape))


def _seed_variables(model: "keras.Model") -> list[Any]:
    return [variable for variable in model.variables if variable.path.endswith("seed_generator_state")]


def discard(run_dir: str | os.PathLike[str]) -> Path | None:
    """Move the run's training state (checkpoints, metrics, best model, summary) into
    `<run_dir>/discarded-<time>/` so the run starts again from epoch 0; None when there was none.
    Nothing is deleted: the old state stays there to look at or to put back."""
    run_dir = Path(run_dir)
    names = [runfolder.CHECKPOINT_DIR, runfolder.METRICS_FILE, runfolder.BEST_FILE, runfolder.SUMMARY_FILE]
    present = [name for name in names if (run_dir / name).exists()] + [
        path.name for path in run_dir.glob(".best-epoch*.keras")]
    if not present:
        return None
    stamp = time.strftime("discarded-%Y%m%d-%H%M%S")
    target, number = run_dir / stamp, 1
    while target.exists():  # two restarts within a second
        target, number = run_dir / f"{stamp}-{number}", number + 1
    target.mkdir()
    for name in present:
        os.rename(run_dir / name, target / name)
    _fsync_dir(run_dir)
    return target


def _pointer_name(root: Path) -> str | None:
    try:
        return (root / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _read_state(folder: Path) -> TrainState:
    path = folder / STATE_FILE
    try:
        values = io.read_json(path)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return TrainState.from_dict(values)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} does not parse ({error}). {_recovery(folder.parent, folder.name)}") from error


def _recovery(root: Path, broken: str) -> str:
    """How to recover from a damaged checkpoint: an older complete one, or starting over."""
    older = sorted((path.name for path in root.iterdir() if _CHECKPOINT_NAME.match(path.name) and path.name != broken
                    and (path / STATE_FILE).is_file() and (path / WEIGHTS_FILE).is_file()), reverse=True) \
        if root.is_dir() else []
    fallback = (f"write {older[0]!r} into {root / POINTER} to resume from the previous complete checkpoint, or "
                if older else "")
    return f"To recover: {fallback}start the run again with --restart to train it from epoch 0 (the old state is kept aside)."


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
    os.replace(run_dir / f".best-epoch{epoch:05d}.keras", run_dir / runfolder.BEST_FILE)
    _fsync_dir(run_dir)


def recover_best(run_dir: str | os.PathLike[str], state: TrainState | None) -> None:
    """After a kill: promote the staged best model that the checkpoint in force vouches for, drop others."""
    run_dir = Path(run_dir)
    for path in run_dir.iterdir():
        match = _STAGED_BEST.match(path.name)
        if not match:
            continue
        if state is not None and state.best_epoch == int(match.group(1)):
            os.replace(path, run_dir / runfolder.BEST_FILE)
        else:
            path.unlink()


def load_best(run_dir: str | os.PathLike[str]) -> "keras.Model":
    """The run's best model, uncompiled (for evaluation and prediction)."""
    import keras

    from harness.run import losses  # noqa: F401  (registers the custom objects a saved model names)

    path = Path(run_dir) / runfolder.BEST_FILE
    if not path.exists():
        raise HarnessError(f"no best model in {run_dir}: {runfolder.BEST_FILE} is missing (has the run finished an epoch?)")
    return keras.models.load_model(str(path), compile=False)


# --- metrics.jsonl ----------------------------------------------------------------------------------
def append_metrics(run_dir: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one epoch's row (one write call and an fsync, so a kill leaves at most a torn last line)."""
    path = Path(run_dir) / runfolder.METRICS_FILE
    line = io.jsonl_text([row])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(run_dir: str | os.PathLike[str], epochs_completed: int) -> list[dict[str, Any]]:
    """Make metrics.jsonl exactly one row per epoch 1..epochs_completed (the checkpoint in force's).

    Rows past the checkpoint (they would be repeated on resume), torn or unparsable lines (skipped
    and reported by `harness.io.read_jsonl`) and repeated epochs (the latest row wins) are dropped;
    the file is rewritten atomically whenever its text is not exactly those rows.
    """
    path = Path(run_dir) / runfolder.METRICS_FILE
    rows = io.read_jsonl(path)
    kept: dict[int, dict[str, Any]] = {}
    for row in rows:
        try:
            epoch = int(row.get("epoch", 0))
        except (TypeError, ValueError):
            continue
        if 1 <= epoch <= epochs_completed:
            kept[epoch] = row  # the latest row of an epoch wins
    ordered = [kept[epoch] for epoch in sorted(kept)]
    text = io.jsonl_text(ordered)
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") != text:
        io.atomic_write_text(path, text)
    return ordered


# --- helpers ----------------------------------------------------------------------------------------
def _checkpoint_number(name: str) -> int:
    match = _CHECKPOINT_NAME.match(name) or re.match(r"^\.tmp-ckpt-(\d+)-\d+$", name)
    return int(match.group(1)) if match else 0


def _remove_old(root: Path, keep: tuple[str | None, ...]) -> None:
    for path in root.iterdir():
        if path.name in keep or path.name == POINTER or path.name.startswith(f".{POINTER}."):
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
