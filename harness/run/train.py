"""One training run: `train(config, run_dir, run_id)` (its command line is harness.run.main).

The run folder `<root>/<sweep_id or "single">/<run_id>/` is the run's whole state (harness.runfolder,
docs/architecture.md and docs/training.md). Starting a run whose folder exists resumes it:

- the saved config.json wins (harness.run.identity.resolve_config: only `epochs`, `workers`,
  `data_dir` and `cache_dir` may change);
- model weights and optimizer state (step count, learning rate, moments) come from the checkpoint
  in force, the best score and the early-stopping / LR-on-plateau counters from its state.json;
- metrics.jsonl is cut back to the checkpoint's epoch, so every epoch appears exactly once.

The device comes first (harness.run.device): a run handed a GPU (CUDA_VISIBLE_DEVICES) that its
framework cannot see exits 2 before anything is written to its folder, unless `allow_cpu`; then the
launcher's GPU memory share is applied, before any GPU is touched. Once the model is compiled the
attempt's device record (`summary.device`) goes into summary.json, the W&B config (`device`) and the
TensorBoard HParams (`device.<key>`): docs/gpu.md.

Exactly one process trains in a run folder: `train` first takes the folder's lease
(harness/run/lease.py) and a second trainer exits at once with code 75, touching nothing. The lease
is renewed while training and checked before every metrics row and checkpoint.

While fit() runs, the run callback (harness.run.callbacks) keeps the folder current after every epoch.
SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP and SIGQUIT set a flag (harness.run.stopping.stop_flag) that
is checked after every batch: the run saves a mid-epoch checkpoint at once and ends as
harness.run.stopping says: preempted (and `run.mark_preempting()` under W&B, exit 128 + the signal
number), or, for the W&B agent's SIGTERM, stopped (exit 0). A second signal of the same kind exits
at once (the checkpoint in force is always complete, so nothing is lost but the work since it). A
signal ignored when the run starts (nohup) stays ignored.

Exact resume: a run resumed from a mid-epoch checkpoint saved after batch k continues with batch
k + 1 of the same epoch in the same data order (the dataset is seeded by epoch). The first k steps
are skipped, not retrained (`callbacks.skip_first_batches`), and the metric sums of those k batches
are put back, so the epoch's metrics.jsonl row covers all of its batches and its optimizer step count
is that of an uninterrupted run. A signal during validation saves the state after the epoch's last
training batch: the resume redoes only the validation. With `deterministic=true` on CPU, a run
interrupted any number of times ends with the weights of an uninterrupted one
(tests/run/test_exact_resume.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from harness import io, processes, runfolder
from harness.config import Config
from harness.errors import DeviceError, HarnessError
from harness.run import callbacks as run_callbacks
from harness.run import checkpoint as checkpoint_module
from harness.run import identity
from harness.run import lease as lease_module
from harness.run import stopping, tracking
from harness.run.summary import RunSummary, device_line, wandb_summary


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


@dataclasses.dataclass
class _Attempt:
    """What this start of the run has set up so far: how it ends (finished, preempted, failed) depends on it."""

    state: checkpoint_module.TrainState | None  # the checkpoint's, once restored
    wandb_run: Any  # handed over by the caller, or None
    tracker: tracking.Tracker | None = None
    callback: Any = None  # the run callback (harness.run.callbacks), once made
    memory_share_applied: float | None = None  # the GPU memory fraction device.apply_memory_share set

    def close(self, exit_code: int) -> None:
        """Close the tracking (TensorBoard and W&B), or just the caller's W&B run before there was any."""
        if self.tracker is not None:
            self.tracker.close(exit_code=exit_code)
        elif self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)


def _train_owned(config: Config, run_dir: Path, run_id: str, sweep_id: str | None, lease: lease_module.Lease, *,
                 wandb_run: Any, verbose: int | None) -> dict[str, Any]:
    config = identity.resolve_config(run_dir, config.validate())
    summary = RunSummary(run_dir, config, run_id, sweep_id)
    state = checkpoint_module.load_state(run_dir)  # a damaged checkpoint stops the run here (CheckpointError)
    if state is not None and not state.mid_epoch and (state.epoch >= config.epochs or state.stopped_early):
        return _report_finished(summary, state, wandb_run)

    # Before anything is written to the folder (a resumed run stays as it was: resumable) and before any
    # GPU is touched (the memory share can only be set on a GPU TensorFlow has not initialised).
    memory_share_applied = _prepare_device(config, run_dir, wandb_run)
    io.atomic_write_json(run_dir / runfolder.CONFIG_FILE, {**config.to_dict(), "run_id": run_id, "sweep_id": sweep_id})
    summary.write("running", state, io.read_jsonl(run_dir / runfolder.METRICS_FILE))
    stop = stopping.stop_flag().install()
    attempt = _Attempt(state, wandb_run, memory_share_applied=memory_share_applied)
    try:
        return _fit(attempt, summary, stop, lease, verbose)
    except stopping.Preempted as stopped:
        return _end_preempted(attempt, summary, stopped.signum)
    except lease_module.LeaseLost:
        attempt.close(lease_module.EXIT_OWNED)  # another process owns the folder now: write nothing more to it
        raise
    except BaseException as error:
        _record_failure(summary, error)
        attempt.close(1)
        raise
    finally:
        stop.restore()


