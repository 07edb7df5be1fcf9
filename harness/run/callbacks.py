"""The Keras callbacks of a training run, and the counters that make its resume exact.

- `make_run_callback`: the callback that keeps the run folder current. At the end of every epoch it
  appends the metrics row, logs TensorBoard / W&B (step = epoch), stages best.keras if the monitored
  metric improved, writes the checkpoint (the commit point), then promotes best.keras. After every
  batch it checks the run's stop flag (harness.run.stopping) and its lease: on a signal it saves a
  mid-epoch checkpoint at once (weights, optimizer and dropout-seed state of that moment, the batch
  index and Keras's metric sums so far) and raises `stopping.Preempted`; on a lost lease it stops
  without writing anything.
- `make_controllers`: early stopping and LR-on-plateau, their counters saved in and restored from the
  checkpoint's state; `make_log_extras`: `lr` / `epoch` in the epoch's logs when `monitor` names them.
- `skip_first_batches` and `build_metrics`: a run resumed from a mid-epoch checkpoint saved after batch
  k goes on with batch k + 1 of the same epoch in the same data order, without training the first k
  again, and with the metric sums of those k batches put back (so the epoch's row covers them all).

Keras is imported inside the functions that need it: importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from harness import config as config_module
from harness import io, processes, runfolder
from harness.config import Config
from harness.errors import ConfigError, HarnessError
from harness.run import checkpoint as checkpoint_module
from harness.run import lease as lease_module
from harness.run import tracking
from harness.run.stopping import Preempted
from harness.run.summary import RunSummary

# The metrics of a metrics.jsonl row, besides `lr` (the epoch's own) and `epoch` (the row's number).
_LOGGED = tuple(name for name in config_module.METRIC_NAMES if name not in ("lr", "epoch"))


# --- the run callback -----------------------------------------------------------------------------
def make_run_callback(summary: RunSummary, state: checkpoint_module.TrainState, rows: list[dict[str, Any]],
                      tracker: tracking.Tracker, stop: processes.SignalFlag, controllers: list,
                      lease: lease_module.Lease | None = None) -> Any:
    """The Keras callback that keeps the run folder of `summary` current (a RunFolderCallback)."""
    return _keras_run_callback()(summary, state, rows, tracker, stop, controllers, lease)


@functools.cache
def _keras_run_callback() -> type:
    """RunFolderCallback as a keras.callbacks.Callback (built on first use: Keras is imported here)."""
    import keras

    class KerasRunFolderCallback(RunFolderCallback, keras.callbacks.Callback):
        pass

    return KerasRunFolderCallback


class RunFolderCallback:
    """What the run callback does, written against Keras's callback hooks (see `make_run_callback`).

    `state` is the TrainState of the checkpoint in force (updated at every save), `rows` the metrics
    rows so far: train() reads both when fit() returns or raises.
    """

    def __init__(self, summary: RunSummary, state: checkpoint_module.TrainState, rows: list[dict[str, Any]],
                 tracker: tracking.Tracker, stop: processes.SignalFlag, controllers: list,
                 lease: lease_module.Lease | None = None) -> None:
        super().__init__()
        self.summary = summary
        self.state = state
        self.rows = list(rows)
        self.tracker = tracker
        self.stop = stop
        self.controllers = controllers
        self.lease = lease
        self._resume_epoch = state.epoch if state.mid_epoch else None  # 0-based epoch resumed mid-way, if any
        self._pause_at = _pause_point()
        self._epoch = 0  # 1-based epoch in flight
        self._batches_done = 0
        self._floor = 0  # batches of this epoch done before a mid-epoch resume (skipped, not retrained)
        self._train_sums: list[Any] | None = None  # the metric accumulators at the end of training
        self._epoch_started = time.time()
        self._epoch_lr = state.learning_rate

    # Stop signals and the lease: checked after every training and validation batch.
    def on_train_batch_end(self, batch, logs=None):
        self._batches_done = max(batch + 1, self._floor)
        if self._pause_at == (self._epoch, "train", batch + 1) and batch + 1 > self._floor:
            self._pause(f"training batch {batch + 1}")
        self._check(in_validation=False)

    def on_test_begin(self, logs=None):
        # evaluate() resets the metrics next: keep the training accumulators for a stop in validation.
        self._train_sums = _metric_sums(self.model)

    def on_test_batch_end(self, batch, logs=None):
        if self._pause_at == (self._epoch, "val", batch + 1):
            self._pause(f"validation batch {batch + 1}")
        self._check(in_validation=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._batches_done = 0
        self._floor = 0
        self._train_sums = None
        self._epoch_started = time.time()
        self._epoch_lr = _learning_rate(self.model)
        if epoch == self._resume_epoch:
            # fit() has just reset the metrics: put back the sums of the batches trained before.
            self._floor = self.state.batch
            _restore_metric_sums(self.model, self.state.metric_sums, self.summary.run_dir)

    def on_epoch_end(self, epoch, logs=None):
        if self.lease is not None:
            self.lease.check()  # never write a row or a checkpoint into a folder that is no longer ours
        logs = dict(logs or {})
        number = epoch + 1
        # 1. the metrics row (cut back on resume if the checkpoint below is not written)
        self._append_row(number, logs)
        # 2. stage the best model, 3. commit the checkpoint, 4. promote the best model
        self._commit_epoch(number, logs.get(self.summary.config.monitor))
        if self.stop.first is not None:
            raise Preempted(self.stop.first)  # this epoch's checkpoint is the state at the signal

    def _append_row(self, number: int, logs: Mapping[str, Any]) -> None:
        scalars = {name: float(logs[name]) for name in _LOGGED if name in logs}
        scalars["lr"] = self._epoch_lr
        row = {
            "epoch": number, **scalars, "step": int(self.model.optimizer.iterations.numpy()),
            "seconds": round(time.time() - self._epoch_started, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        checkpoint_module.append_metrics(self.summary.run_dir, row)
        self.rows.append(row)
        self.tracker.log_epoch(number, scalars)

    def _commit_epoch(self, number: int, value: Any) -> None:
        config, run_dir = self.summary.config, self.summary.run_dir
        improved = _improved(value, self.state.best_value, config.monitor_mode)
        stopped_early = bool(self.model.stop_training) and self.stop.first is None
        if improved:
            checkpoint_module.stage_best(run_dir, self.model, number)
        self.state = dataclasses.replace(
            self.state,
            epoch=number, batch=0, iterations=int(self.model.optimizer.iterations.numpy()),
            best_value=float(value) if improved else self.state.best_value,
            best_epoch=number if improved else self.state.best_epoch,
            learning_rate=_learning_rate(self.model),
            callbacks=_controller_state(self.controllers),
            stopped_early=stopped_early,
            reason="epoch_end",
            metric_sums=[],
            seed_states=checkpoint_module.seed_states(self.model),
        )
        checkpoint_module.save_checkpoint(run_dir, self.model, self.state)
        if improved:
            checkpoint_module.commit_best(run_dir, number)
        self.summary.write("running", self.state, self.rows)
        self.tracker.set_summary({f"best_{config.monitor}": self.state.best_value, "best_epoch": self.state.best_epoch})

    def _pause(self, where: str) -> None:
        # HARNESS_PAUSE_AT: hold still at a known point until a stop signal (or a lost lease), so a
        # test can interrupt the run exactly there instead of in a lucky window.
        marker = self.summary.run_dir / runfolder.PAUSED_FILE
        io.atomic_write_json(marker, {"epoch": self._epoch, "where": where, "pid": os.getpid()})
        print(f"HARNESS_PAUSE_AT: paused after epoch {self._epoch}'s {where}; waiting for a stop signal",
              file=sys.stderr, flush=True)
        try:
            while self.stop.first is None and not (self.lease is not None and self.lease.lost):
                time.sleep(0.02)
        finally:
            marker.unlink(missing_ok=True)

    def _check(self, in_validation: bool) -> None:
        if self.lease is not None and self.lease.lost:
            self.lease.check()  # raises LeaseLost: stop at once, save nothing
        if self.stop.first is not None:
            self._stop_now(self.stop.first, in_validation)

    def _stop_now(self, signum: int, in_validation: bool) -> None:
        if self.lease is not None:
            self.lease.check()
        # The state at this moment: weights and optimizer after the last finished training batch,
        # and the metric sums over the batches so far (in validation: over all training batches,
        # as they were before evaluate() reset them; validation itself is redone on resume).
        sums = self._train_sums if in_validation and self._train_sums is not None else _metric_sums(self.model)
        self.state = dataclasses.replace(
            self.state,
            batch=self._batches_done,
            iterations=int(self.model.optimizer.iterations.numpy()),
            learning_rate=_learning_rate(self.model),
            callbacks=_controller_state(self.controllers),
            reason=f"signal:{signal.Signals(signum).name}" + (" in validation" if in_validation else ""),
            metric_sums=sums if self._batches_done else [],
            seed_states=checkpoint_module.seed_states(self.model),
        )
        started = time.perf_counter()
        checkpoint_module.save_checkpoint(self.summary.run_dir, self.model, self.state)
        print(
            f"checkpoint saved in {time.perf_counter() - started:.2f} s at epoch {self.state.epoch + 1}, "
            f"batch {self._batches_done}{' (in validation)' if in_validation else ''}, step {self.state.iterations}",
            file=sys.stderr, flush=True,
        )
        raise Preempted(signum)


def _pause_point() -> tuple[int, str, int] | None:
    """HARNESS_PAUSE_AT=EPOCH:BATCH (after that training batch) or EPOCH:vBATCH (validation batch), 1-based."""
    value = os.environ.get("HARNESS_PAUSE_AT", "").strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+):(v?)(\d+)", value)
    if not match:
        raise ConfigError(f"HARNESS_PAUSE_AT={value!r}: use EPOCH:BATCH or EPOCH:vBATCH (1-based), e.g. 2:3")
    return int(match.group(1)), "val" if match.group(2) else "train", int(match.group(3))


def _improved(value: Any, best: float | None, mode: str) -> bool:
    if value is None:
        return False
    value = float(value)
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _learning_rate(model: Any) -> float:
    import keras

    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# --- exact resume ---------------------------------------------------------------------------------
def skip_first_batches(model: Any, dataset: Any, epoch: int, count: int) -> None:
    """Make the next fit() skip the first `count` training steps of 0-based `epoch` (exact resume).

    The checkpoint holds the weights and optimizer state after those steps, so they are not trained
    again: fit() still walks its step counter through them (callbacks and the progress bar see the
    true batch numbers, and the data order of the epoch is untouched), but each of those steps only
    takes the dataset's placeholder batch (`skip_batches`, no image work) off the iterator and applies
    no update. The first real step is batch `count + 1`, as it would have been without the interruption.
    """
    if int(getattr(model, "steps_per_execution", 1) or 1) != 1:
        raise HarnessError("exact resume needs steps_per_execution = 1 (one batch per train_function call)")
    dataset.skip_batches(epoch, count)
    model.make_train_function()
    trained = model.train_function
    remaining = [count]

    from harness.run import device

    def train_function(*arguments: Any) -> Any:  # (iterator), or JAX's (state, iterator)
        if remaining[0] > 0:
            remaining[0] -= 1
            next(arguments[-1])  # the placeholder of a step trained before the interruption
            return device.skipped_step_result(model, arguments)  # the carried partial sums, for the progress bar
        return trained(*arguments)

    model.train_function = train_function


def build_metrics(model: Any, batch: Any) -> None:
    """Create the compiled metrics' variables now (Keras defers them to the first traced step), so the
    carried sums of a mid-epoch checkpoint can be put into them before that step."""
    x, y = batch[0], batch[1]
    if hasattr(model, "_symbolic_build"):  # Keras 3: symbolic, nothing is computed or changed
        model._symbolic_build(data_batch=(x, y))
    else:  # pragma: no cover - another Keras: a test step changes no weights, seeds or statistics
        model.evaluate(x, y, verbose=0)


def _metric_sums(model: Any) -> list[Any]:
    """Keras's metric accumulators (totals, counts, ...) as JSON-ready lists, in model.metrics_variables order."""
    import keras

    return [keras.ops.convert_to_numpy(variable).tolist() for variable in model.metrics_variables]


