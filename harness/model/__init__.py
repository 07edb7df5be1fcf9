"""Models: `build_model(config)` picks the network named by `config.model` (uncompiled).

Keras is imported inside the builders, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import CLASSES
from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from harness.config import Config


def build_model(config: "Config") -> "keras.Model":
    """The uncompiled model of `config`: input (H, W, 3) standardised images, output 4 sigmoid maps.

    With `presence_head`: outputs {"mask": 4 logit maps, "presence": 4 logits} (harness.model.heads).
    """
    height, width = config.image_hw
    input_shape = (height, width, 3)
    if config.model == "unet":
        from harness.model import unet

        return unet.build_unet(
            input_shape,
            filters=config.filters,
            depth=config.depth,
            dropout=config.dropout,
            batchnorm=config.batchnorm,
            classes=len(CLASSES),
            presence_head=config.presence_head,
        )
    if config.model == "sm_unet_resnet34":
        # The library model lives with the evaluation area (extra dependencies, imported only here).
        from harness.model import library

        return library.build_sm_unet_resnet34(
            input_shape, config.encoder_weights or None, presence_head=config.presence_head, presence_dropout=config.dropout
        )
    raise ConfigError(f"config key 'model' = {config.model!r} is not one of: unet, sm_unet_resnet34")


def describe_model(config: "Config") -> str:
    """One line for the run's summary: which network, and where its weights started from."""
    if config.model == "sm_unet_resnet34":
        from harness.model import library

        head = ", presence head" if config.presence_head else ""
        return f"sm_unet_resnet34 (segmentation_models UNet, ResNet34 encoder{head}); {library.describe_weights(config.encoder_weights)}"
    return (f"unet ({config.depth} levels, {config.filters} base filters, "
            f"batchnorm {'on' if config.batchnorm else 'off'}{', presence head' if config.presence_head else ''}); trained from scratch")
