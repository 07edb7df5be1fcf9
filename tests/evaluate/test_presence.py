"""Post-processing that is never worse than predicting nothing, presence gating, honest (k-fold) tuning:
golden tests on tiny hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from harness import CLASSES
from harness.errors import HarnessError
from harness.evaluate import postprocess, postprocess_file, tuning
from harness.run import metrics

H, W = 20, 30
SMALL = postprocess.SearchSpace(thresholds=(0.3, 0.5, 0.7, 0.9), min_sizes=(0, 10, 50), p_mins=(0.0, 0.5, 0.8))


def _maps(images: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((images, H, W, 4), 0.05, dtype=np.float32), np.zeros((images, H, W, 4), dtype=np.uint8)


def _nothing_wins_maps() -> tuple[np.ndarray, np.ndarray]:
    """4 images, every class: image 0 holds a 4x5 truth blob the model misses (p 0.2 there) and
    images 1-3 hold no truth but a confident 10x10 false blob (p 0.95: passes every threshold, size
    and presence gate of SMALL). Predicting nothing scores 3/4; any candidate at most 1/4 + 0."""
    probabilities, truth = _maps(4)
    truth[0, 2:6, 2:7] = 1
    probabilities[0, 2:6, 2:7] = 0.2
    for image in (1, 2, 3):
        probabilities[image, 5:15, 10:20] = 0.95
    return probabilities, truth


@pytest.mark.parametrize("search", [postprocess.search, postprocess.search_reference])
def test_predicting_nothing_wins_and_the_class_is_dropped(search):
    probabilities, truth = _nothing_wins_maps()
    result = search(probabilities, truth, SMALL)
    np.testing.assert_array_equal(result.empty, [0.75] * 4)
    assert result.scores.max() == 0.0  # every candidate misses image 0 and predicts the three false blobs
    for choice in result.choices:
        assert choice.drop and choice.score == 0.75 and choice.kept_score == 0.0
    params = {name: choice.params() for name, choice in zip(CLASSES, result.choices)}
    masks = postprocess.apply_postprocess(probabilities, params)
    assert not masks.any()
    np.testing.assert_array_equal(postprocess.dice_by_class(masks, truth), [0.75] * 4)


@pytest.mark.parametrize("search", [postprocess.search, postprocess.search_reference])
def test_a_candidate_that_beats_nothing_is_kept(search):
    # The same layout, but the model finds image 0's blob (p 0.6, core 0.85) and its false blobs are
    # unsure (p 0.55). Thresholds cannot separate them (0.7 keeps only the core) nor sizes (the false
    # blobs are the larger); the presence gate at 0.8 (peak 0.85 against 0.55) does: score 1 > 0.75.
    probabilities, truth = _maps(4)
    truth[0, 2:6, 2:7] = 1
    probabilities[0, 2:6, 2:7] = 0.6
    probabilities[0, 3:5, 3:6] = 0.85
    for image in (1, 2, 3):
        probabilities[image, 5:15, 10:20] = 0.55
    result = search(probabilities, truth, SMALL)
    for choice in result.choices:
        assert not choice.drop and choice.score == 1.0
        assert (choice.threshold, choice.p_min) == (0.3, 0.8)
    params = {name: choice.params() for name, choice in zip(CLASSES, result.choices)}
    np.testing.assert_array_equal(postprocess.apply_postprocess(probabilities, params), truth)


def _empty_baseline(truth: np.ndarray) -> np.ndarray:
    """(C,) mean Dice of predicting nothing, worked out on its own: the share of images without each class."""
    truth = np.asarray(truth)
    return (truth.reshape(truth.shape[0], -1, truth.shape[-1]).max(axis=1) == 0).mean(axis=0).astype(np.float64)


def test_a_tuned_class_never_scores_below_its_empty_baseline_on_random_maps():
    rng = np.random.default_rng(7)
    probabilities = rng.random((6, H, W, 4)).astype(np.float32)  # noise: the masks are mostly wrong
    truth = (rng.random((6, H, W, 4)) > 0.7).astype(np.uint8)
    truth[:4, :, :, 2] = 0  # a mostly absent class
    result = postprocess.search(probabilities, truth, SMALL)
    empty = _empty_baseline(truth)
    np.testing.assert_array_equal(result.empty, empty)
    assert all(choice.score >= value for choice, value in zip(result.choices, empty))
    assert result.choices[2].drop  # 4 of 6 images empty, noisy masks: nothing is better


def test_top_k_mean_and_presence_sources():
    probabilities = np.zeros((2, 4, 5, 4), dtype=np.float32)
    probabilities[0, 0, :, 0] = [0.9, 0.7, 0.5, 0.1, 0.0]
    probabilities[1, :, :, 1] = 0.25
    np.testing.assert_allclose(postprocess.top_k_mean(probabilities, 1)[:, :2], [[0.9, 0.0], [0.0, 0.25]])
    np.testing.assert_allclose(postprocess.top_k_mean(probabilities, 3)[:, :2], [[0.7, 0.0], [0.0, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(postprocess.top_k_mean(probabilities, 99)[0, 0], 2.2 / 20, rtol=1e-6)  # k capped at H*W
    classifier = np.array([[0.3, 0.1, 0.0, 0.0], [0.2, 0.75, 0.0, 0.0]], dtype=np.float32)
    pixels = postprocess.Presence("pixels", top_k=3)
    np.testing.assert_allclose(postprocess.presence_scores(probabilities, classifier, pixels)[0, 0], 0.7, rtol=1e-6)
    np.testing.assert_allclose(postprocess.presence_scores(probabilities, classifier, postprocess.Presence("classifier")),
                               classifier, rtol=1e-7)
    mean = postprocess.presence_scores(probabilities, classifier, postprocess.Presence("mean", top_k=3))
    np.testing.assert_allclose(mean[:, :2], [[0.5, 0.05], [0.1, 0.5]], rtol=1e-6)
    with pytest.raises(HarnessError, match="presence head"):
        postprocess.presence_scores(probabilities, None, postprocess.Presence("classifier"))
    with pytest.raises(HarnessError, match="source"):
        postprocess.Presence("maximum")
    np.testing.assert_array_equal(postprocess.most_likely(np.array([[0.1, 0.5, 0.5, 0.2], [0.9, 0.0, 0.0, 0.0]])),
                                  [[False, True, False, False], [True, False, False, False]])


def _classifier_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 images, class 0 only matters: the pixel maps are the same confident blob (p 0.9) in every
    image, but the truth holds it in image 0 only; the classifier knows (0.9 / 0.2 / 0.3). Pixels
    cannot tell the images apart; the classifier gate at 0.5 can."""
    probabilities, truth = _maps(3)
    probabilities[:, 4:10, 4:12, :] = 0.9
    truth[0, 4:10, 4:12, :] = 1
    classifier = np.tile(np.array([[0.9], [0.2], [0.3]], dtype=np.float32), (1, 4))
    return probabilities, truth, classifier


