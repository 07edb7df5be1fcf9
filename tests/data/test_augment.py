"""Augmentation pipelines: names in step with the config, masks binary and aligned with the image."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import AUGMENTATIONS
from harness.data import augment
from harness.errors import ConfigError


def test_pipeline_names_match_the_config():
    assert augment.PIPELINES == AUGMENTATIONS
    assert augment.build("none") is None
    with pytest.raises(ConfigError, match="unknown augmentation 'wild'.*none, flips, default, strong"):
        augment.build("wild")


def _marked_example(height: int = 96, width: int = 144) -> tuple[np.ndarray, np.ndarray]:
    """A dark image with one bright off-centre square; each mask channel marks the same square."""
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    masks = np.zeros((height, width, 4), dtype=np.uint8)
    image[10:30, 20:50] = 250
    masks[10:30, 20:50, :] = 1
    return image, masks


def _centroid(plane: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(plane)
    return np.array([rows.mean(), cols.mean()])


@pytest.mark.parametrize("name", ["flips", "default", "strong"])
def test_masks_stay_binary_and_move_with_the_image(name):
    pipeline = augment.build(name)
    image, masks = _marked_example()
    moved = 0
    for seed in range(40):
        augment.reseed(pipeline, seed)
        out = pipeline(image=image, mask=masks)
        new_image, new_masks = out["image"], out["mask"]
        assert new_image.shape == image.shape and new_image.dtype == np.uint8
        assert new_masks.shape == masks.shape and new_masks.dtype == np.uint8
        assert set(np.unique(new_masks).tolist()) <= {0, 1}
        # All four channels move identically.
        for channel in range(1, 4):
            np.testing.assert_array_equal(new_masks[..., channel], new_masks[..., 0])
        marker = new_image.mean(axis=-1) > 135  # the bright square, wherever it went
        if not new_masks[..., 0].any():
            assert not marker.any()
            continue
        distance = np.abs(_centroid(marker) - _centroid(new_masks[..., 0])).max()
        assert distance < 1.5, f"seed {seed}: mask centroid {distance:.2f} px away from the marker"
        overlap = (marker & new_masks[..., 0].astype(bool)).sum() / max(marker.sum(), 1)
        assert overlap > 0.85
        moved += not np.array_equal(new_masks, masks)
    assert moved >= 20, "the pipeline should change most examples"


def test_flips_are_independent_of_each_other():
    # Regression: albumentations' own set_random_seed gives both flips the same draws (always together).
    pipeline = augment.build("flips", seed=0)
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 0] = 255
    corners = set()
    for _ in range(40):
        out = pipeline(image=image, mask=np.zeros((8, 8, 4), np.uint8))["image"][..., 0]
        corners.add(tuple(np.argwhere(out)[0].tolist()))
    assert corners == {(0, 0), (0, 7), (7, 0), (7, 7)}


def test_flips_are_exact():
    pipeline = augment.build("flips")
    image, masks = _marked_example()
    seen = set()
    for seed in range(30):
        augment.reseed(pipeline, seed)
        out = pipeline(image=image, mask=masks)
        candidates = {
            "id": (image, masks),
            "h": (image[:, ::-1], masks[:, ::-1]),
            "v": (image[::-1], masks[::-1]),
            "hv": (image[::-1, ::-1], masks[::-1, ::-1]),
        }
        match = [key for key, (i, m) in candidates.items() if np.array_equal(out["image"], i) and np.array_equal(out["mask"], m)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {"id", "h", "v", "hv"}


def test_strong_changes_brightness_of_the_image_only():
    pipeline = augment.build("strong")
    image, masks = _marked_example()
    changed = False
    for seed in range(30):
        augment.reseed(pipeline, seed)
        out = pipeline(image=image, mask=masks)
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1}
        changed |= not set(np.unique(out["image"]).tolist()) <= {0, 20, 250}
    assert changed, "brightness/contrast should alter pixel values"


def test_same_seed_same_result():
    pipeline = augment.build("default")
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    masks = (np.random.default_rng(1).random((64, 96, 4)) < 0.5).astype(np.uint8)
    results = []
    for _ in range(2):
        augment.reseed(pipeline, 123)
        results.append(pipeline(image=image, mask=masks))
    np.testing.assert_array_equal(results[0]["image"], results[1]["image"])
    np.testing.assert_array_equal(results[0]["mask"], results[1]["mask"])
