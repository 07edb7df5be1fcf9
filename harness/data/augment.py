"""Named augmentation pipelines (albumentations 2.x), applied jointly to an image and its 4 masks.

    none     no augmentation
    flips    horizontal flip, vertical flip (each p=0.5)
    default  flips + affine shift/scale/rotate (p=0.5; masks nearest-neighbour, border filled with 0)
    strong   default + brightness/contrast (image only, p=0.5)

Call a pipeline as `pipeline(image=image_uint8_hw3, mask=masks_uint8_hw4)`; masks stay binary and
aligned because every geometric step moves them with the image using nearest-neighbour sampling.
The names are `harness.config.AUGMENTATIONS` (a test keeps the two in step).
"""

from __future__ import annotations

from typing import Any

from harness.config import AUGMENTATIONS
from harness.errors import ConfigError

PIPELINES: tuple[str, ...] = ("none", "flips", "default", "strong")
assert PIPELINES == AUGMENTATIONS, "harness.config.AUGMENTATIONS and augment.PIPELINES must match"


def build(name: str, seed: int | None = None) -> Any:
    """The albumentations.Compose called `name`, or None for "none"."""
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
    return albumentations.Compose(steps, seed=seed)
