"""Losses and metrics as Keras functions (the same math as the NumPy functions in harness.run.metrics).

Tensors are (N, H, W, C) with C = 4 classes; `y_pred` holds sigmoid probabilities.
- `dice_coef`: soft Dice over the whole batch (the reference's sweep metric; Keras averages it over
  the batches of an epoch and logs it as `dice_coef` / `val_dice_coef`).
- `kaggle_dice`: the challenge's metric, the Dice of thresholded masks for every (image, class) pair,
  where an empty prediction on an empty truth scores 1. The function returns one value per image
  (the mean over its classes), so Keras's running mean over an epoch equals the mean over all pairs.
- Losses: `bce`, `dice` (1 - soft Dice), `bce_dice`, `jaccard` (1 - soft IoU), `bce_jaccard`.

Everything is registered with `keras.saving.register_keras_serializable(package="harness")`, so a
saved compiled model loads once this module is imported (or with `custom_objects=CUSTOM_OBJECTS`).
Keras is imported when this module is, so import it only where TensorFlow is needed anyway.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import ops

from harness.config import LOSSES
from harness.errors import ConfigError

SMOOTH = 1.0


@keras.saving.register_keras_serializable(package="harness")
def dice_coef(y_true, y_pred, smooth: float = SMOOTH):
    """Soft Dice over the whole batch: (2 sum(t p) + smooth) / (sum(t) + sum(p) + smooth)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    intersection = ops.sum(y_true * y_pred)
    return (2.0 * intersection + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


def kaggle_dice_pairs(y_true, y_pred, threshold: float = 0.5):
    """Dice of the thresholded prediction for every (image, class) pair: (N, H, W, C) -> (N, C)."""
    truth = ops.cast(ops.greater(ops.cast(y_true, "float32"), 0.5), "float32")
    pred = ops.cast(ops.greater(ops.cast(y_pred, "float32"), threshold), "float32")
    intersection = ops.sum(truth * pred, axis=(1, 2))
    total = ops.sum(truth, axis=(1, 2)) + ops.sum(pred, axis=(1, 2))
    # An empty prediction on an empty truth is a perfect answer (the challenge's rule).
    return ops.where(ops.equal(total, 0.0), 1.0, 2.0 * intersection / ops.maximum(total, 1.0))


@keras.saving.register_keras_serializable(package="harness")
def kaggle_dice(y_true, y_pred, threshold: float = 0.5):
    """The challenge metric per image (mean over classes): (N, H, W, C) -> (N,)."""
    return ops.mean(kaggle_dice_pairs(y_true, y_pred, threshold), axis=-1)


@keras.saving.register_keras_serializable(package="harness")
def jaccard_coef(y_true, y_pred, smooth: float = SMOOTH):
    """Soft IoU over the whole batch: (sum(t p) + smooth) / (sum(t) + sum(p) - sum(t p) + smooth)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    intersection = ops.sum(y_true * y_pred)
    union = ops.sum(y_true) + ops.sum(y_pred) - intersection
    return (intersection + smooth) / (union + smooth)


@keras.saving.register_keras_serializable(package="harness")
def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over every pixel and class."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))


@keras.saving.register_keras_serializable(package="harness")
def dice_loss(y_true, y_pred):
    return 1.0 - dice_coef(y_true, y_pred)


@keras.saving.register_keras_serializable(package="harness")
def bce_dice_loss(y_true, y_pred):
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="harness")
def jaccard_loss(y_true, y_pred):
    return 1.0 - jaccard_coef(y_true, y_pred)


@keras.saving.register_keras_serializable(package="harness")
def bce_jaccard_loss(y_true, y_pred):
    return bce_loss(y_true, y_pred) + jaccard_loss(y_true, y_pred)


# Config name -> loss function; the keys are harness.config.LOSSES (a test keeps them in step).
LOSS_FUNCTIONS: dict[str, Callable] = {
    "bce": bce_loss,
    "dice": dice_loss,
    "bce_dice": bce_dice_loss,
    "jaccard": jaccard_loss,
    "bce_jaccard": bce_jaccard_loss,
}

CUSTOM_OBJECTS: dict[str, Callable] = {
    function.__name__: function
    for function in (dice_coef, kaggle_dice, jaccard_coef, bce_loss, dice_loss, bce_dice_loss, jaccard_loss, bce_jaccard_loss)
}


def get_loss(name: str) -> Callable:
    """The loss function of a config's `loss` value."""
    try:
        return LOSS_FUNCTIONS[name]
    except KeyError:
        raise ConfigError(f"config key 'loss' = {name!r} is not one of: {', '.join(LOSSES)}") from None


def metric_objects(threshold: float = 0.5) -> list[keras.metrics.Metric]:
    """Fresh metric objects that Keras logs as `dice_coef` and `kaggle_dice` (plus `val_` versions)."""
    return [
        keras.metrics.MeanMetricWrapper(dice_coef, name="dice_coef"),
        keras.metrics.MeanMetricWrapper(kaggle_dice, name="kaggle_dice", threshold=threshold),
    ]
