"""The presence head: output names and shapes, its parameter count, and the library model with it."""

from __future__ import annotations

import numpy as np
import pytest

from harness import config as config_module
from harness.model import build_model, heads, library
from harness.model.unet import build_unet
from tests.model.test_unet import expected_parameters


def _head_parameters(channels: int, classes: int = 4) -> int:
    # Dense over [global average, global max] of the bottleneck's channels.
    return 2 * channels * classes + classes


@pytest.mark.parametrize("filters, depth", [(2, 2), (4, 3), (8, 4)])
def test_the_head_adds_one_dense_layer_over_the_pooled_bottleneck(filters, depth):
    plain = build_unet((32, 48, 3) if depth < 4 else (64, 96, 3), filters=filters, depth=depth)
    headed = build_unet((32, 48, 3) if depth < 4 else (64, 96, 3), filters=filters, depth=depth, presence_head=True)
    assert plain.count_params() == expected_parameters(filters, depth)
    assert headed.count_params() == expected_parameters(filters, depth) + _head_parameters(filters * 2**depth)
    assert not heads.has_presence_head(plain) and heads.has_presence_head(headed)


def test_with_the_head_the_outputs_are_named_mask_and_presence_logits():
    model = build_unet((32, 48, 3), filters=2, depth=3, presence_head=True)
    assert sorted(model.output_names) == ["mask", "presence"]
    # Logits: no activation on either output layer.
    assert model.get_layer("mask").activation.__name__ == "linear"
    assert model.get_layer("presence").activation.__name__ == "linear"
    images = np.random.default_rng(0).standard_normal((2, 32, 48, 3)).astype("float32")
    out = model.predict(images, verbose=0)
    assert set(out) == {"mask", "presence"}
    assert out["mask"].shape == (2, 32, 48, 4) and out["presence"].shape == (2, 4)
    assert out["mask"].dtype == np.float32 and out["presence"].dtype == np.float32
    assert (out["mask"] < 0).any() and (out["mask"] > 0).any()  # not squashed into [0, 1]


def test_without_the_head_the_single_output_is_unchanged():
    model = build_unet((32, 48, 3), filters=2, depth=3)
    assert len(model.outputs) == 1 and model.get_layer("output").activation.__name__ == "sigmoid"
    out = model.predict(np.zeros((1, 32, 48, 3), "float32"), verbose=0)
    assert isinstance(out, np.ndarray) and out.shape == (1, 32, 48, 4)


def test_build_model_and_description_follow_the_config_key():
    config = config_module.build_config(overrides={"image_size": "32x48", "filters": 2, "depth": 3, "presence_head": True})
    assert heads.has_presence_head(build_model(config))
    from harness.model import describe_model

    assert "presence head" in describe_model(config)
    assert "presence head" not in describe_model(config_module.build_config(overrides={"image_size": "32x48", "depth": 3}))


@pytest.mark.slow
def test_the_library_model_takes_the_head_on_its_encoder():
    try:
        library.import_segmentation_models()
    except Exception as error:  # ConfigError: the optional extra is not installed
        pytest.skip(f"the optional extra [library] is not installed: {error}")
    plain = library.build_sm_unet_resnet34((64, 96, 3))
    headed = library.build_sm_unet_resnet34((64, 96, 3), presence_head=True)
    assert headed.count_params() == plain.count_params() + _head_parameters(512)
    assert sorted(headed.output_names) == ["mask", "presence"]
    out = headed.predict(np.zeros((1, 64, 96, 3), "float32"), verbose=0)
    assert out["mask"].shape == (1, 64, 96, 4) and out["presence"].shape == (1, 4)