def _report_finished(summary: RunSummary, state: checkpoint_module.TrainState, wandb_run: Any) -> dict[str, Any]:
    """Nothing left to train: report (and repair a summary that a kill left unfinished)."""
    run_dir = summary.run_dir
    previous = runfolder.read_summary(run_dir) or {}
    if wandb_run is not None:
        wandb_run.finish(exit_code=0)
    if previous.get("status") != "finished" or previous.get("epochs") != summary.config.epochs:
        checkpoint_module.recover_best(run_dir, state)
        summary.write("finished", state, checkpoint_module.truncate_metrics(run_dir, state.epoch))
    result = runfolder.read_summary(run_dir)
    print(f"run {summary.run_id} already finished ({state.epoch} epochs): {run_dir / runfolder.SUMMARY_FILE}")
    print(json.dumps(result, indent=2, sort_keys=True))
    return result


def _fit(attempt: _Attempt, summary: RunSummary, stop: processes.SignalFlag, lease: lease_module.Lease,
         verbose: int | None) -> dict[str, Any]:
    """Build, restore and train the model up to `epochs`; the summary of the finished run."""
    from harness.data import dataset as dataset_module

    config = summary.config
    datasets = dataset_module.make_datasets(config)  # first: missing data fails before TensorFlow loads
    from harness.run import losses

    model = _compiled_model(config, len(datasets.train), summary.run_dir)
    summary.device = _device_record(config, model, attempt.memory_share_applied)
    print(f"run {summary.run_id}: {device_line(summary.device)}", flush=True)
    attempt.state, rows = _restore(summary, model, datasets.train)
    summary.write("running", attempt.state, rows)  # the device at once: `harness status` shows it from the start
    attempt.tracker = _start_tracking(summary, attempt.state, attempt.wandb_run)
    controllers = run_callbacks.make_controllers(config, attempt.state)
    attempt.callback = run_callbacks.make_run_callback(summary, attempt.state, rows, attempt.tracker, stop,
                                                       controllers, lease)
    if stop.first is not None:
        raise stopping.Preempted(stop.first)
    if attempt.state.mid_epoch:
        if attempt.state.metric_sums:
            run_callbacks.build_metrics(model, datasets.val[0])
        run_callbacks.skip_first_batches(model, datasets.train, attempt.state.epoch, attempt.state.batch)
    model.fit(
        datasets.train,
        validation_data=datasets.val,
        epochs=config.epochs,
        initial_epoch=attempt.state.epoch,
        callbacks=[losses.metric_aliases(config), run_callbacks.make_log_extras(config.monitor), *controllers,
                   attempt.callback],
        shuffle=False,  # the dataset shuffles itself, per epoch, from the seed
        verbose=_verbosity(verbose),
    )
    result = summary.write("finished", attempt.callback.state, attempt.callback.rows)
    attempt.tracker.set_summary(wandb_summary(result))
    attempt.tracker.close(exit_code=0)
    return result


def _prepare_device(config: Config, run_dir: Path, wandb_run: Any) -> float | None:
    """device.check (DeviceError, exit 2: a GPU named that the framework cannot see, unless allow_cpu), the
    backend's switches (determinism, JAX's compilation cache: XLA_FLAGS must be set before JAX starts, which
    the memory share may do), then the launcher's GPU memory share; returns the fraction applied (None: none,
    or no GPU)."""
    from harness.run import device

    try:
        device.check(config)
    except DeviceError as error:
        if wandb_run is not None:  # the caller's W&B run (under a sweep) ends with the run's exit code
            wandb_run.finish(exit_code=error.exit_code)
        raise
    device.prepare_backend(config, run_dir)
    return device.apply_memory_share()


def _device_record(config: Config, model: Any, memory_share_applied: float | None) -> dict[str, Any]:
    """What this attempt trains on (device.describe, after compile: XLA's resolved switch), plus whether it
    fell back to the CPU although handed a GPU (allow_cpu) and the memory share actually applied."""
    from harness.run import device

    record = device.describe(config, model=model)
    record["allow_cpu"] = config.allow_cpu
    record["cpu_fallback"] = record["device"] == "CPU" and bool(record["visible_gpus"])
    record["memory_share_applied"] = memory_share_applied
    return record


