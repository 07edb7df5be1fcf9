"""Run-length encoding in the cloud challenge's convention.

`EncodedPixels` holds `start length` pairs: starts are 1-indexed and pixels are numbered top to bottom,
then left to right (column-major, NumPy's Fortran order), relative to the image's own height and width.
Example: at 1400x2100 (HxW) the string `264918 937` covers column 189, rows 317 to 1253 (0-indexed),
because 264917 = 189 * 1400 + 317.

Both directions are vectorised: no Python loop per run, so a full-resolution mask with thousands of
runs decodes in about a millisecond.
"""

from __future__ import annotations

import numpy as np

from harness.errors import DataError


class RLEError(DataError):
    """An `EncodedPixels` string is malformed; the message names its Image_Label."""


def decode(rle: str, height: int, width: int, label: str = "") -> np.ndarray:
    """The (height, width) uint8 mask in {0, 1} of a challenge RLE string ('' or NaN-like: empty mask)."""
    total = height * width
    values = _parse(rle, label)
    if values.size == 0:
        return np.zeros((height, width), dtype=np.uint8)
    starts = values[0::2] - 1  # 0-indexed
    lengths = values[1::2]
    ends = starts + lengths
    where = _where(label)
    if np.any(starts < 0):
        bad = int(values[0::2][starts < 0][0])
        raise RLEError(f"{where}: run start {bad} is below 1 (starts are 1-indexed)")
    if np.any(lengths <= 0):
        bad = int(lengths[lengths <= 0][0])
        raise RLEError(f"{where}: run length {bad} is not positive")
    if ends[-1] > total or np.any(ends > total):
        index = int(np.argmax(ends > total))
        raise RLEError(
            f"{where}: run '{starts[index] + 1} {lengths[index]}' ends at pixel {ends[index]}, past the "
            f"{height}x{width} image ({total} pixels); is the image size right?"
        )
    if starts.size > 1:
        clash = starts[1:] < ends[:-1]
        if np.any(clash):
            index = int(np.argmax(clash)) + 1
            raise RLEError(
                f"{where}: run '{starts[index] + 1} {lengths[index]}' starts before the previous run "
                f"'{starts[index - 1] + 1} {lengths[index - 1]}' ends (runs must be sorted and not overlap)"
            )
    # Alternate background/foreground segments and expand them with one np.repeat.
    segments = np.empty(2 * starts.size + 1, dtype=np.int64)
    segments[0] = starts[0]
    segments[1:-1:2] = lengths
    segments[2:-1:2] = starts[1:] - ends[:-1]
    segments[-1] = total - ends[-1]
    pattern = np.zeros(segments.size, dtype=np.uint8)
    pattern[1::2] = 1
    flat = np.repeat(pattern, segments)
    return np.ascontiguousarray(flat.reshape((width, height)).T)


def encode(mask: np.ndarray) -> str:
    """The challenge RLE string of a 2-D mask (nonzero = foreground); '' for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D (H, W) mask, got shape {mask.shape}")
    flat = np.zeros(mask.size + 2, dtype=np.int8)
    flat[1:-1] = mask.T.reshape(-1) != 0  # column-major order
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    if changes.size == 0:
        return ""
    pairs = np.empty(changes.size, dtype=np.int64)
    pairs[0::2] = changes[0::2] + 1
    pairs[1::2] = changes[1::2] - changes[0::2]
    return " ".join(map(str, pairs.tolist()))


def area(rle: str, label: str = "") -> int:
    """Number of foreground pixels of an RLE string, without decoding it (sum of lengths)."""
    values = _parse(rle, label)
    return int(values[1::2].sum()) if values.size else 0


def _parse(rle: str | float | None, label: str) -> np.ndarray:
    if rle is None or (isinstance(rle, float) and rle != rle):  # pandas reads an empty field as NaN
        return np.zeros(0, dtype=np.int64)
    tokens = str(rle).split()
    if not tokens:
        return np.zeros(0, dtype=np.int64)
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(token for token in tokens if not _is_int(token))
        raise RLEError(f"{_where(label)}: {bad!r} is not an integer") from None
    if values.size % 2:
        raise RLEError(
            f"{_where(label)}: {values.size} numbers, an odd count (expected 'start length' pairs)"
        )
    return values


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _where(label: str) -> str:
    return f"EncodedPixels of {label}" if label else "RLE string"