def _restore_metric_sums(model: Any, sums: list[Any], run_dir: Path) -> None:
    import numpy as np

    variables = model.metrics_variables
    if not sums:
        return
    if len(sums) != len(variables):
        raise checkpoint_module.CheckpointError(
            f"the checkpoint in {checkpoint_module.checkpoint_root(run_dir)} holds {len(sums)} metric accumulators, "
            f"this model has {len(variables)}: resume with the code that wrote it, or --restart"
        )
    for variable, value in zip(variables, sums):
        variable.assign(np.asarray(value, dtype=variable.dtype).reshape(variable.shape))


# --- early stopping, LR on plateau and the extra logs they may monitor -----------------------------
def make_controllers(config: Config, state: checkpoint_module.TrainState) -> list:
    """Early stopping and LR-on-plateau (patience 0: off), their counters restored from `state`."""
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        state_keys = ("wait", "best", "best_epoch", "stopped_epoch")

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            _apply(self, state.callbacks.get("early_stopping", {}))

    class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
        state_keys = ("wait", "best", "cooldown_counter")

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            _apply(self, state.callbacks.get("reduce_lr", {}))

    controllers = []
    if config.early_stopping_patience > 0:
        callback = ResumableEarlyStopping(
            monitor=config.monitor, mode=config.monitor_mode, patience=config.early_stopping_patience, verbose=1
        )
        callback.state_name = "early_stopping"
        controllers.append(callback)
    if config.lr_patience > 0:
        callback = ResumableReduceLROnPlateau(
            monitor=config.monitor, mode=config.monitor_mode, patience=config.lr_patience,
            factor=config.lr_factor, verbose=1,
        )
        callback.state_name = "reduce_lr"
        controllers.append(callback)
    return controllers


def make_log_extras(monitor: str):
    """A callback that adds `lr` or `epoch` to the epoch's logs when `monitor` names one of them.

    Keras's logs only hold the compiled metrics; early stopping and LR-on-plateau read `monitor`
    from them, and Keras hands the same dict to every callback after this one.
    """
    import keras

    class LogExtras(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            if monitor == "lr":
                logs["lr"] = _learning_rate(self.model)
            elif monitor == "epoch":
                logs["epoch"] = epoch + 1

    return LogExtras()


def _apply(callback: Any, saved: Mapping[str, Any]) -> None:
    for key in callback.state_keys:
        if key in saved:
            setattr(callback, key, saved[key])


def _controller_state(controllers: list) -> dict[str, dict[str, Any]]:
    """The counters of `controllers` (make_controllers), JSON-ready, for the checkpoint's state."""
    out = {}
    for callback in controllers:
        values = {}
        for key in callback.state_keys:
            value = getattr(callback, key, None)
            values[key] = float(value) if isinstance(value, float) or hasattr(value, "dtype") else value
        out[callback.state_name] = values
    return out
