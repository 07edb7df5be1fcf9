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


# --- the presence head -----------------------------------------------------------------------------
def presence_targets(masks: np.ndarray) -> np.ndarray:
    """Per-class presence of (N, H, W, C) masks: 1.0 where the class has any pixel > 0.5, else 0.0 -> (N, C)."""
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) masks, got shape {masks.shape}")
    return (masks > 0.5).any(axis=(1, 2)).astype(np.float64)


def presence_bce(masks: np.ndarray, logits: np.ndarray) -> float:
    """Binary cross-entropy of presence logits (N, C) against the presence of `masks`, mean over the pairs.

    Computed from logits in the stable form max(z, 0) - z t + log(1 + exp(-|z|)).
    """
    targets = presence_targets(masks)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != targets.shape:
        raise ValueError(f"presence logits shape {logits.shape} differs from the masks' (N, C) {targets.shape}")
    values = np.maximum(logits, 0.0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    return float(values.mean())


def soft_overlap_per_pair(probabilities: np.ndarray, truth: np.ndarray, kind: str = "dice", smooth: float = 1.0) -> np.ndarray:
    """Soft Dice (or Jaccard) of every (image, class) pair of (N, H, W, C) maps -> (N, C)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    intersection = (probabilities * truth).sum(axis=(1, 2))
    total = probabilities.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    if kind == "dice":
        return (2.0 * intersection + smooth) / (total + smooth)
    if kind == "jaccard":
        return (intersection + smooth) / (total - intersection + smooth)
    raise ValueError(f"kind must be dice or jaccard, got {kind!r}")


def present_pairs_overlap_loss(probabilities: np.ndarray, truth: np.ndarray, kind: str = "dice") -> float:
    """1 - the mean soft overlap over the pairs whose class is present in `truth` (0 when none is).

    The `present` loss weighting: empty pairs are left to the BCE part (and the presence head), so the
    overlap term only teaches the mask's shape where there is one.
    """
    present = presence_targets(truth)
    if present.sum() == 0:
        return 0.0
    overlap = soft_overlap_per_pair(probabilities, truth, kind)
    return float(1.0 - (overlap * present).sum() / present.sum())


def binary_cross_entropy(probabilities: np.ndarray, truth: np.ndarray, epsilon: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities clipped to [epsilon, 1 - epsilon] (as Keras computes it)."""
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), epsilon, 1.0 - epsilon)
    truth = np.asarray(truth, dtype=np.float64)
    return float(-(truth * np.log(probabilities) + (1.0 - truth) * np.log(1.0 - probabilities)).mean())
