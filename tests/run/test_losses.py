"""Losses and metrics: golden values on tiny hand-made masks, and agreement with the NumPy metric math."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from harness import config as config_module
from harness.errors import ConfigError
from harness.run import losses, metrics


def _as_nhwc(*class_maps: list[list[float]]) -> np.ndarray:
    """One image (1, H, W, C) from one 2-D list per class."""
    return np.stack([np.asarray(values, dtype="float32") for values in class_maps], axis=-1)[None]


# One 2x2 image, four classes, chosen so each class exercises one rule of the challenge metric.
TRUTH = _as_nhwc(
    [[1, 1], [0, 0]],  # partly found
    [[0, 0], [0, 0]],  # empty truth, empty prediction: 1
    [[0, 0], [0, 0]],  # empty truth, one false pixel: 0
    [[1, 1], [1, 1]],  # all found: 1
)
PROBABILITIES = _as_nhwc(
    [[0.9, 0.2], [0.1, 0.1]],  # thresholded: one of two true pixels -> 2*1 / (1 + 2) = 2/3
    [[0.1, 0.4], [0.0, 0.3]],
    [[0.6, 0.0], [0.0, 0.0]],
    [[0.7, 0.8], [0.9, 0.6]],
)


def test_kaggle_dice_golden_values():
    pairs = np.asarray(losses.kaggle_dice_pairs(TRUTH, PROBABILITIES, threshold=0.5))
    np.testing.assert_allclose(pairs, [[2 / 3, 1.0, 0.0, 1.0]], rtol=1e-6)
    per_image = np.asarray(losses.kaggle_dice(TRUTH, PROBABILITIES))
    np.testing.assert_allclose(per_image, [(2 / 3 + 1 + 0 + 1) / 4], rtol=1e-6)


def test_kaggle_dice_threshold_is_a_parameter():
    # At 0.65 the first class finds its pixel, the third loses its false one, the fourth drops 0.6.
    pairs = np.asarray(losses.kaggle_dice_pairs(TRUTH, PROBABILITIES, threshold=0.65))
    np.testing.assert_allclose(pairs, [[2 / 3, 1.0, 1.0, 2 * 3 / (3 + 4)]], rtol=1e-6)


# Soft scores on one class of four pixels: truth 1 1 0 0, prediction 1 .5 .5 0.
SOFT_TRUTH = np.asarray([1, 1, 0, 0], dtype="float32").reshape(1, 2, 2, 1)
SOFT_PRED = np.asarray([1, 0.5, 0.5, 0], dtype="float32").reshape(1, 2, 2, 1)
INTERSECTION, TRUTH_SUM, PRED_SUM = 1.5, 2.0, 2.0
DICE = (2 * INTERSECTION + 1) / (TRUTH_SUM + PRED_SUM + 1)  # 0.8
JACCARD = (INTERSECTION + 1) / (TRUTH_SUM + PRED_SUM - INTERSECTION + 1)  # 2.5 / 3.5
BCE = 2 * math.log(2) / 4  # the two 0.5 pixels cost ln 2 each, the exact ones (almost) nothing


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bce", BCE),
        ("dice", 1 - DICE),
        ("bce_dice", BCE + 1 - DICE),
        ("jaccard", 1 - JACCARD),
        ("bce_jaccard", BCE + 1 - JACCARD),
    ],
)
def test_losses_golden_values(name, expected):
    value = float(losses.get_loss(name)(SOFT_TRUTH, SOFT_PRED))
    assert value == pytest.approx(expected, abs=1e-5)


def test_soft_dice_matches_the_numpy_metric():
    assert float(losses.dice_coef(SOFT_TRUTH, SOFT_PRED)) == pytest.approx(DICE, rel=1e-6)
    rng = np.random.default_rng(3)
    truth = (rng.random((3, 8, 12, 4)) > 0.7).astype("float32")
    probabilities = rng.random((3, 8, 12, 4)).astype("float32")
    assert float(losses.dice_coef(truth, probabilities)) == pytest.approx(metrics.soft_dice(probabilities, truth), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kaggle_dice_matches_the_numpy_metric_on_random_data(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((6, 8, 12, 4)) > 0.8).astype("float32")
    truth *= rng.random((6, 1, 1, 4)) >= 0.4  # many empty (image, class) pairs
    probabilities = rng.random((6, 8, 12, 4)).astype("float32") ** 3  # mostly below the threshold
    probabilities *= rng.random((6, 1, 1, 4)) >= 0.3  # and some empty predictions
    for threshold in (0.3, 0.5):
        keras_value = float(np.mean(np.asarray(losses.kaggle_dice(truth, probabilities, threshold=threshold))))
        numpy_value = metrics.kaggle_dice(probabilities, truth, threshold=threshold)
        assert keras_value == pytest.approx(numpy_value, rel=1e-6)
        np.testing.assert_allclose(
            np.asarray(losses.kaggle_dice_pairs(truth, probabilities, threshold)),
            metrics.dice_per_pair(probabilities > threshold, truth),
            rtol=1e-6,
        )


def test_every_config_loss_has_a_function_and_unknown_names_fail():
    assert set(losses.LOSS_FUNCTIONS) == set(config_module.LOSSES)
    with pytest.raises(ConfigError, match="'loss'.*bce_dice"):
        losses.get_loss("focal")


def _tiny_model() -> keras.Model:
    inputs = keras.Input((8, 12, 3))
    outputs = keras.layers.Conv2D(4, 1, activation="sigmoid", name="output")(inputs)
    return keras.Model(inputs, outputs)


def test_keras_logs_the_metric_names_and_the_epoch_value_is_the_mean_over_all_pairs(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.normal(size=(6, 8, 12, 3)).astype("float32")
    truth = (rng.random((6, 8, 12, 4)) > 0.85).astype("float32")
    truth[:3, ..., 1] = 0
    model = _tiny_model()
    model.compile(optimizer="adam", loss=losses.get_loss("bce_dice"), metrics=losses.metric_objects(threshold=0.5))
    history = model.fit(images, truth, validation_data=(images, truth), epochs=1, batch_size=4, verbose=0)
    assert {"loss", "dice_coef", "kaggle_dice", "val_loss", "val_dice_coef", "val_kaggle_dice"} <= set(history.history)
    # Batches of 4 and 2 images: the epoch value still weighs every (image, class) pair the same.
    logs = model.evaluate(images, truth, batch_size=4, return_dict=True, verbose=0)
    assert logs["kaggle_dice"] == pytest.approx(metrics.kaggle_dice(model.predict(images, verbose=0), truth), rel=1e-5)


def test_a_compiled_model_saves_and_loads_with_the_registered_functions(tmp_path):
    model = _tiny_model()
    model.compile(optimizer="adam", loss=losses.get_loss("bce_jaccard"), metrics=losses.metric_objects(threshold=0.4))
    images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype("float32")
    truth = np.zeros((2, 8, 12, 4), dtype="float32")
    model.fit(images, truth, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: found through the registration
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)
    assert loaded.evaluate(images, truth, return_dict=True, verbose=0)["loss"] == pytest.approx(
        model.evaluate(images, truth, return_dict=True, verbose=0)["loss"], rel=1e-5
    )
