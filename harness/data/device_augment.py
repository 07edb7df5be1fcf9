"""The `flips` and `default` augmentations as batched tensor ops on the training device (`augment_device`).

The CPU path (harness.data.augment) runs albumentations per image in the loader's threads: at 384x576
that is the loader's bottleneck. Here the loader sends the batch unaugmented (uint8 images and masks)
and one call transforms the whole batch with `keras.ops.image.affine_transform` on the backend's
default device (the GPU when there is one), then standardises it there. The steps match the CPU
pipelines, with the same parameter ranges (see `augment.build`):

    flips    horizontal flip, vertical flip (each p=0.5)
    default  flips, then an affine shift/scale/rotate (p=0.5): shift an integer number of pixels up to
             6.25% of each side, scale x and y each in [0.9, 1.1], rotate in [-15, 15] degrees about
             the image centre

`flips` alone is two masked `keras.ops.flip`s (whole pixels, no resampling). For `default` each
sample's flips and affine become one 3x3 matrix, so a batch is two `affine_transform` calls: one
bilinear for the image, one nearest-neighbour for the four masks (packed as bits of one channel) with
the *same* matrices (masks stay exactly {0, 1} and aligned). Outside the source image both are filled
with 0, as the CPU path fills. Standardisation follows the augmentation (as on the CPU, where the zero
border counts in the statistics).

Why the parameters are drawn on the host with NumPy, per sample, from the loader's per-image seed
(`CloudDataset._sample_seed(seed, epoch, image)`), rather than with keras.random inside the compiled
call: the draws are then the same on every backend and device, do not depend on which loader thread
builds the batch, and the compiled function holds no random state, so a resumed run (set_epoch,
skip_batches) draws exactly the transforms an uninterrupted one draws. The parameters are 8 floats a
sample (2 flags for `flips`); the CPU does no pixel work after the uint8 read. (Under TensorFlow, Keras'
PyDataset adapter, `tf.data.Dataset.from_generator`, still copies each finished batch to the host and
`fit` copies it back; under JAX the batch stays on the device.)
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Callable, Sequence

import numpy as np

from harness.config import DEVICE_AUGMENTATIONS
from harness.errors import ConfigError

FLIP_PROBABILITY = 0.5
AFFINE_PROBABILITY = 0.5
SHIFT_FRACTION = 0.0625  # of the width (x) and of the height (y), each drawn on its own
SCALE_RANGE = (0.9, 1.1)  # x and y drawn on their own (albumentations' Affine, keep_ratio=False)
ROTATE_DEGREES = 15.0
EPSILON = 1e-6  # as harness.data.dataset.standardize


def check_name(name: str) -> None:
    """ConfigError unless `name` is an augmentation that runs on the device."""
    if name not in DEVICE_AUGMENTATIONS:  # harness.config.Config.validate says the same for a run's config
        raise ConfigError(
            f"augmentation {name!r} does not run on the device; expected one of {', '.join(DEVICE_AUGMENTATIONS)}"
        )


# --- parameters (host, NumPy) ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampleDraw:
    """One sample's random choices; the affine ones count only where `affine` fires (and augment is default)."""

    flip_x: bool
    flip_y: bool
    affine: bool
    shift_x: int  # pixels; albumentations rounds the shift to whole pixels (int(fraction * side)): so do we
    shift_y: int
    scale_x: float
    scale_y: float
    degrees: float


def draw(seed: int, height: int, width: int) -> SampleDraw:
    """The choices of one sample. Every number is drawn whether or not its step fires, so the stream of
    numbers is fixed per seed and `flips` and `default` flip the same samples."""
    rng = np.random.default_rng(seed)
    flip_x, flip_y, affine = rng.random(3) < (FLIP_PROBABILITY, FLIP_PROBABILITY, AFFINE_PROBABILITY)
    shift_x, shift_y = rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION, size=2)
    scale_x, scale_y = rng.uniform(*SCALE_RANGE, size=2)
    degrees = rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES)
    return SampleDraw(bool(flip_x), bool(flip_y), bool(affine), int(shift_x * width), int(shift_y * height),
                      float(scale_x), float(scale_y), float(degrees))


def sample_matrix(name: str, seed: int, height: int, width: int) -> np.ndarray:
    """The forward 3x3 matrix (source pixel -> output pixel, x right, y down) of one sample's transform."""
    check_name(name)
    choice = draw(seed, height, width)
    matrix = flip_matrix(choice.flip_x, choice.flip_y, height, width)
    if name == "default" and choice.affine:
        affine = affine_matrix(choice.shift_x, choice.shift_y, choice.scale_x, choice.scale_y, choice.degrees,
                               height, width)
        matrix = affine @ matrix  # flips first, then the affine, as in the CPU pipeline
    return matrix


def flip_matrix(horizontal: bool, vertical: bool, height: int, width: int) -> np.ndarray:
    """x -> width - 1 - x and/or y -> height - 1 - y: whole pixels onto whole pixels (exact)."""
    matrix = np.eye(3)
    if horizontal:
        matrix[0] = (-1.0, 0.0, width - 1.0)
    if vertical:
        matrix[1] = (0.0, -1.0, height - 1.0)
    return matrix


def affine_matrix(shift_x: float, shift_y: float, scale_x: float, scale_y: float, degrees: float,
                  height: int, width: int) -> np.ndarray:
    """Scale, rotate about the centre, then shift (albumentations' Affine, without shear)."""
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0  # pixel centres at integer coordinates
    radians = math.radians(degrees)
    cosine, sine = math.cos(radians), math.sin(radians)
    to_origin = np.array([[1.0, 0.0, -centre_x], [0.0, 1.0, -centre_y], [0.0, 0.0, 1.0]])
    scale = np.diag([scale_x, scale_y, 1.0])
    rotate = np.array([[cosine, sine, 0.0], [-sine, cosine, 0.0], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, centre_x + shift_x], [0.0, 1.0, centre_y + shift_y], [0.0, 0.0, 1.0]])
    return back @ rotate @ scale @ to_origin


