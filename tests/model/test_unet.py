"""The reference UNet: shapes for any size divisible by 2**depth, layer names, parameter count."""

from __future__ import annotations

import numpy as np
import pytest

from harness import config as config_module
from harness.errors import ConfigError
from harness.model import build_model
from harness.model.unet import build_unet


def expected_parameters(filters: int, depth: int, classes: int = 4, channels: int = 3, batchnorm: bool = True) -> int:
    """Parameter count of the reference architecture, worked out layer by layer."""

    def conv(inputs: int, outputs: int, kernel: int, bias: bool) -> int:
        return kernel * kernel * inputs * outputs + (outputs if bias else 0)

    def block(inputs: int, outputs: int) -> int:
        # two 3x3 conv (no bias under BN) + BN (gamma, beta, moving mean, moving variance)
        total = conv(inputs, outputs, 3, not batchnorm) + conv(outputs, outputs, 3, not batchnorm)
        return total + (2 * 4 * outputs if batchnorm else 0)

    total, inputs = 0, channels
    for level in range(depth):
        total += block(inputs, filters * 2**level)
        inputs = filters * 2**level
    total += block(inputs, filters * 2**depth)
    inputs = filters * 2**depth
    for level in reversed(range(depth)):
        outputs = filters * 2**level
        total += conv(inputs, outputs, 2, True)  # up-sampling conv
        total += block(2 * outputs, outputs)  # after concatenating the skip
        inputs = outputs
    return total + conv(inputs, classes, 1, True)


def test_reference_settings_have_about_488k_parameters():
    model = build_unet((384, 576, 3), filters=8, depth=4)
    assert model.count_params() == expected_parameters(8, 4)
    # The stack facts' figure for a 4-level UNet with 8 base filters.
    assert abs(model.count_params() - 488_000) < 5_000


@pytest.mark.parametrize("filters, depth, batchnorm", [(4, 2, True), (4, 3, False), (16, 5, True)])
def test_parameter_count_follows_the_architecture(filters, depth, batchnorm):
    model = build_unet((64, 96, 3), filters=filters, depth=depth, batchnorm=batchnorm)
    assert model.count_params() == expected_parameters(filters, depth, batchnorm=batchnorm)


@pytest.mark.parametrize("height, width, depth", [(64, 96, 4), (96, 64, 4), (32, 160, 5), (24, 40, 3)])
def test_output_has_input_size_and_four_probability_channels(height, width, depth):
    model = build_unet((height, width, 3), filters=2, depth=depth)
    assert model.output_shape == (None, height, width, 4)
    images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype("float32")
    output = np.asarray(model(images, training=False))
    assert output.shape == (2, height, width, 4)
    assert output.min() >= 0.0 and output.max() <= 1.0


def test_layers_are_named_predictably():
    model = build_unet((32, 48, 3), filters=2, depth=3)
    names = {layer.name for layer in model.layers}
    for level in (1, 2, 3):
        for part in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "pool", "drop"):
            assert f"enc{level}_{part}" in names
        for part in ("up", "upconv", "concat", "drop", "conv1", "bn1", "conv2", "bn2"):
            assert f"dec{level}_{part}" in names
    assert {"bottleneck_conv1", "bottleneck_bn2", "output"} <= names
    assert "enc4_conv1" not in names
    # Skips join the decoder at the same resolution: dec1 concatenates enc1's full-resolution block.
    assert model.get_layer("dec1_concat").output.shape[1:3] == (32, 48)
    assert model.get_layer("bottleneck_conv1").output.shape[1:3] == (4, 6)
    assert model.get_layer("output").activation.__name__ == "sigmoid"


def test_batchnorm_comes_before_relu_and_convs_drop_their_bias():
    model = build_unet((32, 32, 3), filters=2, depth=2, batchnorm=True)
    conv = model.get_layer("enc1_conv1")
    assert conv.use_bias is False
    assert model.get_layer("enc1_relu1").input is model.get_layer("enc1_bn1").output
    assert conv.kernel_initializer.__class__.__name__ == "HeNormal"
    plain = build_unet((32, 32, 3), filters=2, depth=2, batchnorm=False)
    assert plain.get_layer("enc1_conv1").use_bias is True
    assert not any(layer.name.endswith(("_bn1", "_bn2")) for layer in plain.layers)


@pytest.mark.parametrize("shape, depth", [((60, 96, 3), 4), ((64, 100, 3), 4), ((64, 96, 3), 6)])
def test_sizes_not_divisible_by_two_to_the_depth_are_a_config_error(shape, depth):
    with pytest.raises(ConfigError, match=r"image_size.*divisible by 2\*\*depth"):
        build_unet(shape, filters=2, depth=depth)


def test_build_model_uses_the_config():
    config = config_module.build_config(overrides={"image_size": "64x96", "filters": 4, "depth": 3, "dropout": 0.1})
    model = build_model(config)
    assert model.input_shape == (None, 64, 96, 3)
    assert model.output_shape == (None, 64, 96, 4)
    assert model.count_params() == expected_parameters(4, 3)
    assert model.get_layer("enc1_drop").rate == pytest.approx(0.1)


def test_the_summary_line_says_where_the_weights_started(tmp_path):
    from harness import config as config_module
    from harness import model as model_module

    unet = config_module.build_config(overrides={"filters": 16, "depth": 3, "image_size": "64x96"})
    assert model_module.describe_model(unet) == "unet (3 levels, 16 base filters, batchnorm on); trained from scratch"
    library = config_module.build_config(overrides={"model": "sm_unet_resnet34", "image_size": "64x96"})
    assert model_module.describe_model(library).endswith("encoder_weights: none (trained from scratch)")
    weights = tmp_path / "resnet34_imagenet.h5"
    named = config_module.build_config(overrides={"model": "sm_unet_resnet34", "encoder_weights": str(weights),
                                                  "image_size": "64x96"})
    assert str(weights) in model_module.describe_model(named)