def _compiled_model(config: Config, steps_per_epoch: int, run_dir: Path | None = None) -> Any:
    """The model of `config`, seeded and compiled (the LR schedule, if any, spans epochs * steps_per_epoch)."""
    import keras

    from harness.model import build_model
    from harness.run import device, losses, optim

    # Before the first op: op determinism, JAX's compilation cache (shared by the runs under run_dir's root);
    # a run did it already in _prepare_device (it is idempotent), other callers (benchmarks) get it here.
    device.prepare_backend(config, run_dir)
    keras.utils.set_random_seed(config.seed)
    device.apply_precision(config)  # before the model is built: a layer takes the policy in force when made
    model = build_model(config)
    # Losses and metrics follow presence_head; jit_compile and steps_per_execution are the config's.
    model.compile(optimizer=optim.make_optimizer(config, steps_per_epoch), **losses.compile_arguments(config),
                  **device.compile_options(config))
    return model


def _restore(summary: RunSummary, model: Any, train_data: Any) -> tuple[checkpoint_module.TrainState, list[dict[str, Any]]]:
    """Load the checkpoint in force into `model`; its state and the metrics rows up to it."""
    run_dir, config = summary.run_dir, summary.config
    restored = checkpoint_module.restore_weights(run_dir, model)
    state = restored or checkpoint_module.TrainState(learning_rate=config.learning_rate)
    checkpoint_module.recover_best(run_dir, restored)
    rows = checkpoint_module.truncate_metrics(run_dir, state.epoch)
    # The data order of an epoch follows the dataset's epoch counter (fit() advances it once
    # before the first epoch and after each): setting it to the epochs done gives a resumed run
    # the batches an uninterrupted one would have had.
    train_data.set_epoch(state.epoch)
    if restored is not None:
        where = f"epoch {state.epoch + 1}"
        if state.mid_epoch:
            where += f" batch {state.batch + 1} (its first {state.batch} batches were trained before: skipped)"
        print(f"resuming run {summary.run_id} at {where}, optimizer step {int(model.optimizer.iterations.numpy())}",
              flush=True)
    return state, rows


def _start_tracking(summary: RunSummary, state: checkpoint_module.TrainState, wandb_run: Any) -> tracking.Tracker:
    """TensorBoard, and W&B (the caller's run, or one started here)."""
    config, run_id, sweep_id = summary.config, summary.run_id, summary.sweep_id
    hparams = {key: value for key, value in config.to_dict().items() if key not in ("data_dir", "cache_dir")}
    # HParams take scalars only: the device record as device.<key> columns.
    hparams.update(tracking.flat_values(tracking.DEVICE_KEY, summary.device or {}))
    if wandb_run is None:
        wandb_run = tracking.start_wandb({**config.to_dict(), "run_id": run_id, "sweep_id": sweep_id}, summary.run_dir,
                                         run_id, config.wandb_project, config.wandb_entity)
    if wandb_run is not None and summary.device is not None:
        # One nested `device` entry (W&B shows device.backend, ...); a resumed run may be on another device.
        tracking.record_config(wandb_run, {tracking.DEVICE_KEY: summary.device})
    return tracking.Tracker(
        # The HParams trial is "<sweep>/<run_id>": unique across sweeps shown in one TensorBoard.
        tracking.TensorBoardLog(summary.run_dir, hparams, f"{sweep_id or runfolder.SINGLE}/{run_id}",
                                resume_epoch=state.epoch),
        wandb_run,
    )


def _end_preempted(attempt: _Attempt, summary: RunSummary, signum: int) -> dict[str, Any]:
    """A stop signal's checkpoint is written: record preempted or stopped (harness.run.stopping)."""
    if attempt.callback is not None:
        state, rows = attempt.callback.state, attempt.callback.rows
    else:
        state, rows = attempt.state, io.read_jsonl(summary.run_dir / runfolder.METRICS_FILE)
    status, exit_code = stopping.meaning(signum), stopping.exit_code(signum)
    result = summary.write(status, state, rows, signal=signal.Signals(signum).name, exit_code=exit_code)
    tracker = attempt.tracker
    if tracker is None and attempt.wandb_run is not None:
        tracker = tracking.Tracker(None, attempt.wandb_run)
    if tracker is not None:
        if status == stopping.PREEMPT:
            tracker.mark_preempting()
        tracker.set_summary({"status": status})
        tracker.close(exit_code=exit_code)
    return result


def _record_failure(summary: RunSummary, error: BaseException) -> None:
    """summary.json says `failed`, with the error and the exit code it leads to."""
    try:
        state_now = checkpoint_module.load_state(summary.run_dir) or checkpoint_module.TrainState()
    except checkpoint_module.CheckpointError:
        state_now = checkpoint_module.TrainState()
    summary.write("failed", state_now, io.read_jsonl(summary.run_dir / runfolder.METRICS_FILE),
                  error=f"{type(error).__name__}: {error}",
                  exit_code=error.exit_code if isinstance(error, HarnessError) else 1)


def _verbosity(verbose: int | None) -> int:
    if verbose is not None:
        return verbose
    # A live progress bar on a terminal; one line per epoch in log files (SLURM, agents).
    return 1 if sys.stdout.isatty() else 2