def to_transform(matrix: np.ndarray) -> np.ndarray:
    """A forward 3x3 matrix as `affine_transform`'s 8 numbers, which map *output* pixels to source pixels."""
    inverse = np.linalg.inv(matrix)
    inverse = inverse / inverse[2, 2]
    # Whole-pixel moves (flips, integer shifts, identity) stay exact: snap float noise off integers.
    snapped = np.where(np.abs(inverse - np.round(inverse)) < 1e-9, np.round(inverse), inverse)
    return snapped.reshape(-1)[:8].astype(np.float32)


def draw_transforms(name: str, seeds: Sequence[int], height: int, width: int) -> np.ndarray:
    """(B, 8) float32 `affine_transform` rows, one per sample seed."""
    return np.stack([to_transform(sample_matrix(name, int(seed), height, width)) for seed in seeds])


# --- the batched transform (device) ----------------------------------------------------------------
def augment(name: str, images: Any, masks: Any, seeds: Sequence[int]) -> tuple[Any, Any]:
    """(x, y) on the backend's default device: x float32 (B, H, W, 3) augmented, then standardised per
    image; y float32 (B, H, W, 4) moved with it (values kept exactly). One sample seed per image.

    `images` and `masks` are uint8 (B, H, W, C) arrays. `flips` runs as two masked flips (whole pixels,
    no resampling: cheap on any device); `default` as one affine resampling per batch (`transform_batch`).
    The flips are the same samples' either way, since both come from `draw`.
    """
    check_name(name)
    height, width = images.shape[1:3]
    if name == "flips":
        draws = [draw(int(seed), height, width) for seed in seeds]
        flags = np.array([[choice.flip_x, choice.flip_y] for choice in draws], dtype=bool).reshape(-1, 2)
        return _compiled(_flip_and_standardise)(images, masks, flags)
    return _compiled(_transform_and_standardise)(images, masks, draw_transforms(name, seeds, height, width))


def flip_batch(images: Any, masks: Any, flags: Any) -> tuple[Any, Any]:
    """Flip sample i left-right where flags[i, 0] and upside down where flags[i, 1]; float32 out."""
    import keras

    for column, axis in ((0, 2), (1, 1)):
        chosen = keras.ops.reshape(keras.ops.convert_to_tensor(flags)[:, column], (-1, 1, 1, 1))
        images = keras.ops.where(chosen, keras.ops.flip(images, axis=axis), images)
        masks = keras.ops.where(chosen, keras.ops.flip(masks, axis=axis), masks)
    return keras.ops.cast(images, "float32"), keras.ops.cast(masks, "float32")


def transform_batch(images: Any, masks: Any, transforms: Any) -> tuple[Any, Any]:
    """Resample each sample through its `draw_transforms` row (no standardisation); float32 out.

    The masks ({0, 1}) travel as one channel, bit k holding mask k: nearest-neighbour sampling copies
    values without blending them, so the bits come back exact, and one channel costs a quarter of
    four (TensorFlow's kernel loops over channels).
    """
    import keras

    transforms = keras.ops.convert_to_tensor(transforms, dtype="float32")
    images = keras.ops.image.affine_transform(keras.ops.cast(images, "float32"), transforms,
                                              interpolation="bilinear", fill_mode="constant", fill_value=0)
    channels = masks.shape[-1]
    bits = keras.ops.convert_to_tensor([2.0**channel for channel in range(channels)], dtype="float32")
    packed = keras.ops.sum(keras.ops.cast(masks, "float32") * bits, axis=-1, keepdims=True)
    packed = keras.ops.image.affine_transform(packed, transforms, interpolation="nearest", fill_mode="constant",
                                              fill_value=0)
    masks = keras.ops.mod(keras.ops.floor(packed / bits), 2.0)
    return images, masks


def standardise(images: Any) -> Any:
    """harness.data.dataset.standardize as tensor ops: minus each image's mean, over its std + 1e-6."""
    import keras

    mean = keras.ops.mean(images, axis=(1, 2, 3), keepdims=True)
    std = keras.ops.std(images, axis=(1, 2, 3), keepdims=True)
    return (images - mean) / (std + EPSILON)


def _flip_and_standardise(images: Any, masks: Any, flags: Any) -> tuple[Any, Any]:
    images, masks = flip_batch(images, masks, flags)
    return standardise(images), masks


def _transform_and_standardise(images: Any, masks: Any, transforms: Any) -> tuple[Any, Any]:
    images, masks = transform_batch(images, masks, transforms)
    return standardise(images), masks


_COMPILED: dict[tuple[str, str], Callable[..., tuple[Any, Any]]] = {}
_LOCK = threading.Lock()


def _compiled(function: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
    """`function` compiled for the backend (a tf.function graph, a jax.jit), once per process; other
    backends run it eagerly. One trace per batch shape (the last, short batch adds one)."""
    import keras

    key = (keras.backend.backend(), function.__name__)
    with _LOCK:  # loader threads may ask at once: compile once
        if key not in _COMPILED:
            if key[0] == "tensorflow":
                import tensorflow as tf

                _COMPILED[key] = tf.function(function, reduce_retracing=True)
            elif key[0] == "jax":
                import jax

                _COMPILED[key] = jax.jit(function)
            else:
                _COMPILED[key] = function
        return _COMPILED[key]
