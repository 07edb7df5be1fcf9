"""A generated dataset in the challenge's exact layout, for demos and tests.

    OUT/train_images/<id>.jpg   dark ocean, black no-data swaths, cloud textures
    OUT/train.csv               Image_Label,EncodedPixels; 4 rows per image in class order
    OUT/test_images/<id>.jpg    the same kind of images, unlabeled
    OUT/sample_submission.csv   Image_Label,EncodedPixels with the placeholder '1 1', like the real one

Each present class is the union of 1 to 3 rectangles filled with its own texture, drawn at scales
that survive shrinking to 64x96 so a small UNet can tell them apart:
    Fish    elongated, skeletal bright bands (long thin curves with short side branches)
    Flower  large, well-separated bright rosettes
    Gravel  granular cells: a dense jittered lattice of small medium-bright blobs
    Sugar   fine dusting: faint, dense specks
Classes appear independently at the challenge's rates (Fish 50%, Flower 43%, Gravel 53%, Sugar 68%),
at least one per image. Where two classes' rectangles overlap, the later one is drawn on top and owns
the pixels; no-data swaths are removed from every mask (as in the real labels).
Everything is drawn from `numpy.random.default_rng([seed, split, i])`: same seed, same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from harness import CLASSES
from harness.config import parse_size
from harness.data import rle
from harness.io import atomic_write_bytes, atomic_write_text

PRESENCE_RATES = {"Fish": 0.50, "Flower": 0.43, "Gravel": 0.53, "Sugar": 0.68}
_TRAIN, _TEST = 0, 1
_JPEG_QUALITY = 92


def synthesize(
    out_dir: str | Path,
    images: int,
    test_images: int = 0,
    size: str | Sequence[int] = (350, 525),
    seed: int = 0,
) -> Path:
    """Write a synthetic challenge dataset to `out_dir` (HxW `size`); returns `out_dir`."""
    import cv2

    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if test_images < 0:
        raise ValueError(f"test_images must be >= 0, got {test_images}")
    height, width = parse_size(size)
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16x16, got {height}x{width}")
    out_dir = Path(out_dir)
    train_dir = out_dir / "train_images"
    test_dir = out_dir / "test_images"
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)

    rows: list[tuple[str, str]] = []
    for index, name in enumerate(_names(seed, _TRAIN, images)):
        image, masks = make_example(np.random.default_rng([seed, _TRAIN, index]), height, width)
        _write_jpeg(cv2, train_dir / name, image)
        for class_index, class_name in enumerate(CLASSES):
            rows.append((f"{name}_{class_name}", rle.encode(masks[..., class_index])))
    atomic_write_text(out_dir / "train.csv", _csv_text(rows))

    submission: list[tuple[str, str]] = []
    for index, name in enumerate(_names(seed, _TEST, test_images)):
        image, _ = make_example(np.random.default_rng([seed, _TEST, index]), height, width)
        _write_jpeg(cv2, test_dir / name, image)
        submission.extend((f"{name}_{class_name}", "1 1") for class_name in CLASSES)
    atomic_write_text(out_dir / "sample_submission.csv", _csv_text(submission))
    return out_dir


def make_example(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 (H, W, 3) image and its uint8 (H, W, 4) masks.

    Textures are brightness added to the ocean inside the class's region; a later class replaces an
    earlier one where they overlap, in the picture and in the masks alike.
    """
    present = _draw_presence(rng)
    ocean = _ocean(rng, height, width)
    brightness = ocean.copy()
    masks = np.zeros((height, width, len(CLASSES)), dtype=np.uint8)
    painters = {"Fish": _fish, "Flower": _flower, "Gravel": _gravel, "Sugar": _sugar}
    taken = np.zeros((height, width), dtype=bool)
    # Draw in a random order so no class is always on top.
    for class_index in rng.permutation(len(CLASSES)):
        if not present[class_index]:
            continue
        region = _rectangles(rng, height, width, taken)
        texture = painters[CLASSES[class_index]](rng, height, width)
        np.copyto(brightness, ocean + texture, where=region)  # replaces whatever was drawn there
        masks[region] = 0  # the newest class owns overlapping pixels
        masks[..., class_index] = region
        taken |= region
    swath = _swath(rng, height, width)
    brightness[swath] = 0.0
    masks[swath] = 0
    tint = np.array([0.92, 0.97, 1.0], dtype=np.float32)  # clouds white, ocean slightly blue
    image = np.clip(brightness[..., None] * tint, 0, 255).astype(np.uint8)
    return image, masks


# --- pieces ----------------------------------------------------------------------------------------
def _draw_presence(rng: np.random.Generator) -> np.ndarray:
    rates = np.array([PRESENCE_RATES[name] for name in CLASSES])
    while True:
        present = rng.random(len(CLASSES)) < rates
        if present.any():
            return present


