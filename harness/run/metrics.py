"""Metric math as pure NumPy functions (the Keras wrappers live in harness.run.losses).

Arrays are (N, H, W, C) with C = 4 classes in harness.CLASSES order. Dice of a pair (one image, one
class) is 2|P∩T| / (|P| + |T|); the challenge scores an empty prediction on an empty truth as 1.
"""

from __future__ import annotations

import numpy as np


def dice_per_pair(pred: np.ndarray, truth: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """Dice of binary masks for every (image, class) pair: (N, H, W, C) -> (N, C).

    `empty_score` is given where both masks are empty (the challenge's rule: 1).
    """
    pred = np.asarray(pred).astype(bool)
    truth = np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if pred.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) masks, got shape {pred.shape}")
    intersection = np.logical_and(pred, truth).sum(axis=(1, 2), dtype=np.int64)
    total = pred.sum(axis=(1, 2), dtype=np.int64) + truth.sum(axis=(1, 2), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(total == 0, empty_score, 2.0 * intersection / np.maximum(total, 1))
    return dice.astype(np.float64)


def kaggle_dice(probabilities_or_masks: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """The challenge metric: mean Dice over all (image, class) pairs of thresholded masks."""
    values = np.asarray(probabilities_or_masks)
    pred = values > threshold if values.dtype != bool else values
    return float(dice_per_pair(pred, truth).mean())


def soft_dice(probabilities: np.ndarray, truth: np.ndarray, smooth: float = 1.0) -> float:
    """Soft Dice over the whole batch, as the reference's `dice_coef` (what sweeps maximise)."""
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    intersection = float((probabilities * truth).sum())
    return (2.0 * intersection + smooth) / (float(probabilities.sum()) + float(truth.sum()) + smooth)
