"""Post-processing math: hand-made maps with a known answer, fast search == straightforward search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import CLASSES
from harness.errors import HarnessError
from harness.evaluate import postprocess, postprocess_file
from harness.run import metrics

H, W = 40, 60


def _blob_maps() -> tuple[np.ndarray, np.ndarray]:
    """Two images whose only perfect answer is threshold 0.40 with min size 33 (in a grid that offers
    thresholds 0.30..0.50 and sizes 0, 10, 33, 80, 200).

    Per image and class: a 6x10 truth rectangle (60 px) whose core has p=0.6 and whose one-pixel
    rim has p=0.42 (threshold must be < 0.42 to keep it), a halo around it with p=0.38 that is NOT
    truth (threshold must be >= 0.38 to drop it), and a 5x6 (30 px) false blob with p=0.95 far away
    (min size must be in (30, 60] to drop it and keep the truth).
    """
    probabilities = np.full((2, H, W, 4), 0.05, dtype=np.float32)
    truth = np.zeros((2, H, W, 4), dtype=np.uint8)
    for image in range(2):
        for channel in range(4):
            top, left = 5 + 3 * image, 5 + 2 * channel
            probabilities[image, top - 1:top + 7, left - 1:left + 11, channel] = 0.38  # halo, not truth
            probabilities[image, top:top + 6, left:left + 10, channel] = 0.42  # rim (truth)
            probabilities[image, top + 1:top + 5, left + 1:left + 9, channel] = 0.6  # core (truth)
            truth[image, top:top + 6, left:left + 10, channel] = 1
            probabilities[image, 30:35, 45:51, channel] = 0.95  # false blob, 30 px
    return probabilities, truth


def _space(**extra) -> postprocess.SearchSpace:
    return postprocess.SearchSpace(thresholds=(0.30, 0.35, 0.40, 0.45, 0.50), min_sizes=(0, 10, 33, 80, 200), **extra)


@pytest.mark.parametrize("search", [postprocess.search, postprocess.search_reference])
def test_hand_made_maps_have_a_known_best_threshold_and_size(search):
    probabilities, truth = _blob_maps()
    result = search(probabilities, truth, _space())
    for choice in result.choices:
        assert (choice.threshold, choice.min_size) == (0.40, 33)
        assert choice.score == 1.0
    # Every other candidate is strictly worse, so the answer does not hang on tie-breaking.
    scores = result.scores[0, :, :, 0, 0]
    assert (scores < 1.0).sum() == scores.size - 1
    # The chosen parameters reproduce the truth exactly when applied.
    masks = postprocess.apply_postprocess(probabilities, {name: choice.params() for name, choice in zip(CLASSES, result.choices)})
    np.testing.assert_array_equal(masks, truth)


def test_scores_are_the_challenge_metric_of_the_applied_masks():
    rng = np.random.default_rng(3)
    probabilities, truth = _random_maps(rng, images=5)
    result = postprocess.search(probabilities, truth, _space())
    params = {name: choice.params() for name, choice in zip(CLASSES, result.choices)}
    applied = metrics.dice_per_pair(postprocess.apply_postprocess(probabilities, params), truth).mean(axis=0)
    np.testing.assert_allclose(applied, [choice.score for choice in result.choices], rtol=0, atol=1e-12)
    # Threshold 0.5 without filtering is in the grid, so the search can only improve on it.
    before = postprocess.dice_by_class((probabilities > 0.5).astype(np.uint8), truth)
    assert np.all(applied >= before - 1e-12)


def _random_maps(rng: np.random.Generator, images: int, size: tuple[int, int] = (32, 48)) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    height, width = size
    probabilities = np.empty((images, height, width, 4), dtype=np.float16)
    truth = np.empty((images, height, width, 4), dtype=np.uint8)
    for index in range(images):
        field = cv2.GaussianBlur(rng.standard_normal((height, width, 4)).astype(np.float32), (0, 0), 2.0)
        field /= field.std()
        noise = rng.standard_normal((height, width, 4)).astype(np.float32)
        probabilities[index] = 1.0 / (1.0 + np.exp(-(1.5 * field + 0.8 * noise)))
        truth[index] = field > 0.4
    truth[0, :, :, 1] = 0  # an empty truth: empty predictions must score 1 there
    return probabilities, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_search_equals_the_straightforward_loop_exactly(seed):
    rng = np.random.default_rng(seed)
    probabilities, truth = _random_maps(rng, images=4)
    space = postprocess.SearchSpace(
        thresholds=(0.3, 0.45, 0.5, 0.65, 0.8),
        min_sizes=(0, 2, 5, 20, 60, 150),
        p_mins=(0.0, 0.7, 0.9),
        area_mins=(0, 30, 120),
    )
    fast = postprocess.search(probabilities, truth, space)
    reference = postprocess.search_reference(probabilities, truth, space)
    assert fast.choices == reference.choices
    np.testing.assert_array_equal(fast.scores, reference.scores)  # bit for bit, every candidate
    # The maps are not trivial: candidates differ, so agreeing is not vacuous.
    assert np.ptp(fast.scores) > 0.1


def test_min_size_keeps_components_of_exactly_that_size_with_8_connectivity():
    probability = np.zeros((10, 10), dtype=np.float32)
    probability[1, 1] = probability[2, 2] = probability[3, 3] = 0.9  # one diagonal component of 3 (8-connected)
    probability[7, 7] = 0.9  # a single pixel
    assert postprocess.postprocess_mask(probability, 0.5, min_size=3).sum() == 3
    assert postprocess.postprocess_mask(probability, 0.5, min_size=4).sum() == 0
    assert postprocess.postprocess_mask(probability, 0.5, min_size=0).sum() == 4


def test_mask_level_rule_drops_whole_masks():
    probability = np.zeros((20, 20), dtype=np.float32)
    probability[2:8, 2:8] = 0.65  # 36 px, largest probability 0.65
    assert postprocess.postprocess_mask(probability, 0.5, p_min=0.6).sum() == 36
    assert postprocess.postprocess_mask(probability, 0.5, p_min=0.7).sum() == 0
    assert postprocess.postprocess_mask(probability, 0.5, area_min=36).sum() == 36
    assert postprocess.postprocess_mask(probability, 0.5, area_min=37).sum() == 0


def test_search_prefers_dropping_a_false_positive_mask_by_its_peak():
    # Image 0: true blob with peak 0.9; image 1: empty truth, weak false blob with peak 0.62.
    probabilities = np.zeros((2, H, W, 4), dtype=np.float32)
    truth = np.zeros((2, H, W, 4), dtype=np.uint8)
    probabilities[0, 5:15, 5:15, :] = 0.9
    truth[0, 5:15, 5:15, :] = 1
    probabilities[1, 20:35, 20:35, :] = 0.62
    space = postprocess.SearchSpace(thresholds=(0.5,), min_sizes=(0,), p_mins=(0.0, 0.7), area_mins=(0,))
    result = postprocess.search(probabilities, truth, space)
    assert all(choice.p_min == 0.7 and choice.score == 1.0 for choice in result.choices)
    assert result.scores[0, 0, 0, 0, 0] == 0.5  # without the rule: 1 on image 0, 0 on image 1


def test_build_space_scales_sizes_and_draws_reproducible_trials():
    grid = postprocess.build_space((350, 525))
    assert grid.thresholds == postprocess.DEFAULT_THRESHOLDS and len(grid.thresholds) == 13
    assert grid.thresholds[0] == 0.30 and grid.thresholds[-1] == 0.90
    assert grid.min_sizes == postprocess.DEFAULT_MIN_SIZES and grid.min_sizes[-1] == 40000
    assert grid.p_mins == postprocess.PRESENCE_THRESHOLDS and grid.p_mins[0] == 0.0  # the gate can be off
    assert postprocess.build_space((350, 525), presence_gate=False).p_mins == (0.0,)
    half = postprocess.build_space((175, 525))
    assert half.min_sizes[:5] == (0, 50, 250, 500, 1250)  # half the area, half the pixels
    tiny = postprocess.build_space((35, 52))  # about 1% of the area: 0 and 100 px both round to 0 and 1
    assert tiny.min_sizes[:3] == (0, 1, 5) and len(set(tiny.min_sizes)) == len(tiny.min_sizes)
    trials = postprocess.build_space((64, 96), trials=7, seed=5)
    assert trials == postprocess.build_space((64, 96), trials=7, seed=5)
    assert 1 <= len(trials.thresholds) <= 7 and all(0.2 <= value <= 0.9 for value in trials.thresholds)
    ruled = postprocess.build_space((350, 525), mask_rule=True)
    assert ruled.candidates == 13 * 13 * len(postprocess.PRESENCE_THRESHOLDS) * len(postprocess.RULE_AREA_MINS)


def test_bad_parameters_name_the_class_and_the_file(tmp_path):
    with pytest.raises(HarnessError, match="Gravel"):
        postprocess.class_params({"classes": {name: {"threshold": 0.5} for name in ("Fish", "Flower", "Sugar")}})
    with pytest.raises(HarnessError, match="Sugar"):
        postprocess.class_params({name: {"threshold": "high" if name == "Sugar" else 0.5} for name in CLASSES})
    (tmp_path / "postprocess.json").write_text("{not json")
    with pytest.raises(HarnessError, match="postprocess.json"):
        postprocess_file.load_params(tmp_path)
    (tmp_path / "postprocess.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(HarnessError, match="classes"):
        postprocess_file.load_params(tmp_path)
    assert postprocess_file.load_params(tmp_path / "nowhere") is None
    with pytest.raises(HarnessError, match="thresholds"):
        postprocess.SearchSpace(thresholds=(), min_sizes=(0,))


def test_default_params_only_threshold():
    probabilities = np.random.default_rng(0).random((2, 8, 8, 4)).astype(np.float32)
    masks = postprocess.apply_postprocess(probabilities, postprocess.default_params())
    np.testing.assert_array_equal(masks, (probabilities > 0.5).astype(np.uint8))