def _ocean(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    import cv2

    coarse = rng.normal(0.0, 1.0, (max(2, height // 32), max(2, width // 32))).astype(np.float32)
    swell = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0.0, 3.0, (height, width)).astype(np.float32)
    return 35.0 + 6.0 * swell + noise


def _rectangles(rng: np.random.Generator, height: int, width: int, taken: np.ndarray) -> np.ndarray:
    """Union of 1-3 rectangles, each 25-60% of each side; tries to avoid pixels already taken."""
    region = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        best = None
        for _attempt in range(6):
            box_h = int(rng.uniform(0.25, 0.6) * height)
            box_w = int(rng.uniform(0.25, 0.6) * width)
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            overlap = np.count_nonzero(taken[top : top + box_h, left : left + box_w])
            if best is None or overlap < best[0]:
                best = (overlap, top, left, box_h, box_w)
            if overlap == 0:
                break
        assert best is not None
        _, top, left, box_h, box_w = best
        region[top : top + box_h, left : left + box_w] = True
    return region


def _swath(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A black diagonal no-data band (in about half the images), as between satellite passes."""
    if rng.random() >= 0.5:
        return np.zeros((height, width), dtype=bool)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = np.deg2rad(rng.uniform(55, 80)) * rng.choice([-1.0, 1.0])
    distance = cols * np.sin(angle) + rows * np.cos(angle)
    center = rng.uniform(np.percentile(distance, 15), np.percentile(distance, 85))
    half = rng.uniform(0.03, 0.10) * width
    return np.abs(distance - center) < half


def _scale(height: int) -> float:
    # Texture sizes follow the image height: at 350 px one unit is 1 px.
    return height / 350.0


def _sugar(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    import cv2

    specks = (rng.random((height, width)) < 0.22).astype(np.float32) * rng.uniform(60, 120, (height, width)).astype(np.float32)
    specks = cv2.GaussianBlur(specks, (0, 0), max(0.5, 0.8 * _scale(height)))
    return 20.0 + 1.6 * specks


def _gravel(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    import cv2

    unit = _scale(height)
    spacing = max(3.0, 14.0 * unit)
    radius = max(1, int(round(4.5 * unit)))
    canvas = np.zeros((height, width), dtype=np.float32)
    rows = np.arange(spacing / 2, height, spacing)
    cols = np.arange(spacing / 2, width, spacing)
    centers_y, centers_x = np.meshgrid(rows, cols, indexing="ij")
    jitter = rng.uniform(-0.3, 0.3, (2, *centers_y.shape)) * spacing
    levels = rng.uniform(110, 170, centers_y.shape)
    for y, x, level in zip((centers_y + jitter[0]).ravel(), (centers_x + jitter[1]).ravel(), levels.ravel()):
        cv2.circle(canvas, (int(x), int(y)), radius, float(level), -1)
    return 15.0 + cv2.GaussianBlur(canvas, (0, 0), max(0.5, 1.2 * unit))


def _flower(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    import cv2

    unit = _scale(height)
    spacing = 70.0 * unit
    canvas = np.zeros((height, width), dtype=np.float32)
    for y in np.arange(spacing / 2, height + spacing / 2, spacing):
        for x in np.arange(spacing / 2, width + spacing / 2, spacing):
            center = (int(x + rng.uniform(-0.15, 0.15) * spacing), int(y + rng.uniform(-0.15, 0.15) * spacing))
            radius = int(rng.uniform(18, 24) * unit)
            cv2.circle(canvas, center, max(2, radius), 230.0, -1)
            cv2.circle(canvas, center, max(1, radius // 3), 170.0, -1)  # a darker eye: a rosette, not a disc
    return cv2.GaussianBlur(canvas, (0, 0), max(0.7, 2.5 * unit))


def _fish(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    import cv2

    unit = _scale(height)
    canvas = np.zeros((height, width), dtype=np.float32)
    angle = rng.uniform(-0.6, 0.6)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    spacing = 40.0 * unit
    thickness = max(1, int(round(6 * unit)))
    length = np.hypot(height, width)
    steps = np.linspace(-length / 2, length / 2, 80)
    center = np.array([width / 2, height / 2])
    for offset in np.arange(-length / 2, length / 2, spacing):
        phase = rng.uniform(0, 2 * np.pi)
        wave = 0.35 * spacing * np.sin(steps / (60 * unit) + phase)
        points = center + np.outer(steps, direction) + np.outer(offset + wave, normal)
        cv2.polylines(canvas, [points.astype(np.int32)], False, 200.0, thickness)
        # Short side branches: the "skeleton" look of fish-bone clouds.
        for base in points[5::12]:
            tip = base + normal * rng.uniform(-1, 1) * 0.45 * spacing + direction * 0.2 * spacing
            cv2.line(canvas, tuple(base.astype(int)), tuple(tip.astype(int)), 170.0, max(1, thickness // 2))
    return 10.0 + cv2.GaussianBlur(canvas, (0, 0), max(0.5, 1.0 * unit))


def _names(seed: int, split: int, count: int) -> list[str]:
    """Challenge-like names (7 hex digits + .jpg), unique and stable for a seed."""
    names: list[str] = []
    seen: set[str] = set()
    counter = 0
    while len(names) < count:
        digest = hashlib.sha1(f"cloudsweep-synth-{seed}-{split}-{counter}".encode()).hexdigest()[:7]
        counter += 1
        if digest not in seen:
            seen.add(digest)
            names.append(f"{digest}.jpg")
    return names


def _write_jpeg(cv2, path: Path, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError(f"cannot encode {path}")
    atomic_write_bytes(path, data.tobytes())


def _csv_text(rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("Image_Label", "EncodedPixels"))
    writer.writerows(rows)
    return buffer.getvalue()
