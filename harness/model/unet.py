"""The reference UNet, built with the Keras 3 Functional API.

Down the encoder, each level is a conv block (two 3x3 convolutions, each followed by batch
normalisation and then ReLU, he_normal init) whose output is kept as the skip, then 2x2 max
pooling and dropout. The bottleneck is one more conv block. Up the decoder, each level up-samples
(UpSampling2D), applies a 2x2 convolution, concatenates the skip of the same level, applies dropout
and a conv block. A 1x1 convolution with a sigmoid gives one probability map per class.

Layer names are predictable so tests, plots and the evaluation can find them:
`enc{level}_conv{i}`, `enc{level}_bn{i}`, `enc{level}_relu{i}`, `enc{level}_pool`, `enc{level}_drop`,
`bottleneck_conv{i}`, `bottleneck_bn{i}`, `bottleneck_relu{i}`, `dec{level}_up`, `dec{level}_upconv`,
`dec{level}_concat`, `dec{level}_drop`, `dec{level}_conv{i}`, `dec{level}_bn{i}`, `dec{level}_relu{i}`
and `output`. Levels count from 1 (full resolution) to `depth`; `i` is 1 or 2.

With `presence_head` (harness.model.heads) the 1x1 convolution gives logits and is named `mask`, and
the head on the bottleneck gives the `presence` logits: the model's two outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import keras


def check_input_shape(input_shape: tuple[int, int, int], depth: int) -> None:
    """Raise ConfigError unless height and width are divisible by 2**depth."""
    if len(input_shape) != 3:
        raise ConfigError(f"model input shape must be (height, width, channels), got {tuple(input_shape)}")
    height, width, _ = input_shape
    step = 2**depth
    if height % step or width % step:
        raise ConfigError(
            f"config key 'image_size' = '{height}x{width}': height and width must be divisible by "
            f"2**depth = {step} (depth={depth}) for the UNet"
        )


def build_unet(
    input_shape: tuple[int, int, int],
    filters: int = 8,
    depth: int = 4,
    dropout: float = 0.2,
    batchnorm: bool = True,
    classes: int = 4,
    name: str = "unet",
    presence_head: bool = False,
) -> "keras.Model":
    """The UNet of the reference report (uncompiled): (H, W, C) float32 -> (H, W, classes) sigmoid.

    With `presence_head`: outputs {"mask": (H, W, classes) logits, "presence": (classes,) logits}.
    """
    import keras

    from harness.model import heads

    if depth < 1:
        raise ConfigError(f"config key 'depth' must be >= 1, got {depth}")
    if filters < 1:
        raise ConfigError(f"config key 'filters' must be >= 1, got {filters}")
    check_input_shape(tuple(input_shape), depth)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    tensor = inputs
    skips = []
    for level in range(1, depth + 1):
        level_filters = filters * 2 ** (level - 1)
        tensor = _conv_block(tensor, level_filters, batchnorm, prefix=f"enc{level}")
        skips.append(tensor)
        tensor = keras.layers.MaxPooling2D(pool_size=2, name=f"enc{level}_pool")(tensor)
        tensor = keras.layers.Dropout(dropout, name=f"enc{level}_drop")(tensor)

    tensor = _conv_block(tensor, filters * 2**depth, batchnorm, prefix="bottleneck")
    bottleneck = tensor

    for level in range(depth, 0, -1):
        level_filters = filters * 2 ** (level - 1)
        tensor = keras.layers.UpSampling2D(size=2, name=f"dec{level}_up")(tensor)
        tensor = keras.layers.Conv2D(
            level_filters, 2, padding="same", activation="relu", kernel_initializer="he_normal",
            name=f"dec{level}_upconv",
        )(tensor)
        tensor = keras.layers.Concatenate(axis=-1, name=f"dec{level}_concat")([tensor, skips[level - 1]])
        tensor = keras.layers.Dropout(dropout, name=f"dec{level}_drop")(tensor)
        tensor = _conv_block(tensor, level_filters, batchnorm, prefix=f"dec{level}")

    # float32 output even under a mixed-precision policy: the losses and metrics want it.
    if presence_head:
        mask_logits = keras.layers.Conv2D(classes, 1, dtype="float32", name=heads.MASK_OUTPUT)(tensor)
        return heads.two_output_model(inputs, mask_logits, bottleneck, classes, dropout, name)
    outputs = keras.layers.Conv2D(classes, 1, activation="sigmoid", dtype="float32", name="output")(tensor)
    return keras.Model(inputs, outputs, name=name)


def _conv_block(tensor, filters: int, batchnorm: bool, prefix: str):
    """Two 3x3 conv -> (BN) -> ReLU. Without BN the convolutions keep their bias."""
    import keras

    for index in (1, 2):
        tensor = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=not batchnorm, kernel_initializer="he_normal",
            name=f"{prefix}_conv{index}",
        )(tensor)
        if batchnorm:
            tensor = keras.layers.BatchNormalization(name=f"{prefix}_bn{index}")(tensor)
        tensor = keras.layers.Activation("relu", name=f"{prefix}_relu{index}")(tensor)
    return tensor
