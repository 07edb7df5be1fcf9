"""The library model: segmentation_models' UNet-ResNet34 (extra [library]) under Keras 3, no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness import config as config_module
from harness.errors import ConfigError
from harness.model import library


def test_describe_weights_says_where_the_encoder_starts(tmp_path: Path):
    assert library.describe_weights("") == "encoder_weights: none (trained from scratch)"
    assert library.describe_weights(None) == "encoder_weights: none (trained from scratch)"
    assert library.describe_weights(tmp_path / "w.h5") == f"encoder_weights: {tmp_path / 'w.h5'} (ImageNet, local file)"


def test_bad_sizes_and_missing_weight_files_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="divisible by 32"):
        library.build_sm_unet_resnet34((48, 64, 3))
    with pytest.raises(ConfigError, match="encoder_weights.*no such file.*never downloaded"):
        library.build_sm_unet_resnet34((64, 64, 3), tmp_path / "resnet34_imagenet_1000_no_top.h5")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="HDF5"):
        library.build_sm_unet_resnet34((64, 64, 3), tmp_path / "weights.bin")


def _require_library() -> None:
    # Not pytest.importorskip: segmentation_models must be imported with SM_FRAMEWORK=tf.keras.
    try:
        library.import_segmentation_models()
    except ConfigError as error:
        pytest.skip(f"the optional extra [library] is not installed: {error}")


def _encoder_weights_file(path: Path) -> dict[str, np.ndarray]:
    """An encoder weights file in the layout of classification_models' published ImageNet file (Keras'
    legacy HDF5 weights, layers by name), with recognisable values; returns conv0's kernel and the
    number of layers with weights."""
    import h5py
    from classification_models.tfkeras import Classifiers
    from keras.src.legacy.saving import legacy_h5_format

    resnet34, _ = Classifiers.get("resnet34")
    backbone = resnet34(input_shape=(64, 64, 3), weights=None, include_top=False)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal(backbone.get_layer("conv0").kernel.shape).astype("float32")
    backbone.get_layer("conv0").kernel.assign(kernel)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, backbone)
    return {"conv0": kernel, "layers": sum(1 for layer in backbone.layers if layer.weights)}


@pytest.mark.slow
def test_library_unet_builds_loads_local_encoder_weights_and_predicts(tmp_path: Path):
    _require_library()
    weights = tmp_path / "resnet34_imagenet_1000_no_top.h5"
    expected = _encoder_weights_file(weights)
    config = config_module.build_config(overrides={"model": "sm_unet_resnet34", "image_size": "64x64",
                                                   "encoder_weights": str(weights)})
    from harness.model import build_model

    model = build_model(config)  # the training area's dispatch reaches this module
    assert 24_000_000 < model.count_params() < 25_000_000  # segmentation_models' UNet-ResNet34: 24.5M
    assert model.output_shape == (None, 64, 64, 4)
    np.testing.assert_array_equal(model.get_layer("conv0").kernel.numpy(), expected["conv0"])
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype("float32")
    prediction = np.asarray(model(x, training=False))
    assert prediction.shape == (2, 64, 64, 4) and prediction.min() >= 0.0 and prediction.max() <= 1.0
    # The .keras round trip that best.keras and `harness evaluate` rely on (no custom objects needed).
    import keras

    model.save(tmp_path / "best.keras")
    reloaded = keras.models.load_model(tmp_path / "best.keras", compile=False)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), prediction, atol=1e-6)

    # Every encoder layer of the file is found by name; a file of another network is refused.
    assert library.load_encoder_weights(model, weights) == expected["layers"]
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense_unrelated")])
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, other)
    with pytest.raises(ConfigError, match="no layer of the file matches"):
        library.load_encoder_weights(model, tmp_path / "other.h5")
