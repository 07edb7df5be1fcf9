"""Named augmentation pipelines (albumentations 2.x), applied jointly to an image and its 4 masks.

    none     no augmentation
    flips    horizontal flip, vertical flip (each p=0.5)
    default  flips + affine shift/scale/rotate (p=0.5; masks nearest-neighbour, border filled with 0)
    strong   default + brightness/contrast (image only, p=0.5)

Call a pipeline as `pipeline(image=image_uint8_hw3, mask=masks_uint8_hw4)`; masks stay binary and
aligned because every geometric step moves them with the image using nearest-neighbour sampling.
The names are `harness.config.AUGMENTATIONS` (a test keeps the two in step).

Seeding: use `reseed(pipeline, seed)`, not albumentations' `Compose(seed=...)`/`set_random_seed`. In
albumentations 2.0.8 those hand the *same* seed to every transform, so each one draws the same numbers:
HorizontalFlip and VerticalFlip then always fire together (only "no flip" and "both flips" ever
happen). `reseed` gives all transforms one shared generator, so their draws are independent.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from harness.config import AUGMENTATIONS
from harness.errors import ConfigError

PIPELINES: tuple[str, ...] = ("none", "flips", "default", "strong")
assert PIPELINES == AUGMENTATIONS, "harness.config.AUGMENTATIONS and augment.PIPELINES must match"


def build(name: str, seed: int | None = None) -> Any:
    """The albumentations.Compose called `name` (seeded with `reseed` when `seed` is given), or None for "none"."""
    if name not in PIPELINES:
        raise ConfigError(f"unknown augmentation {name!r}; expected one of {', '.join(PIPELINES)}")
    if name == "none":
        return None
    import albumentations
    import cv2

    steps: list[Any] = [albumentations.HorizontalFlip(p=0.5), albumentations.VerticalFlip(p=0.5)]
    if name in ("default", "strong"):
        steps.append(
            albumentations.Affine(
                translate_percent=(-0.0625, 0.0625),
                scale=(0.9, 1.1),
                rotate=(-15, 15),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            )
        )
    if name == "strong":
        steps.append(albumentations.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5))
    pipeline = albumentations.Compose(steps)
    reseed(pipeline, seed)
    return pipeline


def reseed(pipeline: Any, seed: int | None) -> None:
    """Seed every transform of `pipeline` from one shared generator (None: fresh OS entropy)."""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
