"""One training run: `train(config, run_dir, run_id)` and the `python -m harness.train` main around it.

The run folder `<root>/<sweep_id or "single">/<run_id>/` is the run's whole state (see
docs/architecture.md and docs/training.md). Starting a run whose folder exists resumes it:

- the saved config.json wins; an explicitly given value that differs from it is a ConfigError naming
  the key (except RESUME_OVERRIDABLE keys, which a resume may change: `epochs` extends a run);
- model weights and optimizer state (step count, learning rate, moments) come from the checkpoint
  in force, the best score and the early-stopping / LR-on-plateau counters from its state.json;
- metrics.jsonl is cut back to the checkpoint's epoch, so every epoch appears exactly once.

Exactly one process trains in a run folder: `train` first takes the folder's lease
(harness/run/lease.py) and a second trainer exits at once with code 75, touching nothing. The lease
is renewed while training and checked before every metrics row and checkpoint.

At the end of every epoch the run appends its metrics row, logs TensorBoard / W&B (step = epoch),
stages best.keras if the monitored metric improved, writes the checkpoint (the commit point) and
then promotes best.keras. SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP and SIGQUIT set a flag that is
checked after every batch: the run saves a mid-epoch checkpoint at once (weights, optimizer and
dropout-seed state of that moment, the batch index and Keras's metric sums so far) and ends as
harness.run.stopping says: preempted (and `run.mark_preempting()` under W&B, exit 128 + the signal
number), or, for the W&B agent's SIGTERM, stopped (exit 0). A second signal of the same kind exits
at once (the checkpoint in force is always complete, so nothing is lost but the work since it). A
signal ignored when the run starts (nohup) stays ignored.

Exact resume: a run resumed from a mid-epoch checkpoint saved after batch k continues with batch
k + 1 of the same epoch in the same data order (the dataset is seeded by epoch). The first k steps
are skipped, not retrained (`skip_first_batches`), and the metric sums of those k batches are put
back, so the epoch's metrics.jsonl row covers all of its batches and its optimizer step count is
that of an uninterrupted run. A signal during validation saves the state after the epoch's last
training batch: the resume redoes only the validation. With `deterministic=true` on CPU, a run
interrupted any number of times ends with the weights of an uninterrupted one
(tests/run/test_exact_resume.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import signal
import socket
import string
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness import config as config_module
from harness import io
from harness import model as model_module
from harness.config import Config
from harness.errors import ConfigError, HarnessError
from harness.run import checkpoint as checkpoint_module
from harness.run import lease as lease_module
from harness.run import stopping, tracking

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
PAUSED_FILE = "paused.json"  # written while HARNESS_PAUSE_AT holds the run still (tests)
STOP_SIGNALS = stopping.SIGNALS
# Keys a resume may change: they do not change what the run computes, only how long or where from.
RESUME_OVERRIDABLE = ("epochs", "workers", "data_dir", "cache_dir")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits


class Preempted(Exception):
    """Raised inside fit() once a stop signal's checkpoint is written."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --- the run folder --------------------------------------------------------------------------------
