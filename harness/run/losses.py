"""Losses and metrics as Keras functions (the same math as the NumPy functions in harness.run.metrics).

Tensors are (N, H, W, C) with C = 4 classes; `y_pred` holds sigmoid probabilities.
- `dice_coef`: soft Dice over the whole batch (the reference's sweep metric; Keras averages it over
  the batches of an epoch and logs it as `dice_coef` / `val_dice_coef`).
- `kaggle_dice`: the challenge's metric, the Dice of thresholded masks for every (image, class) pair,
  where an empty prediction on an empty truth scores 1. The function returns one value per image
  (the mean over its classes), so Keras's running mean over an epoch equals the mean over all pairs.
- Losses: `bce`, `dice` (1 - soft Dice), `bce_dice`, `jaccard` (1 - soft IoU), `bce_jaccard`.

With `presence_head` the model has two outputs, "mask" (N, H, W, C) and "presence" (N, C), both
logits. `compile_arguments(config)` gives Keras the matching losses and metrics: the mask losses and
metrics above applied to sigmoid(mask logits) (`MaskLoss`, `on_logits`), the presence BCE on targets
derived from the mask itself (a class is present when its mask has any pixel: the dataset hands the
same mask to both outputs), and `presence_accuracy` / `presence_auc`. Keras prefixes a multi-output
model's metrics with the output name (`mask_dice_coef`); `metric_aliases` renames them back, so
`dice_coef`, `kaggle_dice` and their `val_` forms keep their names and meaning.

Everything is registered with `keras.saving.register_keras_serializable(package="harness")`, so a
saved compiled model loads once this module is imported (or with `custom_objects=CUSTOM_OBJECTS`).
Keras is imported when this module is, so import it only where TensorFlow is needed anyway.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

from harness.config import LOSSES, Config
from harness.errors import ConfigError
from harness.model import heads
from harness.run import optim

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


# --- the presence head (outputs "mask" and "presence", logits) -------------------------------------
MASK_OUTPUT = heads.MASK_OUTPUT
PRESENCE_OUTPUT = heads.PRESENCE_OUTPUT


def on_logits(function: Callable) -> Callable:
    """`function(y_true, probabilities)` as `f(y_true, logits)`: the sigmoid first (registered by name)."""
    name = f"{function.__name__}_on_logits"

    def wrapped(y_true, logits, **kwargs):
        return function(y_true, ops.sigmoid(ops.cast(logits, "float32")), **kwargs)

    wrapped.__name__ = wrapped.__qualname__ = name
    return keras.saving.register_keras_serializable(package="harness", name=name)(wrapped)


dice_coef_on_logits = on_logits(dice_coef)
kaggle_dice_on_logits = on_logits(kaggle_dice)


def presence_targets(y_true):
    """1.0 where a class's mask has any pixel > 0.5: (N, H, W, C) -> (N, C)."""
    return ops.cast(ops.greater(ops.max(ops.cast(y_true, "float32"), axis=(1, 2)), 0.5), "float32")


@keras.saving.register_keras_serializable(package="harness")
def presence_loss(y_true, presence_logits):
    """BCE of the presence logits (N, C) against the presence of the mask y_true (N, H, W, C)."""
    targets = presence_targets(y_true)
    return ops.mean(ops.binary_crossentropy(targets, ops.cast(presence_logits, "float32"), from_logits=True))


