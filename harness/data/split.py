"""Deterministic train/validation split, stratified by the set of classes present in each image."""

from __future__ import annotations

import numpy as np


def split_indices(presence: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): sorted int64 arrays that partition range(N).

    Images are grouped by their class-set pattern (one of 16); each group gives its share of the
    validation images, and the rounding remainders go to the groups with the largest fractional
    shares, so the total is round(N * val_fraction), at least 1 and at most N - 1 (for N >= 2).
    The same presence, fraction and seed always give the same split.
    """
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2:
        raise ValueError(f"presence must be (N, classes), got shape {presence.shape}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    count = presence.shape[0]
    if count < 2:
        raise ValueError(f"need at least 2 images to split, got {count}")
    keys = presence.astype(np.int64) @ (1 << np.arange(presence.shape[1], dtype=np.int64))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(keys == key) for key in np.unique(keys)]  # sorted keys: stable order
    groups = [rng.permutation(group) for group in groups]
    total = int(min(max(round(count * val_fraction), 1), count - 1))
    shares = np.array([len(group) * val_fraction for group in groups])
    quotas = np.floor(shares).astype(int)
    # Largest remainders first; ties broken by a seeded shuffle, not by group order.
    tie_break = rng.random(len(groups))
    order = np.lexsort((tie_break, -(shares - quotas)))
    remaining = total - int(quotas.sum())
    for position in order:
        if remaining <= 0:
            break
        if quotas[position] < len(groups[position]):
            quotas[position] += 1
            remaining -= 1
    while remaining < 0:  # only when rounding gave too many; take them back from the largest quotas
        position = int(np.argmax(quotas))
        quotas[position] -= 1
        remaining += 1
    val = np.concatenate([group[:quota] for group, quota in zip(groups, quotas)]).astype(np.int64)
    val.sort()
    mask = np.ones(count, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask).astype(np.int64), val