def new_run_id() -> str:
    """8 lowercase letters/digits, like W&B's run ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def check_id(value: str, key: str) -> str:
    if not _RUN_ID.match(value):
        raise ConfigError(
            f"'{key}' = {value!r}: use letters, digits, '.', '_' and '-' only (it names a folder), "
            "starting with a letter or digit"
        )
    return value


def run_dir_for(root: str | os.PathLike[str] | None, sweep_id: str | None, run_id: str) -> Path:
    """`<root>/<sweep_id or "single">/<run_id>` with root from harness.io.runs_root."""
    return io.runs_root(root) / (sweep_id or "single") / run_id


def resolve_config(run_dir: Path, config: Config, explicit_keys: Iterable[str] | None = None) -> Config:
    """The config a run in `run_dir` uses: the saved one on resume, `config` for a new run.

    On resume each key in `explicit_keys` (all keys when None) must equal the saved value, except
    RESUME_OVERRIDABLE keys, whose new values are taken.
    """
    saved = io.read_json(Path(run_dir) / CONFIG_FILE)
    if saved is None:
        return config
    saved_values = {key: value for key, value in saved.items() if key in config_module.config_keys()}
    saved_config = config_module.from_dict(saved_values, source=str(Path(run_dir) / CONFIG_FILE))
    keys = config_module.config_keys() if explicit_keys is None else tuple(explicit_keys)
    updates = {}
    for key in keys:
        new_value, old_value = getattr(config, key), getattr(saved_config, key)
        if new_value == old_value:
            continue
        if key in RESUME_OVERRIDABLE:
            updates[key] = new_value
            continue
        raise ConfigError(
            f"config key '{key}' = {new_value!r} differs from {old_value!r} saved in {Path(run_dir) / CONFIG_FILE}: "
            f"a resumed run keeps its config (only {', '.join(RESUME_OVERRIDABLE)} may change); "
            "start a new run id to train with other values"
        )
    return dataclasses.replace(saved_config, **updates).validate() if updates else saved_config


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    return io.read_json(Path(run_dir) / SUMMARY_FILE)


# --- signals --------------------------------------------------------------------------------------
class StopSignals:
    """The signals of harness.run.stopping set a flag the training loop checks after each batch."""

    def __init__(self, names: Iterable[str] = STOP_SIGNALS):
        self.signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only lets the main thread handle signals; callers elsewhere handle their own
        for signum in self.signals:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # ignored by whoever started us (nohup, a SLURM job's USR2): keep it so
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signum:
            # Asked twice: stop now. The checkpoint in force is complete (written atomically).
            os._exit(128 + signum)
        if self.received is None:
            self.received = signum
            print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint and stopping", file=sys.stderr, flush=True)


# --- the training run -----------------------------------------------------------------------------
def train(
    config: Config,
    run_dir: str | os.PathLike[str],
    run_id: str,
    sweep_id: str | None = None,
    *,
    wandb_run: Any = None,
    verbose: int | None = None,
    restart: bool = False,
    lease: lease_module.Lease | None = None,
) -> dict[str, Any]:
    """Train (or resume, or just report) the run in `run_dir`; returns its summary.

    The summary's `status` is finished, preempted (then `exit_code` is 128 + signal) or failed (the
    exception is re-raised after the summary is written). `wandb_run` is a run already started by
    the caller (under a W&B sweep, where wandb.config had to be read first); else one is started here.
    First of all the run folder's lease is taken (harness.run.lease), unless the caller holds it
    already (`lease`, released by the caller): if another live process holds it, LeaseHeld (exit
    code 75) is raised before anything in the folder is touched. `restart` moves the old training
    state aside (checkpoint.discard) and trains from epoch 0.
    """
    run_dir = Path(run_dir)
    owned = lease is None
    if lease is None:
        try:
            lease = lease_module.Lease.acquire(run_dir)
        except lease_module.LeaseHeld:
            if wandb_run is not None:
                wandb_run.finish(exit_code=lease_module.EXIT_OWNED)
            raise
    if lease.broke:
        print(f"run {run_id}: {lease.broke}", file=sys.stderr, flush=True)
    lease.start_renewing()
    try:
        if restart:
            moved = checkpoint_module.discard(run_dir)
            if moved is not None:
                print(f"run {run_id}: --restart: its previous training state is kept in {moved}", flush=True)
        return _train_owned(config, run_dir, run_id, sweep_id, lease, wandb_run=wandb_run, verbose=verbose)
    finally:
        if owned:
            lease.release()


def _train_owned(config: Config, run_dir: Path, run_id: str, sweep_id: str | None, lease: lease_module.Lease, *,
                 wandb_run: Any, verbose: int | None) -> dict[str, Any]:
    config = resolve_config(run_dir, config.validate())
    run = _RunFiles(run_dir, config, run_id, sweep_id)

    state = checkpoint_module.load_state(run_dir)  # a damaged checkpoint stops the run here (CheckpointError)
    previous = read_summary(run_dir) or {}
    if state is not None and not state.mid_epoch and (state.epoch >= config.epochs or state.stopped_early):
        # Nothing left to train: report (and repair a summary that a kill left unfinished).
        if wandb_run is not None:
            wandb_run.finish(exit_code=0)
        if previous.get("status") != "finished" or previous.get("epochs") != config.epochs:
            checkpoint_module.recover_best(run_dir, state)
            run.write_summary("finished", state, checkpoint_module.truncate_metrics(run_dir, state.epoch))
        summary = read_summary(run_dir)
        print(f"run {run_id} already finished ({state.epoch} epochs): {run_dir / SUMMARY_FILE}")
        print(json.dumps(summary, indent=2, sort_keys=True))
        return summary

    io.atomic_write_json(run_dir / CONFIG_FILE, {**config.to_dict(), "run_id": run_id, "sweep_id": sweep_id})
    run.write_summary("running", state, io.read_jsonl(run_dir / checkpoint_module.METRICS_FILE))
    stop = StopSignals().install()
    tracker: tracking.Tracker | None = None
    run_callback = None
    try:
        from harness.data import dataset as dataset_module

        datasets = dataset_module.make_datasets(config)  # first: missing data fails before TensorFlow loads

        import keras

        from harness.model import build_model
        from harness.run import losses

        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        model = build_model(config)
        # The LR schedule (if any) spans epochs * batches per epoch; losses and metrics follow presence_head.
        model.compile(optimizer=make_optimizer(config, len(datasets.train)), **losses.compile_arguments(config))
        restored = checkpoint_module.restore_weights(run_dir, model)
        state = restored or checkpoint_module.TrainState(learning_rate=config.learning_rate)
        checkpoint_module.recover_best(run_dir, restored)
        rows = checkpoint_module.truncate_metrics(run_dir, state.epoch)
        # The data order of an epoch follows the dataset's epoch counter (fit() advances it once
        # before the first epoch and after each): setting it to the epochs done gives a resumed run
        # the batches an uninterrupted one would have had.
        datasets.train.set_epoch(state.epoch)
        if restored is not None:
            where = f"epoch {state.epoch + 1}"
            if state.mid_epoch:
                where += f" batch {state.batch + 1} (its first {state.batch} batches were trained before: skipped)"
            print(f"resuming run {run_id} at {where}, optimizer step {int(model.optimizer.iterations.numpy())}", flush=True)

        hparams = {key: value for key, value in config.to_dict().items() if key not in ("data_dir", "cache_dir")}
        tracker = tracking.Tracker(
            # The HParams trial is "<sweep>/<run_id>": unique across sweeps shown in one TensorBoard.
            tracking.TensorBoardLog(run_dir, hparams, f"{sweep_id or 'single'}/{run_id}", resume_epoch=state.epoch),
            wandb_run if wandb_run is not None else tracking.start_wandb(
                {**config.to_dict(), "run_id": run_id, "sweep_id": sweep_id}, run_dir, run_id,
                config.wandb_project, config.wandb_entity,
            ),
        )
        controllers = make_controllers(config, state)
        run_callback = make_run_callback(run, state, rows, tracker, stop, controllers, lease)
        if stop.received is not None:
            raise Preempted(stop.received)
        if state.mid_epoch:
            if state.metric_sums:
                _build_metrics(model, datasets.val[0])
            skip_first_batches(model, datasets.train, state.epoch, state.batch)
        model.fit(
            datasets.train,
            validation_data=datasets.val,
            epochs=config.epochs,
            initial_epoch=state.epoch,
            callbacks=[losses.metric_aliases(config), make_log_extras(config.monitor), *controllers, run_callback],
            shuffle=False,  # the dataset shuffles itself, per epoch, from the seed
            verbose=_verbosity(verbose),
        )
        state = run_callback.state
        summary = run.write_summary("finished", state, run_callback.rows)
        tracker.set_summary(_wandb_summary(summary))
        tracker.close(exit_code=0)
        return summary
    except Preempted as stopped:
        if run_callback is not None:
            state, rows = run_callback.state, run_callback.rows
        else:
            rows = io.read_jsonl(run_dir / checkpoint_module.METRICS_FILE)
        status, exit_code = stopping.meaning(stopped.signum), stopping.exit_code(stopped.signum)
        summary = run.write_summary(status, state, rows, signal=signal.Signals(stopped.signum).name, exit_code=exit_code)
        if tracker is None and wandb_run is not None:
            tracker = tracking.Tracker(None, wandb_run)
        if tracker is not None:
            if status == stopping.PREEMPT:
                tracker.mark_preempting()
            tracker.set_summary({"status": status})
            tracker.close(exit_code=exit_code)
        return summary
    except lease_module.LeaseLost:
        # Another process owns the folder now: write nothing more to it.
        if tracker is not None:
            tracker.close(exit_code=lease_module.EXIT_OWNED)
        elif wandb_run is not None:
            wandb_run.finish(exit_code=lease_module.EXIT_OWNED)
        raise
    except BaseException as error:
        status = "failed"
        try:
            state_now = checkpoint_module.load_state(run_dir) or checkpoint_module.TrainState()
        except checkpoint_module.CheckpointError:
            state_now = checkpoint_module.TrainState()
        run.write_summary(status, state_now, io.read_jsonl(run_dir / checkpoint_module.METRICS_FILE),
                          error=f"{type(error).__name__}: {error}",
                          exit_code=error.exit_code if isinstance(error, HarnessError) else 1)
        if tracker is not None:
            tracker.close(exit_code=1)
        elif wandb_run is not None:
            wandb_run.finish(exit_code=1)
        raise
    finally:
        stop.restore()


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

    def train_function(iterator: Any) -> Any:
        if remaining[0] > 0:
            remaining[0] -= 1
            next(iterator)  # the placeholder of a step trained before the interruption
            return model.get_metrics_result()  # the carried partial sums, for the progress bar
        return trained(iterator)

    model.train_function = train_function


def make_optimizer(config: Config, steps_per_epoch: int = 1):
    """The optimizer of `config` (harness.run.optim: AdamW, LR schedules)."""
    from harness.run import optim

    return optim.make_optimizer(config, steps_per_epoch)


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
    out = {}
    for callback in controllers:
        values = {}
        for key in callback.state_keys:
            value = getattr(callback, key, None)
            values[key] = float(value) if isinstance(value, float) or hasattr(value, "dtype") else value
        out[callback.state_name] = values
    return out


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class _RunFiles:
    """summary.json of one run."""

    def __init__(self, run_dir: Path, config: Config, run_id: str, sweep_id: str | None):
        self.run_dir = run_dir
        self.config = config
        self.run_id = run_id
        self.sweep_id = sweep_id

    def write_summary(self, status: str, state: checkpoint_module.TrainState | None, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        state = state or checkpoint_module.TrainState()
        summary = {
            "run_id": self.run_id,
            "sweep_id": self.sweep_id,
            "status": status,
            "epochs_completed": state.epoch,
            "epochs": self.config.epochs,
            "best": {"metric": self.config.monitor, "value": state.best_value, "epoch": state.best_epoch},
            "final": rows[-1] if rows else {},
            "iterations": state.iterations,
            "stopped_early": state.stopped_early,
            "model": model_module.describe_model(self.config),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        io.atomic_write_json(self.run_dir / SUMMARY_FILE, summary)
        return summary


def make_run_callback(run: _RunFiles, state: checkpoint_module.TrainState, rows: list[dict[str, Any]],
                      tracker: tracking.Tracker, stop: StopSignals, controllers: list,
                      lease: lease_module.Lease | None = None):
    """The Keras callback that keeps the run folder current (built lazily: Keras is imported here)."""
    base = _keras_callback_base()
    resume_epoch = state.epoch if state.mid_epoch else None  # 0-based epoch resumed mid-way, if any
    pause_at = _pause_point()

    class _RunCallback(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.state = state
            self.rows = list(rows)
            self._epoch = 0  # 1-based epoch in flight
            self._batches_done = 0
            self._floor = 0  # batches of this epoch done before a mid-epoch resume (skipped, not retrained)
            self._train_sums: list[Any] | None = None  # the metric accumulators at the end of training
            self._epoch_started = time.time()
            self._epoch_lr = state.learning_rate

        # Stop signals and the lease: checked after every training and validation batch.
        def on_train_batch_end(self, batch, logs=None):
            self._batches_done = max(batch + 1, self._floor)
            if pause_at == (self._epoch, "train", batch + 1) and batch + 1 > self._floor:
                self._pause(f"training batch {batch + 1}")
            self._check(in_validation=False)

        def on_test_begin(self, logs=None):
            # evaluate() resets the metrics next: keep the training accumulators for a stop in validation.
            self._train_sums = _metric_sums(self.model)

        def on_test_batch_end(self, batch, logs=None):
            if pause_at == (self._epoch, "val", batch + 1):
                self._pause(f"validation batch {batch + 1}")
            self._check(in_validation=True)

        def _pause(self, where: str) -> None:
            # HARNESS_PAUSE_AT: hold still at a known point until a stop signal (or a lost lease), so a
            # test can interrupt the run exactly there instead of in a lucky window.
            marker = run.run_dir / PAUSED_FILE
            io.atomic_write_json(marker, {"epoch": self._epoch, "where": where, "pid": os.getpid()})
            print(f"HARNESS_PAUSE_AT: paused after epoch {self._epoch}'s {where}; waiting for a stop signal",
                  file=sys.stderr, flush=True)
            try:
                while stop.received is None and not (lease is not None and lease.lost):
                    time.sleep(0.02)
            finally:
                marker.unlink(missing_ok=True)

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch + 1
            self._batches_done = 0
            self._floor = 0
            self._train_sums = None
            self._epoch_started = time.time()
            self._epoch_lr = _learning_rate(self.model)
            if epoch == resume_epoch:
                # fit() has just reset the metrics: put back the sums of the batches trained before.
                self._floor = state.batch
                _restore_metric_sums(self.model, state.metric_sums, run.run_dir)

        def on_epoch_end(self, epoch, logs=None):
            if lease is not None:
                lease.check()  # never write a row or a checkpoint into a folder that is no longer ours
            logs = dict(logs or {})
            number = epoch + 1
            config = run.config
            iterations = int(self.model.optimizer.iterations.numpy())
            scalars = {name: float(logs[name]) for name in _LOGGED if name in logs}
            scalars["lr"] = self._epoch_lr
            row = {
                "epoch": number, **scalars, "step": iterations,
                "seconds": round(time.time() - self._epoch_started, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            # 1. the metrics row (cut back on resume if the checkpoint below is not written)
            checkpoint_module.append_metrics(run.run_dir, row)
            self.rows.append(row)
            tracker.log_epoch(number, scalars)
            # 2. stage the best model, 3. commit the checkpoint, 4. promote the best model
            value = logs.get(config.monitor)
            improved = _improved(value, self.state.best_value, config.monitor_mode)
            if improved:
                checkpoint_module.stage_best(run.run_dir, self.model, number)
            stopped_early = bool(self.model.stop_training) and stop.received is None
            self.state = dataclasses.replace(
                self.state,
                epoch=number, batch=0, iterations=iterations,
                best_value=float(value) if improved else self.state.best_value,
                best_epoch=number if improved else self.state.best_epoch,
                learning_rate=_learning_rate(self.model),
                callbacks=_controller_state(controllers),
                stopped_early=stopped_early,
                reason="epoch_end",
                metric_sums=[],
                seed_states=checkpoint_module.seed_states(self.model),
            )
            checkpoint_module.save_checkpoint(run.run_dir, self.model, self.state)
            if improved:
                checkpoint_module.commit_best(run.run_dir, number)
            run.write_summary("running", self.state, self.rows)
            tracker.set_summary({f"best_{config.monitor}": self.state.best_value, "best_epoch": self.state.best_epoch})
            if stop.received is not None:
                raise Preempted(stop.received)  # this epoch's checkpoint is the state at the signal

        def _check(self, in_validation: bool) -> None:
            if lease is not None and lease.lost:
                lease.check()  # raises LeaseLost: stop at once, save nothing
            if stop.received is not None:
                self._stop_now(stop.received, in_validation)

        def _stop_now(self, signum: int, in_validation: bool) -> None:
            if lease is not None:
                lease.check()
            # The state at this moment: weights and optimizer after the last finished training batch,
            # and the metric sums over the batches so far (in validation: over all training batches,
            # as they were before evaluate() reset them; validation itself is redone on resume).
            sums = self._train_sums if in_validation and self._train_sums is not None else _metric_sums(self.model)
            self.state = dataclasses.replace(
                self.state,
                batch=self._batches_done,
                iterations=int(self.model.optimizer.iterations.numpy()),
                learning_rate=_learning_rate(self.model),
                callbacks=_controller_state(controllers),
                reason=f"signal:{signal.Signals(signum).name}" + (" in validation" if in_validation else ""),
                metric_sums=sums if self._batches_done else [],
                seed_states=checkpoint_module.seed_states(self.model),
            )
            started = time.perf_counter()
            checkpoint_module.save_checkpoint(run.run_dir, self.model, self.state)
            print(
                f"checkpoint saved in {time.perf_counter() - started:.2f} s at epoch {self.state.epoch + 1}, "
                f"batch {self._batches_done}{' (in validation)' if in_validation else ''}, step {self.state.iterations}",
                file=sys.stderr, flush=True,
            )
            raise Preempted(signum)

    return _RunCallback()


def _pause_point() -> tuple[int, str, int] | None:
    """HARNESS_PAUSE_AT=EPOCH:BATCH (after that training batch) or EPOCH:vBATCH (validation batch), 1-based."""
    value = os.environ.get("HARNESS_PAUSE_AT", "").strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+):(v?)(\d+)", value)
    if not match:
        raise ConfigError(f"HARNESS_PAUSE_AT={value!r}: use EPOCH:BATCH or EPOCH:vBATCH (1-based), e.g. 2:3")
    return int(match.group(1)), "val" if match.group(2) else "train", int(match.group(3))


def _build_metrics(model: Any, batch: Any) -> None:
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


_LOGGED = tuple(name for name in config_module.METRIC_NAMES if name not in ("lr", "epoch"))


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


def _verbosity(verbose: int | None) -> int:
    if verbose is not None:
        return verbose
    # A live progress bar on a terminal; one line per epoch in log files (SLURM, agents).
    return 1 if sys.stdout.isatty() else 2


def _wandb_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    best = summary.get("best") or {}
    return {f"best_{best.get('metric')}": best.get("value"), "best_epoch": best.get("epoch"), "status": summary.get("status")}


# --- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """`python -m harness.train [--config FILE] [--run_id ID] [--root DIR] [--sweep_id ID] [--restart] [--key=value ...]`.

    Exit code: 0 finished (or already finished, or stopped by the W&B agent), 2 bad config/arguments,
    128 + signal when preempted by a signal after saving a checkpoint, 75 when another live process
    holds the run folder's lease (nothing was touched; see harness/run/lease.py), 1 failed (also: a
    damaged checkpoint, named in the message with how to recover; `--restart` trains the run again
    from epoch 0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(main.__doc__)
        print("Config keys (see `harness config`):", ", ".join(config_module.config_keys()))
        return 0
    wandb_run = None
    held: lease_module.Lease | None = None
    try:
        overrides, control = config_module.parse_cli_args(argv)
        config_file = control.get("config")
        run_id = check_id(control.get("run_id") or os.environ.get("WANDB_RUN_ID") or new_run_id(), "run_id")
        sweep_id = control.get("sweep_id") or os.environ.get("HARNESS_SWEEP_ID") or os.environ.get("WANDB_SWEEP_ID") or None
        if sweep_id:
            check_id(sweep_id, "sweep_id")
        run_dir = run_dir_for(control.get("root"), sweep_id, run_id)
        explicit = set(overrides)
        if config_file:
            explicit.update(config_module.load_file(config_file))
        config = config_module.build_config(config_file, overrides)
        # The run folder's lease before anything writes into the folder (wandb.init does, below).
        held = lease_module.Lease.acquire(run_dir)
        if tracking.under_wandb_sweep():
            # The agent's parameters arrive as wandb.config: they win over the file and the arguments.
            wandb_run = tracking.start_wandb(config.to_dict(), run_dir, run_id, config.wandb_project, config.wandb_entity)
            if wandb_run is not None:
                sweep_values = {key: value for key, value in dict(wandb_run.config).items() if not key.startswith("_")
                                and key in config_module.config_keys()}
                config = config_module.build_config(config_file, overrides, sweep_values)
                explicit.update(sweep_values)
        config = resolve_config(run_dir, config, explicit)
        if wandb_run is not None:
            tracking.record_config(wandb_run, {**config.to_dict(), "run_id": run_id})
        print(f"run {run_id}: {run_dir}", flush=True)
        handed_over, wandb_run = wandb_run, None  # train() finishes it from here on
        restart = str(control.get("restart", "false")).lower() in ("true", "1", "yes")
        summary = train(config, run_dir, run_id, sweep_id, wandb_run=handed_over, restart=restart, lease=held)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        if wandb_run is not None:
            wandb_run.finish(exit_code=error.exit_code)
        return error.exit_code
    finally:
        if held is not None:
            held.release()
    if summary.get("status") in (stopping.PREEMPT, stopping.STOP):
        return int(summary.get("exit_code", 1))
    return 0 if summary.get("status") == "finished" else 1
