"""Optimizers and learning-rate schedules of a run (`optimizer`, `weight_decay`, `lr_schedule`, `warmup_epochs`).

A schedule is a function of the optimizer's step count (`optimizer.iterations`), which the checkpoint
saves and restores with the weights: a resumed run continues the schedule where it stopped, mid-epoch
too, with nothing else to save. Its length is `epochs * steps per epoch` of the config in force, so
extending `epochs` on resume stretches the remaining schedule (the LR at the resume step is recomputed
from the new length).

- constant: `learning_rate` throughout (LR-on-plateau, `lr_patience`, may lower it).
- cosine: linear warmup from 0 over `warmup_epochs`, then cosine decay from `learning_rate` to 0.
- onecycle: the one-cycle policy's defaults (as PyTorch's OneCycleLR, cosine annealing): warmup over the
  first 30% of the steps from learning_rate / 25, then cosine decay to learning_rate / 25e4.

`schedule_value` is the pure NumPy math; `WarmupCosine` is its Keras wrapper (registered, so a saved
best.keras loads). Keras is imported with this module: import it only where TensorFlow is needed anyway.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import keras
import numpy as np
from keras import ops

from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from harness.config import Config

ONECYCLE_WARMUP = 0.3  # share of the steps spent warming up
ONECYCLE_START_DIVISOR = 25.0  # start at learning_rate / 25
ONECYCLE_END_DIVISOR = 25.0 * 1e4  # end at learning_rate / 25e4 (PyTorch: initial / 1e4)


def schedule_parameters(config: "Config", steps_per_epoch: int) -> dict[str, float]:
    """peak, total_steps, warmup_steps, start, end of the config's schedule (steps are optimizer steps)."""
    total = max(int(config.epochs) * int(steps_per_epoch), 1)
    peak = float(config.learning_rate)
    if config.lr_schedule == "cosine":
        warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
        return {"peak": peak, "total_steps": total, "warmup_steps": warmup, "start": 0.0, "end": 0.0}
    if config.lr_schedule == "onecycle":
        return {"peak": peak, "total_steps": total, "warmup_steps": int(round(ONECYCLE_WARMUP * total)),
                "start": peak / ONECYCLE_START_DIVISOR, "end": peak / ONECYCLE_END_DIVISOR}
    raise ConfigError(f"config key 'lr_schedule' = {config.lr_schedule!r} has no step schedule")


def schedule_value(step: np.ndarray | float, peak: float, total_steps: int, warmup_steps: int,
                   start: float = 0.0, end: float = 0.0) -> np.ndarray:
    """LR before optimizer step `step` (0-based): linear start -> peak over warmup_steps, cosine peak -> end after.

    Steps past total_steps stay at `end`.
    """
    step = np.asarray(step, dtype=np.float64)
    warmup = float(warmup_steps)
    decay = max(float(total_steps) - warmup, 1.0)
    rising = start + (peak - start) * step / max(warmup, 1.0)
    progress = np.clip((step - warmup) / decay, 0.0, 1.0)
    falling = end + (peak - end) * 0.5 * (1.0 + np.cos(math.pi * progress))
    return np.where(step < warmup, rising, falling)


def make_schedule(config: "Config", steps_per_epoch: int):
    """The Keras schedule of `config` (None for lr_schedule constant)."""
    if config.lr_schedule == "constant":
        return None
    return WarmupCosine(**schedule_parameters(config, steps_per_epoch))


def make_optimizer(config: "Config", steps_per_epoch: int = 1):
    """The Keras optimizer of `config`, its LR a schedule over `epochs * steps_per_epoch` steps unless constant."""
    optimizers: dict[str, Callable[..., Any]] = {
        "adam": keras.optimizers.Adam,
        "adamw": lambda learning_rate: keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay),
        "nadam": keras.optimizers.Nadam,
        "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9),
        "rmsprop": keras.optimizers.RMSprop,
    }
    if config.optimizer not in optimizers:
        raise ConfigError(f"config key 'optimizer' = {config.optimizer!r} is not one of: {', '.join(optimizers)}")
    schedule = make_schedule(config, steps_per_epoch)
    return optimizers[config.optimizer](learning_rate=config.learning_rate if schedule is None else schedule)


@keras.saving.register_keras_serializable(package="harness")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Keras form of `schedule_value` (the same math on the optimizer's step)."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, start: float = 0.0, end: float = 0.0):
        self.peak, self.total_steps, self.warmup_steps = float(peak), int(total_steps), int(warmup_steps)
        self.start, self.end = float(start), float(end)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        decay = max(float(self.total_steps) - warmup, 1.0)
        rising = self.start + (self.peak - self.start) * step / max(warmup, 1.0)
        progress = ops.clip((step - warmup) / decay, 0.0, 1.0)
        falling = self.end + (self.peak - self.end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(ops.less(step, warmup), rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "start": self.start, "end": self.end}
