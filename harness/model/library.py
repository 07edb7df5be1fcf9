"""The library model of the reference comparison: segmentation_models' UNet with a ResNet34 encoder.

Installed by the optional extra `pip install -e '.[library]'` (segmentation-models 1.0.1 and its
pinned helpers; it runs under Keras 3 through `SM_FRAMEWORK=tf.keras`, so only on the TensorFlow backend:
`require_tensorflow_backend`). Nothing is ever downloaded:
the encoder starts from ImageNet weights only when `weights_path` names a local file (the published
`resnet34_imagenet_1000_no_top.h5` of `classification_models`), otherwise from scratch. The run's
summary says which (`describe_weights`).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import keras

BACKBONE = "resnet34"
# The encoder halves the resolution five times, so both sides must be multiples of 2**5.
DOWNSAMPLING = 32
INSTALL_HINT = "pip install -e '.[library]'"


def describe_weights(weights_path: str | os.PathLike[str] | None = "") -> str:
    """One line for the run's summary: where the encoder's initial weights came from."""
    if not weights_path:
        return "encoder_weights: none (trained from scratch)"
    return f"encoder_weights: {Path(weights_path).expanduser().absolute()} (ImageNet, local file)"


# The encoder's last layer (ResNet34's final batch norm + ReLU, 1/32 resolution, 512 channels): the
# presence head reads it.
ENCODER_OUTPUT = "relu1"


def build_sm_unet_resnet34(
    input_shape: tuple[int, int, int], weights_path: str | os.PathLike[str] | None = "", presence_head: bool = False,
    presence_dropout: float = 0.2,
) -> "keras.Model":
    """segmentation_models 1.0.1 `Unet('resnet34')`: 4 sigmoid classes, uncompiled.

    With `presence_head`: the decoder ends in logits (`final_conv`, no sigmoid) and the model's outputs
    are {"mask": those logits, "presence": the head on the encoder's last layer}.

    `weights_path` empty or None: random initialisation. Otherwise a local HDF5 file of ImageNet encoder
    weights, loaded by layer name; a file that matches no encoder layer is an error, not a silent
    from-scratch run.
    """
    height, width = int(input_shape[0]), int(input_shape[1])
    if height % DOWNSAMPLING or width % DOWNSAMPLING:
        raise ConfigError(
            f"config key 'image_size' = '{height}x{width}': model sm_unet_resnet34 needs both sides divisible by "
            f"{DOWNSAMPLING}; for example {max(height // DOWNSAMPLING, 1) * DOWNSAMPLING}x"
            f"{max(width // DOWNSAMPLING, 1) * DOWNSAMPLING}"
        )
    weights_file = _check_weights_file(weights_path)
    segmentation_models = import_segmentation_models()
    # encoder_weights=None always: the library's 'imagenet' option downloads, which we never do.
    model = segmentation_models.Unet(
        BACKBONE,
        input_shape=(height, width, int(input_shape[2])),
        classes=4,
        activation="linear",  # the output layer is ours, below: float32 under a mixed-precision policy
        encoder_weights=None,
    )
    if weights_file is not None:
        load_encoder_weights(model, weights_file)
    import keras

    if not presence_head:
        # The library's own `Activation("sigmoid", name="sigmoid")` would compute in the policy's float16;
        # the same layer (same name, no weights) with dtype float32 gives the losses float32 probabilities.
        probabilities = keras.layers.Activation("sigmoid", dtype="float32", name="sigmoid")(
            model.get_layer("final_conv").output
        )
        model = keras.Model(model.input, probabilities, name=model.name)
    else:
        from harness.model import heads

        # Keras names a model's outputs after the layers that make them: an identity layer named "mask".
        mask_logits = keras.layers.Activation("linear", dtype="float32", name=heads.MASK_OUTPUT)(
            model.get_layer("final_conv").output
        )
        model = heads.two_output_model(
            model.input, mask_logits, model.get_layer(ENCODER_OUTPUT).output,
            classes=4, dropout=presence_dropout, name="sm_unet_resnet34_presence",
        )
    return model


def _check_weights_file(weights_path: str | os.PathLike[str] | None) -> Path | None:
    if not weights_path:
        return None
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"config key 'encoder_weights' = '{weights_path}': no such file (ImageNet weights are never downloaded; "
            "leave it empty to train from scratch)"
        )
    if path.suffix not in (".h5", ".hdf5"):
        raise ConfigError(f"config key 'encoder_weights' = '{weights_path}': expected an HDF5 weights file (.h5)")
    return path


def import_segmentation_models():
    """The segmentation_models module, set up for Keras 3 (ConfigError naming the extra when missing, or the
    backend when Keras does not run on TensorFlow)."""
    require_tensorflow_backend()
    # segmentation_models picks its Keras at import time from SM_FRAMEWORK; 'tf.keras' is the one that
    # works under Keras 3. It prints a banner on import: keep the CLI's output clean.
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import segmentation_models
    except ImportError as error:
        raise ConfigError(
            f"config key 'model' = 'sm_unet_resnet34' needs the optional extra [library] ({INSTALL_HINT}): {error}"
        ) from error
    return segmentation_models


def require_tensorflow_backend() -> None:
    """ConfigError unless Keras runs on TensorFlow: segmentation_models builds tf.keras layers (and ops) and
    fails deep inside itself under JAX or torch. A run meets this earlier, in harness.run.device's check."""
    import keras

    backend = keras.config.backend()
    if backend != "tensorflow":
        raise ConfigError(
            f"config key 'model' = 'sm_unet_resnet34' runs only on the Keras backend tensorflow (segmentation_models "
            f"is tf.keras), and Keras runs on {backend!r}: start it with KERAS_BACKEND=tensorflow, or use model: unet"
        )


def load_encoder_weights(model: "keras.Model", weights_file: str | os.PathLike[str]) -> int:
    """Load a local ImageNet encoder file into `model` by layer name; returns the number of layers loaded.

    The file holds the encoder only (classification_models' `resnet34_imagenet_1000_no_top.h5`, Keras'
    legacy HDF5 layout); the decoder keeps its random initialisation. A file that matches no layer
    is a ConfigError, not a silent from-scratch run.
    """
    import h5py

    try:
        with h5py.File(weights_file, "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            raw_names = group.attrs.get("layer_names", [])
            file_layers = {name.decode("utf8") if hasattr(name, "decode") else str(name) for name in raw_names}
    except OSError as error:
        raise ConfigError(f"config key 'encoder_weights' = '{weights_file}': not a readable HDF5 file ({error})") from error
    model_layers = {layer.name for layer in model.layers if layer.weights}
    matched = file_layers & model_layers
    if not matched:
        raise ConfigError(
            f"config key 'encoder_weights' = '{weights_file}': no layer of the file matches the ResNet34 encoder "
            "(expected classification_models' resnet34_imagenet_1000_no_top.h5 layout)"
        )
    model.load_weights(str(weights_file), by_name=True)
    return len(matched)