@keras.saving.register_keras_serializable(package="harness")
def presence_accuracy(y_true, presence_logits):
    """Share of (image, class) pairs whose presence logit has the sign of the truth, per image: (N,)."""
    targets = presence_targets(y_true)
    predicted = ops.cast(ops.greater(ops.cast(presence_logits, "float32"), 0.0), "float32")
    return ops.mean(ops.cast(ops.equal(predicted, targets), "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="harness")
class PresenceAUC(keras.metrics.AUC):
    """ROC AUC of the presence logits over every (image, class) pair, truth derived from the mask."""

    def __init__(self, name: str = "auc", **kwargs: Any) -> None:
        kwargs.setdefault("from_logits", True)
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(presence_targets(y_true), y_pred, sample_weight=sample_weight)


def soft_overlap_per_pair(y_true, y_pred, kind: str = "dice", smooth: float = SMOOTH):
    """Soft Dice or Jaccard of every (image, class) pair: (N, H, W, C) -> (N, C)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    intersection = ops.sum(y_true * y_pred, axis=(1, 2))
    total = ops.sum(y_true, axis=(1, 2)) + ops.sum(y_pred, axis=(1, 2))
    if kind == "dice":
        return (2.0 * intersection + smooth) / (total + smooth)
    return (intersection + smooth) / (total - intersection + smooth)


def present_pairs_overlap_loss(y_true, y_pred, kind: str = "dice"):
    """1 - mean soft overlap over the pairs whose class is present (0 when the batch has none)."""
    present = presence_targets(y_true)
    overlap = soft_overlap_per_pair(y_true, y_pred, kind)
    count = ops.sum(present)
    return ops.where(ops.greater(count, 0.0), 1.0 - ops.sum(overlap * present) / ops.maximum(count, 1.0), 0.0)


@keras.saving.register_keras_serializable(package="harness")
class MaskLoss(keras.losses.Loss):
    """A config's mask loss (`loss`, `loss_weighting`) on probabilities or, `from_logits`, on logits.

    weighting "none" is the loss function of LOSS_FUNCTIONS itself; "present" (bce_dice, bce_jaccard)
    is BCE over every pixel + (1 - the mean soft overlap over the present pairs).
    """

    def __init__(self, base: str = "bce_dice", weighting: str = "none", from_logits: bool = False,
                 name: str | None = None, **kwargs: Any) -> None:
        get_loss(base)  # ConfigError for an unknown name, now
        if weighting == "present" and base not in ("bce_dice", "bce_jaccard"):
            raise ConfigError(f"config key 'loss_weighting' = 'present' needs loss bce_dice or bce_jaccard, got {base!r}")
        super().__init__(name=name or f"{base}_loss", **kwargs)
        self.base, self.weighting, self.from_logits = base, weighting, bool(from_logits)

    def call(self, y_true, y_pred):
        probabilities = ops.sigmoid(ops.cast(y_pred, "float32")) if self.from_logits else y_pred
        if self.weighting == "present":
            kind = "dice" if self.base == "bce_dice" else "jaccard"
            return bce_loss(y_true, probabilities) + present_pairs_overlap_loss(y_true, probabilities, kind)
        return get_loss(self.base)(y_true, probabilities)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "base": self.base, "weighting": self.weighting, "from_logits": self.from_logits}


CUSTOM_OBJECTS.update({
    function.__name__: function
    for function in (dice_coef_on_logits, kaggle_dice_on_logits, presence_loss, presence_accuracy)
})
# optim.WarmupCosine too: a saved model's optimizer names it (registered when optim is imported).
CUSTOM_OBJECTS.update({"PresenceAUC": PresenceAUC, "MaskLoss": MaskLoss, "WarmupCosine": optim.WarmupCosine})


def compile_arguments(config: Config) -> dict[str, Any]:
    """`loss`, `metrics` (and `loss_weights`) for `model.compile` of the model `config` builds."""
    if not config.presence_head:
        loss = get_loss(config.loss) if config.loss_weighting == "none" else MaskLoss(config.loss, config.loss_weighting)
        return {"loss": loss, "metrics": metric_objects(config.threshold)}
    return {
        "loss": {MASK_OUTPUT: MaskLoss(config.loss, config.loss_weighting, from_logits=True), PRESENCE_OUTPUT: presence_loss},
        "loss_weights": {MASK_OUTPUT: 1.0, PRESENCE_OUTPUT: float(config.presence_loss_weight)},
        "metrics": {
            MASK_OUTPUT: [
                keras.metrics.MeanMetricWrapper(dice_coef_on_logits, name="dice_coef"),
                keras.metrics.MeanMetricWrapper(kaggle_dice_on_logits, name="kaggle_dice", threshold=config.threshold),
            ],
            PRESENCE_OUTPUT: [keras.metrics.MeanMetricWrapper(presence_accuracy, name="accuracy"), PresenceAUC()],
        },
    }


def metric_aliases(config: Config) -> keras.callbacks.Callback:
    """A callback that renames `mask_dice_coef` -> `dice_coef` (and kaggle_dice, val_ forms) in the epoch logs.

    It must come first among the callbacks: Keras hands the same logs dict to each callback in turn,
    so early stopping, LR-on-plateau and the run's own callback then see the usual names.
    """
    renames = {}
    if config.presence_head:
        for name in ("dice_coef", "kaggle_dice"):
            renames[f"{MASK_OUTPUT}_{name}"] = name
            renames[f"val_{MASK_OUTPUT}_{name}"] = f"val_{name}"

    class MetricAliases(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            for old, new in renames.items():
                if old in logs:
                    logs[new] = logs.pop(old)

    return MetricAliases()
