"""Live logging of a run: TensorBoard (scalars + HParams) in `<run_dir>/tb/` and W&B in `<run_dir>/wandb/`.

Both are logged with step = the 1-based epoch, the same numbering as metrics.jsonl, so a resumed run
stays one continuous line. On resume the TensorBoard log first gets a "session start" marker at the
resumed epoch, which tells TensorBoard to drop any points at or after that epoch left by the killed
process (at most the epoch whose checkpoint was not written).

W&B's mode follows `WANDB_MODE` (online, offline, disabled). When it is unset the run logs offline
(no account needed; `wandb sync <run_dir>/wandb/offline-run-*` uploads later), except under
`wandb agent` (`WANDB_SWEEP_ID` set) or with `WANDB_API_KEY` set, where W&B's own default applies.
Under a W&B sweep the run does not pass its own id to `wandb.init` (the agent chose it) and the sweep's
parameters arrive as `wandb.config`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

TB_DIR = "tb"
# The one key of the device record (harness.run.device.describe) in the W&B config and the HParams.
DEVICE_KEY = "device"


def wandb_mode() -> str | None:
    """The mode for wandb.init: $WANDB_MODE, else offline unless an agent or an API key is around."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode
    if os.environ.get("WANDB_SWEEP_ID") or os.environ.get("WANDB_API_KEY"):
        return None  # W&B decides (online with the account configured)
    return "offline"


def under_wandb_sweep() -> bool:
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def start_wandb(config: Mapping[str, Any], run_dir: Path, run_id: str, project: str, entity: str = ""):
    """wandb.init for this run (None when W&B is disabled: nothing is imported then)."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    import wandb

    # wandb.init uses `dir` as the git root too: it must exist (else a "git root" warning).
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    sweep = under_wandb_sweep()
    arguments: dict[str, Any] = {
        "dir": str(run_dir),
        # Under a sweep the agent set the project and entity; W&B warns about (and ignores) others.
        "project": None if sweep else project or None,
        "entity": None if sweep else entity or None,
        # Where it ran, shown next to the parameters (not a training key: a resume may move GPUs).
        "config": {**dict(config), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
        "group": os.environ.get("WANDB_RUN_GROUP") or None,
        "mode": mode,
    }
    if not sweep:
        # Same id + resume="allow": a resumed run continues its W&B run. Under a sweep the agent set
        # the id (WANDB_RUN_ID) and wandb.init must not be given one.
        arguments.update(id=run_id, name=run_id, resume="allow")
    return wandb.init(**{key: value for key, value in arguments.items() if value is not None})


def sweep_parameter_keys(environ: Mapping[str, str] | None = None) -> set[str]:
    """The keys `wandb agent` set for this run (its WANDB_SWEEP_PARAM_PATH file); empty outside one.

    W&B locks them in wandb.config: updating them again only prints "Config item ... was locked".
    """
    import yaml

    environ = os.environ if environ is None else environ
    path = environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path or not environ.get("WANDB_SWEEP_ID"):
        return set()
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return set()
    return {key for key in values if key != "wandb_version"} if isinstance(values, dict) else set()


def record_config(wandb_run: Any, values: Mapping[str, Any]) -> None:
    """Put the run's resolved config into wandb.config, leaving the sweep's own (locked) keys alone."""
    locked = sweep_parameter_keys()
    wandb_run.config.update({key: value for key, value in values.items() if key not in locked},
                            allow_val_change=True)


class TensorBoardLog:
    """Scalars and the HParams summary of one run, written with TensorBoard's own event writer."""

    def __init__(self, run_dir: Path, hparams: Mapping[str, Any], trial_id: str, resume_epoch: int = 0):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.hparams import api as hparams_api
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event_pb2 = event_pb2
        self.log_dir = Path(run_dir) / TB_DIR
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_a_later_second(self.log_dir)
        self._writer = EventFileWriter(str(self.log_dir))
        if resume_epoch > 0:
            # TensorBoard drops earlier points with step >= this one: the epoch the killed process
            # may have logged but did not checkpoint is replaced by the resumed one.
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=resume_epoch + 1, session_log=start))
        values = {key: _hparam_value(value) for key, value in hparams.items()}
        summary = hparams_api.hparams_pb(values, trial_id=trial_id)
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
        self._writer.flush()

    def log(self, epoch: int, scalars: Mapping[str, float]) -> None:
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=name, simple_value=float(value)) for name, value in scalars.items()]
        )
        self._writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=epoch, summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Tracker:
    """TensorBoard + W&B behind one small interface used by the training loop."""

    def __init__(self, tensorboard: TensorBoardLog | None, wandb_run: Any | None):
        self.tensorboard = tensorboard
        self.wandb_run = wandb_run

    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None:
        if self.tensorboard is not None:
            self.tensorboard.log(epoch, scalars)
        if self.wandb_run is not None:
            # commit=True: with an explicit step W&B otherwise holds the row until the next step is
            # logged, so each epoch would reach W&B (live, or a live sync) one epoch late.
            self.wandb_run.log(dict(scalars), step=epoch, commit=True)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        if self.wandb_run is not None:
            for key, value in values.items():
                self.wandb_run.summary[key] = value

    def mark_preempting(self) -> None:
        """Tell W&B this run will come back (a sweep puts it back in its queue with the same id)."""
        if self.wandb_run is not None and hasattr(self.wandb_run, "mark_preempting"):
            self.wandb_run.mark_preempting()

    def close(self, exit_code: int = 0) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def _wait_for_a_later_second(log_dir: Path) -> None:
    """Return once the clock's second is past that of every event file in `log_dir`.

    TensorBoard reads a folder's event files in name order, and a name is
    `events.out.tfevents.<second>.<host>.<pid>.<counter>`: a second writer within the same second (a
    resumed run in the same process, as tests do) may sort first (counter 10 before 9, as text), and
    the points it replaces would then be read as the newer ones.
    """
    stamps = [path.name.split(".")[3] for path in log_dir.glob("events.out.tfevents.*")]
    seconds = [int(stamp) for stamp in stamps if stamp.isdigit()]
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


def flat_values(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """`{"backend": "tensorflow"}` -> `{"device.backend": "tensorflow"}`: TensorBoard's HParams take one
    level of scalars (lists and None become text there, `_hparam_value`)."""
    return {f"{prefix}.{key}": value for key, value in values.items()}


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
