"""RLE in the challenge's convention: golden cases, property round trips, and every malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.data import rle
from harness.errors import DataError


def test_golden_reference_example_is_column_major_and_one_indexed():
    # 0011165.jpg_Fish in the reference report starts with these two runs, at 1400x2100 (HxW).
    text = "264918 937 266318 937"
    mask = rle.decode(text, 1400, 2100, label="0011165.jpg_Fish")
    rows, cols = np.nonzero(mask)
    assert mask.shape == (1400, 2100) and mask.dtype == np.uint8
    assert set(cols.tolist()) == {189, 190}
    assert rows.min() == 317 and rows.max() == 1253
    assert mask[317:1254, 189].all() and mask[317:1254, 190].all()
    assert mask.sum() == 2 * 937
    assert rle.encode(mask) == text


def test_small_hand_worked_example():
    # 3x4 image, pixels numbered down the columns: 1 2 3 | 4 5 6 | 7 8 9 | 10 11 12.
    mask = rle.decode("2 2 7 1 12 1", 3, 4)
    expected = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(mask, expected)
    assert rle.encode(expected) == "2 2 7 1 12 1"


def test_adjacent_runs_decode_and_reencode_merged():
    mask = rle.decode("1 2 3 2", 3, 3)
    assert mask.T.reshape(-1).tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert rle.encode(mask) == "1 4"


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_empty_string_is_an_empty_mask(empty):
    mask = rle.decode(empty, 5, 7)
    assert mask.shape == (5, 7) and not mask.any()


def test_encode_of_empty_mask_is_empty_string_and_full_mask_one_run():
    assert rle.encode(np.zeros((4, 6), np.uint8)) == ""
    assert rle.encode(np.ones((4, 6), np.uint8)) == "1 24"
    assert rle.area("1 24 30 6") == 30


def test_encode_treats_any_nonzero_as_foreground_and_rejects_3d():
    assert rle.encode(np.array([[0, 255], [True, 0]])) == "2 2"
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 4)))


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40), elements=st.integers(0, 1)))
def test_decode_inverts_encode(mask):
    height, width = mask.shape
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), height, width), mask)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_encode_inverts_decode_for_valid_canonical_strings(data):
    height = data.draw(st.integers(1, 30))
    width = data.draw(st.integers(1, 30))
    total = height * width
    # Random sorted, non-touching runs: the canonical form encode produces.
    cuts = sorted(data.draw(st.sets(st.integers(1, total), max_size=20)))
    pairs = []
    for start, stop in zip(cuts[0::2], cuts[1::2]):
        if not pairs or start > pairs[-1][0] + pairs[-1][1]:
            pairs.append((start, stop - start + 1))
    text = " ".join(f"{start} {length}" for start, length in pairs)
    mask = rle.decode(text, height, width)
    assert int(mask.sum()) == sum(length for _, length in pairs) == rle.area(text)
    assert rle.encode(mask) == text


def test_encode_matches_a_per_pixel_reference():
    rng = np.random.default_rng(3)
    mask = (rng.random((17, 23)) < 0.4).astype(np.uint8)
    runs, start = [], None
    flat = mask.flatten(order="F")
    for position, value in enumerate(flat, start=1):
        if value and start is None:
            start = position
        if not value and start is not None:
            runs += [start, position - start]
            start = None
    if start is not None:
        runs += [start, len(flat) + 1 - start]
    assert rle.encode(mask) == " ".join(map(str, runs))


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 3", "odd count"),
        ("1 2 x 3", "'x' is not an integer"),
        ("1 2.5", "'2.5' is not an integer"),
        ("1 0", "length 0 is not positive"),
        ("3 -2", "length -2 is not positive"),
        ("0 2", "start 0 is below 1"),
        ("11 3", "past the 3x4 image"),
        ("5 2 1 2", "sorted"),
        ("99999999999999999999 1", "too large"),
        ("1 2 3 4 5", "odd count"),
        ("1 3 2 2", "overlap"),
    ],
)
def test_malformed_strings_raise_naming_the_label(text, message):
    with pytest.raises(rle.RLEError, match=message) as caught:
        rle.decode(text, 3, 4, label="abc1234.jpg_Gravel")
    assert "abc1234.jpg_Gravel" in str(caught.value)
    assert isinstance(caught.value, DataError)