def test_the_classifier_gate_separates_what_pixels_cannot():
    probabilities, truth, classifier = _classifier_maps()
    pixels = postprocess.tune(probabilities, truth, SMALL, ["pixels"], top_k=5, keep_top=False)
    # Pixels: the blob everywhere (1/3) or nothing (2/3): dropping wins.
    assert all(choice.drop and choice.score == pytest.approx(2 / 3) for choice in pixels.result.choices)
    tuned = postprocess.tune(probabilities, truth, SMALL, ["pixels", "classifier", "mean"], top_k=5, keep_top=False,
                             classifier=classifier)
    assert tuned.presence.source == "classifier"  # the first source reaching 1.0 ("mean" ties: 0.9/0.55/0.6)
    assert tuned.source_means == {"pixels": pytest.approx(2 / 3), "classifier": 1.0, "mean": 1.0}
    for choice in tuned.result.choices:
        assert not choice.drop and choice.p_min == 0.5 and choice.score == 1.0
    masks = postprocess.apply_postprocess(probabilities, tuned.document_params(), classifier)
    np.testing.assert_array_equal(masks, truth)


@pytest.mark.parametrize("search", [postprocess.search, postprocess.search_reference])
def test_keep_top_protects_each_images_most_likely_class(search):
    # Class 1 of image 1 is real but weak (classifier 0.4 < the gate 0.5 that drops the false class 0
    # blobs); it is image 1's most likely class, so keep_top saves it.
    probabilities, truth = _maps(2)
    probabilities[0, 2:8, 2:8, 0] = 0.9
    truth[0, 2:8, 2:8, 0] = 1
    probabilities[1, 2:8, 2:8, 0] = 0.9  # false: class 0 absent in image 1
    probabilities[1, 10:16, 10:20, 1] = 0.8
    truth[1, 10:16, 10:20, 1] = 1
    classifier = np.array([[0.9, 0.1, 0.0, 0.0], [0.3, 0.4, 0.0, 0.0]])
    space = postprocess.SearchSpace(thresholds=(0.5,), min_sizes=(0,), p_mins=(0.0, 0.5))
    protected = postprocess.most_likely(classifier)
    without = search(probabilities, truth, space, presence=classifier)
    kept = search(probabilities, truth, space, presence=classifier, protected=protected)
    # Class 1, gate 0.5: without keep_top image 1's blob is gated away (dice 0 there), with it kept (1).
    assert without.scores[1, 0, 0, 1, 0] == 0.5 and kept.scores[1, 0, 0, 1, 0] == 1.0
    # Class 0: image 1's false blob has classifier 0.3 and is not image 1's top class: gated either way.
    assert without.scores[0, 0, 0, 1, 0] == kept.scores[0, 0, 0, 1, 0] == 1.0
    params = {"classes": {name: {"threshold": 0.5, "p_min": 0.5} for name in CLASSES},
              "presence": {"source": "classifier", "keep_top": True}}
    masks = postprocess.apply_postprocess(probabilities, params, classifier)
    np.testing.assert_array_equal(masks[..., :2], truth[..., :2])


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_search_equals_the_loop_with_presence_scores_and_keep_top(seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.random((5, 16, 24, 4)).astype(np.float32) ** 2
    truth = (rng.random((5, 16, 24, 4)) > 0.6).astype(np.uint8)
    truth[1:3, :, :, 3] = 0
    scores = rng.random((5, 4))
    protected = postprocess.most_likely(scores)
    space = postprocess.SearchSpace(thresholds=(0.2, 0.5, 0.8), min_sizes=(0, 3, 30), p_mins=(0.0, 0.3, 0.6, 0.9),
                                    area_mins=(0, 20))
    fast = postprocess.search(probabilities, truth, space, presence=scores, protected=protected)
    reference = postprocess.search_reference(probabilities, truth, space, presence=scores, protected=protected)
    assert fast.choices == reference.choices
    np.testing.assert_array_equal(fast.scores, reference.scores)
    np.testing.assert_array_equal(fast.empty, reference.empty)
    assert np.ptp(fast.scores) > 0.05


def _overfit_maps() -> tuple[np.ndarray, np.ndarray]:
    """2 images with the class present in both. Image 0's blob has p 0.45; image 1's has p 0.85 and
    a false 10x10 region beside it with p 0.6. Tuned on image 0 alone: threshold 0.3 (all of
    0.3/0.4 reach 1; the lowest wins), which on image 1 also keeps the false region; tuned on image 1
    alone: threshold 0.7 (0.7 reaches 1 there), which finds nothing on image 0."""
    probabilities, truth = _maps(2)
    truth[:, 2:8, 2:12] = 1
    probabilities[0, 2:8, 2:12] = 0.45
    probabilities[1, 2:8, 2:12] = 0.85
    probabilities[1, 10:20, 15:25] = 0.6
    return probabilities, truth


def test_held_out_scores_each_fold_with_parameters_tuned_on_the_other():
    probabilities, truth = _overfit_maps()
    space = postprocess.SearchSpace(thresholds=(0.3, 0.4, 0.7), min_sizes=(0,))
    tune_part = lambda p, t, c: postprocess.tune(p, t, space, ["pixels"], top_k=1, keep_top=False, classifier=c)  # noqa: E731
    folds = postprocess.fold_of_images(2, 2, seed=0)
    assert sorted(folds.tolist()) == [0, 1]
    dice, per_fold = postprocess.held_out_dice(probabilities, truth, folds, tune_part)
    image_0, image_1 = (0, 1)
    # Image 1 scored with image 0's threshold 0.3: blob 60 px + false 100 px -> 2*60/(160+60).
    assert dice[image_1, 0] == pytest.approx(2 * 60 / 220)
    assert dice[image_0, 0] == 0.0  # image 0 scored with threshold 0.7: nothing predicted, truth present
    chosen = {int(np.flatnonzero(folds != fold)[0]): part.result.choices[0].threshold for fold, part in enumerate(per_fold)}
    assert chosen == {0: 0.3, 1: 0.7}
    # Tuned on both: threshold 0.4 keeps image 0 (0.45) and drops... no: 0.4 keeps the false 0.6 too;
    # 0.7 loses image 0. Best tuned-on: 0.3/0.4 give (1 + 0.545)/2 = 0.773, 0.7 gives (0 + 1)/2 = 0.5.
    everything = tune_part(probabilities, truth, None)
    assert everything.result.choices[0].score == pytest.approx((1 + 2 * 60 / 220) / 2)
    assert dice[:, 0].mean() < everything.result.choices[0].score  # the held-out estimate is lower: honest


def test_tune_maps_reports_empty_raw_tuned_on_and_held_out_per_class():
    probabilities, truth = _nothing_wins_maps()
    probabilities = np.concatenate([probabilities, probabilities])
    truth = np.concatenate([truth, truth])
    sections = tuning.tune_maps(probabilities, truth, None, (H, W), folds=2, seed=3)
    assert sections["dropped"] == list(CLASSES)
    for name in CLASSES:
        entry = sections["classes"][name]
        assert entry["drop"] is True
        assert entry["dice_empty"] == entry["dice_after"] == 0.75
        assert entry["dice_before"] == 0.0  # threshold 0.5 misses the blob and predicts the false ones
        # Each fold drops too (the largest min size, 131 px here, only ties with dropping), so the
        # held-out score of every image is its empty score.
        assert entry["dice_held_out"] == 0.75
    assert sections["mean"]["dice_held_out"] == 0.75 and sections["holdout"]["folds"] == 2
    assert all(part["dropped"] == list(CLASSES) for part in sections["holdout"]["per_fold"])
    table = postprocess_file.format_tuning_table({**sections, "image_size": f"{H}x{W}"})
    assert "held-out" in table and "drop" in table
    assert "dropped (an empty mask scored best): Fish, Flower, Gravel, Sugar" in postprocess_file.summary_line(sections)
    with pytest.raises(HarnessError, match="presence head"):
        tuning.tune_maps(probabilities, truth, None, (H, W), presence="classifier")


def test_old_postprocess_files_keep_their_meaning():
    """Version 1 files: no 'drop', no 'presence' section: p_min is the largest probability, no keep_top."""
    probability = np.zeros((1, 10, 10, 4), dtype=np.float32)
    probability[0, 2:5, 2:5, :] = 0.65
    old = {"classes": {name: {"threshold": 0.5, "min_size": 0, "p_min": 0.7, "area_min": 0} for name in CLASSES}}
    assert postprocess.presence_settings(old) == postprocess.Presence("pixels", 1, False)
    assert not postprocess.apply_postprocess(probability, old).any()  # peak 0.65 < 0.7
    old["classes"]["Fish"]["p_min"] = 0.6
    assert postprocess.apply_postprocess(probability, old)[..., 0].sum() == 9
    with pytest.raises(HarnessError, match="Fish"):
        postprocess.class_params({name: {"threshold": 0.5, "drop": "yes" if name == "Fish" else False} for name in CLASSES})


def _random_maps(seed: int, images: int, power: int, absent: float, empty_class: int, empty_images: int):
    """Seeded probabilities (uniform ** power), truth (present where uniform > absent; `empty_class`
    absent from the first `empty_images` images) and classifier probabilities."""
    rng = np.random.default_rng(seed)
    probabilities = rng.random((images, H, W, 4)).astype(np.float32) ** power
    truth = (rng.random((images, H, W, 4)) > absent).astype(np.uint8)
    truth[:empty_images, :, :, empty_class] = 0
    classifier = rng.random((images, 4)).astype(np.float32)
    return probabilities, truth, classifier


def test_the_searched_score_is_what_applying_the_choice_gives_with_presence_and_keep_top():
    probabilities, truth, classifier = _random_maps(11, images=6, power=3, absent=0.8, empty_class=0, empty_images=3)
    space = postprocess.build_space((H, W))
    for source in postprocess.PRESENCE_SOURCES:
        tuned = postprocess.tune(probabilities, truth, space, [source], top_k=7, keep_top=True, classifier=classifier)
        applied = metrics.dice_per_pair(postprocess.apply_postprocess(probabilities, tuned.document_params(), classifier),
                                        truth).mean(axis=0)
        np.testing.assert_allclose(applied, [choice.score for choice in tuned.result.choices], rtol=0, atol=1e-12)
    sections = tuning.tune_maps(probabilities, truth, classifier, (H, W), keep_top=True, folds=3, seed=1)
    assert set(sections["presence"]["searched"]) == {"pixels", "classifier", "mean"}
    assert len(sections["holdout"]["per_fold"]) == 3 and sum(part["images"] for part in sections["holdout"]["per_fold"]) == 6


def test_repeats_average_the_held_out_estimate_over_fold_splits():
    """--repeats 3 is exactly the mean of the three single-split estimates (seeds 4, 5, 6), per class."""
    probabilities, truth, classifier = _random_maps(5, images=12, power=2, absent=0.7, empty_class=1, empty_images=5)
    single = [tuning.tune_maps(probabilities, truth, classifier, (H, W), keep_top=True, folds=2, seed=seed)
              for seed in (4, 5, 6)]
    repeated = tuning.tune_maps(probabilities, truth, classifier, (H, W), keep_top=True, folds=2, seed=4, repeats=3)
    split_scores = [document["mean"]["dice_held_out"] for document in single]
    assert len(set(split_scores)) > 1  # the splits really differ, so the mean is not any one of them
    np.testing.assert_allclose(repeated["holdout"]["per_split"], split_scores, rtol=0, atol=1e-12)
    assert repeated["mean"]["dice_held_out"] == pytest.approx(np.mean(split_scores), abs=1e-12)
    for name in CLASSES:
        assert repeated["classes"][name]["dice_held_out"] == pytest.approx(
            np.mean([document["classes"][name]["dice_held_out"] for document in single]), abs=1e-12)
        # The parameters to use come from all images: the same whatever the estimate's splits.
        assert repeated["classes"][name]["threshold"] == single[0]["classes"][name]["threshold"]
    assert [part["seed"] for part in repeated["holdout"]["per_fold"]] == [4, 4, 5, 5, 6, 6]
    assert repeated["holdout"]["repeats"] == 3
    assert "the mean of 3 splits (seeds 4..6" in postprocess_file.summary_line(repeated)
    with pytest.raises(HarnessError, match="repeats"):
        tuning.tune_maps(probabilities, truth, classifier, (H, W), repeats=0)
