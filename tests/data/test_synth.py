"""The synthetic dataset: challenge layout, deterministic, readable by the same loaders as real data."""

from __future__ import annotations

import hashlib

import numpy as np

from harness import CLASSES
from harness.data import cache, labels, rle, synth


def _digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "cache" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_layout_and_readback(synth_dir, prepared_cache):
    written = {p.name for p in synth_dir.iterdir()} - {"cache"}  # the cache is prepared_cache's
    assert written == {"sample_submission.csv", "test_images", "train.csv", "train_images"}
    table = labels.read_train_csv(synth_dir / "train.csv")
    assert len(table) == 24 and len(set(table.names)) == 24
    assert all(name.endswith(".jpg") and len(name) == 11 for name in table.names)
    assert table.presence.any(axis=1).all(), "every image has at least one class"
    lines = (synth_dir / "train.csv").read_text().splitlines()
    assert lines[0] == "Image_Label,EncodedPixels" and len(lines) == 1 + 4 * 24
    assert [line.split(",")[0].split("_")[1] for line in lines[1:5]] == list(CLASSES)
    submission = labels.read_sample_submission(synth_dir / "sample_submission.csv")
    test_names = sorted(p.name for p in (synth_dir / "test_images").iterdir())
    assert len(submission) == 16 and sorted({label.split("_")[0] for label in submission}) == test_names
    assert all(line.endswith(",1 1") for line in (synth_dir / "sample_submission.csv").read_text().splitlines()[1:])
    image = cache.load_image(synth_dir / "train_images" / table.names[0])
    assert image.shape == (96, 144, 3)
    masks = table.masks(0, 96, 144)
    assert masks.shape == (96, 144, 4)
    opened = cache.open_cache(prepared_cache, "64x96", data_dir=synth_dir)
    assert opened.names == table.names


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = synth.synthesize(tmp_path / "a", images=3, test_images=1, size=(48, 72), seed=5)
    second = synth.synthesize(tmp_path / "b", images=3, test_images=1, size=(48, 72), seed=5)
    third = synth.synthesize(tmp_path / "c", images=3, test_images=1, size=(48, 72), seed=6)
    assert _digest(first) == _digest(second)
    assert _digest(first) != _digest(third)


def test_masks_exclude_no_data_swaths_and_classes_do_not_share_pixels():
    swaths = 0
    for index in range(30):
        image, masks = synth.make_example(np.random.default_rng([1, 0, index]), 70, 105)
        assert image.dtype == np.uint8 and masks.dtype == np.uint8
        assert masks.sum(axis=-1).max() <= 1, "the class drawn last owns overlapping pixels"
        black = (image == 0).all(axis=-1)
        swaths += black.sum() > 200
        assert not masks[black].any(), "no-data pixels carry no class"
        for channel in range(4):
            assert rle.decode(rle.encode(masks[..., channel]), 70, 105).tolist() == masks[..., channel].tolist()
    assert 5 <= swaths <= 25, "about half the images have a swath"


def test_class_rates_follow_the_challenge():
    presence = np.array(
        [synth.make_example(np.random.default_rng([0, 0, i]), 32, 48)[1].any(axis=(0, 1)) for i in range(400)]
    )
    expected = np.array([synth.PRESENCE_RATES[name] for name in CLASSES])
    # Each class is drawn at its rate, then images without any class are redrawn (rates rise a little).
    assert np.all(np.abs(presence.mean(axis=0) - expected) < 0.09), presence.mean(axis=0)


def test_class_textures_differ_at_training_resolution():
    # The four textures must be distinguishable after shrinking to 64x96: compare simple statistics
    # of each texture at that scale: mean brightness, fine contrast (3x3) and coarse contrast (9x9).
    import cv2

    rng = np.random.default_rng(0)
    stats = []
    for painter in (synth._fish, synth._flower, synth._gravel, synth._sugar):
        texture = painter(rng, 350, 525).astype(np.float32)
        small = cv2.resize(texture, (96, 64), interpolation=cv2.INTER_AREA)
        fine = np.abs(small - cv2.blur(small, (3, 3))).mean()
        coarse = cv2.blur(small, (9, 9)).std()
        stats.append((small.mean(), fine, coarse))
    stats = np.array(stats)
    for a in range(4):
        for b in range(a + 1, 4):
            relative = np.abs(stats[a] - stats[b]) / np.maximum(stats[a], stats[b])
            assert relative.max() > 0.5, f"{CLASSES[a]} and {CLASSES[b]} look alike: {stats[a]} vs {stats[b]}"
