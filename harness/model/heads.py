"""The optional presence head: one logit per class saying whether the class is anywhere in the image.

The challenge scores an empty prediction on an empty truth as 1, so deciding whether a class is present
matters as much as its mask; the top solutions put a classifier beside the decoder. Here it reads the
deepest features (the UNet's bottleneck, the ResNet34 encoder's last block): global average and global
max pooling side by side, dropout, one dense layer. It adds 2 * channels * classes + classes weights.

A model with the head has two outputs, both logits, named "mask" (N, H, W, classes) and "presence"
(N, classes); a model without it keeps its single output of sigmoid probabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import keras

MASK_OUTPUT = "mask"
PRESENCE_OUTPUT = "presence"


def presence_logits(features, classes: int, dropout: float = 0.2):
    """(N, h, w, channels) features -> (N, classes) presence logits, float32 under any precision policy."""
    import keras

    average = keras.layers.GlobalAveragePooling2D(name="presence_avgpool")(features)
    maximum = keras.layers.GlobalMaxPooling2D(name="presence_maxpool")(features)
    pooled = keras.layers.Concatenate(name="presence_concat")([average, maximum])
    pooled = keras.layers.Dropout(dropout, name="presence_drop")(pooled)
    return keras.layers.Dense(classes, dtype="float32", name=PRESENCE_OUTPUT)(pooled)


def two_output_model(inputs, mask_logits, features, classes: int, dropout: float, name: str) -> "keras.Model":
    """The model with outputs {"mask": mask_logits, "presence": presence head on `features`}.

    `mask_logits` must come from a layer named "mask": Keras names a model's outputs after their layers.
    """
    import keras

    return keras.Model(
        inputs, {MASK_OUTPUT: mask_logits, PRESENCE_OUTPUT: presence_logits(features, classes, dropout)}, name=name
    )


def has_presence_head(model: "keras.Model") -> bool:
    """True for a model built with the head (its outputs are named "mask" and "presence")."""
    return set(getattr(model, "output_names", None) or ()) == {MASK_OUTPUT, PRESENCE_OUTPUT}
