"""Augmentation on the device (harness.data.device_augment, `augment_device`): golden transforms, binary
and aligned masks under random ones, seeding per (seed, epoch, image), the config key, and a tiny run
that trains with it and resumes exactly. Runs on the CPU here (the backend's default device)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from harness import config as config_module
from harness import io
from harness.data import cache, dataset, device_augment
from harness.errors import ConfigError
from tests.conftest import tiny_overrides

HEIGHT, WIDTH = 16, 24


@pytest.fixture(scope="module")
def opened(prepared_cache):
    return cache.open_cache(prepared_cache, "64x96")


def _batch(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (2, height, width, 4), dtype=np.uint8)
    return images, masks


def _apply(matrix: np.ndarray, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    transforms = np.stack([device_augment.to_transform(matrix)] * len(images))
    out_images, out_masks = device_augment.transform_batch(images, masks, transforms)
    return np.asarray(out_images), np.asarray(out_masks)


def _shifted(array: np.ndarray, right: int, down: int) -> np.ndarray:
    out = np.zeros_like(array)
    out[:, down:, right:] = array[:, : array.shape[1] - down, : array.shape[2] - right]
    return out


# --- golden transforms -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, matrix, expected",
    [
        ("identity", lambda: np.eye(3), lambda a: a),
        ("horizontal flip", lambda: device_augment.flip_matrix(True, False, HEIGHT, WIDTH), lambda a: a[:, :, ::-1]),
        ("vertical flip", lambda: device_augment.flip_matrix(False, True, HEIGHT, WIDTH), lambda a: a[:, ::-1]),
        ("rotate 180", lambda: device_augment.affine_matrix(0, 0, 1.0, 1.0, 180.0, HEIGHT, WIDTH),
         lambda a: a[:, ::-1, ::-1]),
        ("shift 3 right, 2 down", lambda: device_augment.affine_matrix(3, 2, 1.0, 1.0, 0.0, HEIGHT, WIDTH),
         lambda a: _shifted(a, 3, 2)),
    ],
)
def test_a_known_transform_moves_image_and_masks_alike(case, matrix, expected):
    images, masks = _batch()
    out_images, out_masks = _apply(matrix(), images, masks)
    np.testing.assert_array_equal(out_images, expected(images).astype(np.float32), err_msg=case)
    np.testing.assert_array_equal(out_masks, expected(masks).astype(np.float32), err_msg=case)


def test_a_quarter_turn_of_a_square_image_is_exact():
    images, masks = _batch(height=12, width=12)
    out_images, out_masks = _apply(device_augment.affine_matrix(0, 0, 1.0, 1.0, 90.0, 12, 12), images, masks)
    # The matrix [[cos, sin], [-sin, cos]] at 90 degrees sends (x, y) to (y, W - 1 - x) about the centre.
    expected = lambda a: np.rot90(a, k=1, axes=(1, 2))  # noqa: E731
    np.testing.assert_array_equal(out_images, expected(images).astype(np.float32))
    np.testing.assert_array_equal(out_masks, expected(masks).astype(np.float32))


def test_the_geometry_matches_opencv_the_cpu_paths_warp():
    """Same matrix through OpenCV's warpAffine (albumentations' backend): the device path uses the same
    pixel-centre convention and direction (OpenCV's fixed-point weights differ by a grey level or so)."""
    import cv2

    images, masks = _batch(seed=1, height=48, width=64)
    matrix = device_augment.affine_matrix(3, -2, 1.07, 0.93, 11.0, 48, 64)
    out_images, out_masks = _apply(matrix, images, masks)
    for index in range(len(images)):
        cv_image = cv2.warpAffine(images[index], matrix[:2], (64, 48), flags=cv2.INTER_LINEAR, borderValue=0)
        cv_mask = cv2.warpAffine(masks[index], matrix[:2], (64, 48), flags=cv2.INTER_NEAREST, borderValue=0)
        assert np.abs(out_images[index] - cv_image).mean() < 1.5
        assert (out_masks[index] == cv_mask).mean() > 0.97  # rounding ties of nearest-neighbour aside


def test_identity_batches_are_the_cpu_loaders_batches():
    images, masks = _batch(seed=2)
    x, y = device_augment.transform_batch(images, masks, np.stack([device_augment.to_transform(np.eye(3))] * 2))
    np.testing.assert_allclose(np.asarray(device_augment.standardise(x)), dataset.standardize(images), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(y), masks.astype(np.float32))


def test_flips_alone_are_masked_flips_equal_to_the_matrix_path():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (12, HEIGHT, WIDTH, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (12, HEIGHT, WIDTH, 4), dtype=np.uint8)
    seeds = list(range(12))
    x, y = (np.asarray(part) for part in device_augment.augment("flips", images, masks, seeds))
    by_matrix, masks_by_matrix = device_augment.transform_batch(
        images, masks, device_augment.draw_transforms("flips", seeds, HEIGHT, WIDTH))
    np.testing.assert_allclose(x, np.asarray(device_augment.standardise(by_matrix)), atol=1e-5)
    np.testing.assert_array_equal(y, np.asarray(masks_by_matrix))
    flipped = [device_augment.draw(seed, HEIGHT, WIDTH).flip_x for seed in seeds]
    assert 0 < sum(flipped) < len(seeds)
    for index, flip in enumerate(flipped):
        expected = masks[index, :, ::-1] if flip else masks[index]
        if not device_augment.draw(seed=index, height=HEIGHT, width=WIDTH).flip_y:
            np.testing.assert_array_equal(y[index], expected.astype(np.float32))


# --- random transforms -----------------------------------------------------------------------------
def _blobs(height: int = 64, width: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An image bright exactly where one of four rectangles (the four masks) lies, dark elsewhere."""
    masks = np.zeros((1, height, width, 4), dtype=np.uint8)
    for channel, (top, left) in enumerate([(8, 10), (8, 55), (36, 14), (34, 60)]):
        masks[0, top : top + 18, left : left + 24, channel] = 1
    images = np.repeat(masks.max(axis=-1, keepdims=True) * 255, 3, axis=-1).astype(np.uint8)
    return images, masks


def _neighbourhood(mask: np.ndarray, reduce: str) -> np.ndarray:
    """Min (erosion) or max (dilation) over each pixel and its 8 neighbours."""
    padded = np.pad(mask, 1)
    stack = [padded[1 + dy : 1 + dy + mask.shape[0], 1 + dx : 1 + dx + mask.shape[1]]
             for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return getattr(np, reduce)(stack, axis=0)


def test_random_transforms_keep_masks_binary_and_aligned_with_the_image():
    images, masks = _blobs()
    seeds = list(range(24))
    transforms = device_augment.draw_transforms("default", seeds, 64, 96)
    out_images, out_masks = device_augment.transform_batch(np.repeat(images, len(seeds), 0),
                                                           np.repeat(masks, len(seeds), 0), transforms)
    out_images, out_masks = np.asarray(out_images), np.asarray(out_masks)
    assert set(np.unique(out_masks).tolist()) <= {0.0, 1.0}
    moved = 0
    for image, mask in zip(out_images[..., 0], out_masks):
        union = mask.max(axis=-1)
        inside, outside = _neighbourhood(union, "min") == 1, _neighbourhood(union, "max") == 0
        assert inside.any() and (image[inside] > 127).all(), "a mask's interior left the bright region"
        assert (image[outside] < 128).all(), "the bright region left its masks"
        for channel in range(4):  # each mask keeps (about) its area: moved, not smeared or dropped
            assert 0.6 < mask[..., channel].sum() / masks[0, ..., channel].sum() < 1.4
        moved += not np.array_equal(mask, masks[0])
    assert moved >= len(seeds) // 2


def test_parameters_follow_the_cpu_pipelines_ranges():
    draws = [device_augment.draw(seed, 64, 96) for seed in range(400)]
    column = lambda name: np.array([getattr(choice, name) for choice in draws])  # noqa: E731
    for step in ("flip_x", "flip_y", "affine"):
        assert 0.4 < column(step).mean() < 0.6, step
    assert 0.15 < (column("flip_x") & column("flip_y")).mean() < 0.35, "the flips must be drawn independently"
    assert np.abs(column("shift_x")).max() == 5 and np.abs(column("shift_y")).max() == 3  # int(6.25% of 96, 64)
    for scale in ("scale_x", "scale_y"):
        assert 0.9 <= column(scale).min() < 0.92 and 1.08 < column(scale).max() <= 1.1
    assert -15 <= column("degrees").min() < -14 and 14 < column("degrees").max() <= 15
    # flips: whole-pixel matrices only; default: the affine wherever it fires, on top of the same flips
    for seed, choice in enumerate(draws[:40]):
        flips = device_augment.sample_matrix("flips", seed, 64, 96)
        assert set(np.unique(flips).tolist()) <= {-1.0, 0.0, 1.0, 63.0, 95.0}
        default = device_augment.sample_matrix("default", seed, 64, 96)
        assert np.array_equal(default, flips) != choice.affine


# --- the dataset -----------------------------------------------------------------------------------
def _device_data(opened, **changes):
    values = {"batch_size": 4, "augment": "default", "shuffle": True, "seed": 7, "augment_on_device": True, **changes}
    return dataset.CloudDataset(opened, np.arange(12), **values)


def test_device_batches_are_seeded_per_image_and_replayed_by_set_epoch(opened):
    first, second = _device_data(opened), _device_data(opened)
    forward = [tuple(np.asarray(part) for part in first[index]) for index in range(3)]
    backward = [tuple(np.asarray(part) for part in second[index]) for index in reversed(range(3))][::-1]
    for (x1, y1), (x2, y2) in zip(forward, backward):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(forward[0][1], forward[1][1]), "different batches, different transforms"
    for x, y in forward:
        assert x.shape == (4, 64, 96, 3) and y.shape == (4, 64, 96, 4)
        assert set(np.unique(y).tolist()) <= {0.0, 1.0}
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    plain = dataset.CloudDataset(opened, np.arange(12), batch_size=4, shuffle=True, seed=7)
    assert any(not np.array_equal(y, plain[index][1]) for index, (_, y) in enumerate(forward))
    first.on_epoch_end()
    epoch1 = [np.asarray(first[index][1]) for index in range(3)]
    resumed = _device_data(opened)
    resumed.set_epoch(1)
    for index in range(3):
        np.testing.assert_array_equal(np.asarray(resumed[index][1]), epoch1[index])
    assert any(not np.array_equal(a, b[1]) for a, b in zip(epoch1, forward)), "epoch 1 draws anew"


def test_skipped_batches_are_placeholders_with_device_augmentation(opened):
    data = _device_data(opened)
    real = [np.asarray(data[index][0]) for index in range(3)]
    data.skip_batches(0, 2)
    x, y = data[0]
    assert not np.asarray(x).any() and np.asarray(x).shape == real[0].shape and not np.asarray(y).any()
    np.testing.assert_array_equal(np.asarray(data[2][0]), real[2])


# --- the config key --------------------------------------------------------------------------------
@pytest.mark.parametrize("augment", ["none", "strong"])
def test_augment_device_needs_flips_or_default(augment, opened):
    with pytest.raises(ConfigError, match=r"'augment_device'.*'augment' = '" + augment):
        config_module.build_config(overrides={"augment": augment, "augment_device": "true"})
    with pytest.raises(ConfigError, match="does not run on the device"):
        dataset.CloudDataset(opened, np.arange(4), 2, augment=augment, augment_on_device=True)


def test_augment_device_is_read_from_the_command_line_and_files(tmp_path):
    overrides, _ = config_module.parse_cli_args(["--augment-device=true", "--augment=flips"])
    assert config_module.build_config(overrides=overrides).augment_device is True
    (tmp_path / "run.yaml").write_text("augment: default\naugment_device: {value: true}\n")
    assert config_module.build_config(file=tmp_path / "run.yaml").augment_device is True
    assert config_module.Config().augment_device is False
    with pytest.raises(ConfigError, match="augment_device"):
        config_module.build_config(overrides={"augment_device": "sometimes"})


def test_make_datasets_moves_augmentation_to_the_device_for_training_only(synth_dir, prepared_cache):
    config = config_module.build_config(overrides=tiny_overrides(synth_dir, prepared_cache, augment_device=True))
    made = dataset.make_datasets(config)
    assert made.train.augment_on_device and made.train.augment == "flips"
    assert not made.val.augment_on_device and made.val.augment == "none"


# --- training --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_with_device_augmentation_trains_and_resumes_exactly(synth_dir, prepared_cache, tmp_path, monkeypatch):
    from harness.run import checkpoint, train
    from tests.run.test_exact_resume import _interrupt_at, _weights

    values = tiny_overrides(synth_dir, prepared_cache, epochs=2, deterministic=True, val_fraction=0.25,
                            augment="default", augment_device=True, workers=2)
    config = config_module.build_config(overrides=values)
    monkeypatch.delenv("HARNESS_PAUSE_AT", raising=False)
    straight = train.train(config, tmp_path / "straight", "straight", verbose=0)
    assert straight["status"] == "finished"
    reference = io.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert len(reference) == 2 and all(np.isfinite(row["loss"]) for row in reference)

    run_dir = tmp_path / "interrupted"
    watcher = _interrupt_at(run_dir, "1:2", monkeypatch)  # mid-epoch 2, after its second batch
    summary = train.train(config, run_dir, "interrupted", verbose=0)
    watcher.join(timeout=30)
    assert (summary["status"], summary["exit_code"]) == ("preempted", 128 + signal.SIGTERM)
    monkeypatch.delenv("HARNESS_PAUSE_AT")
    assert train.train(config, run_dir, "interrupted", verbose=0)["status"] == "finished"

    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [row["step"] for row in reference]
    for row, expected in zip(rows, reference):
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    for mine, theirs in zip(_weights(run_dir), _weights(tmp_path / "straight")):
        np.testing.assert_array_equal(mine, theirs)
    assert checkpoint.load_state(run_dir).epoch == 2
