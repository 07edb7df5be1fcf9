"""Train/validation split: a partition, deterministic, stratified by class set."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.data.split import split_indices


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(bool, st.tuples(st.integers(2, 300), st.just(4))),
    st.floats(0.05, 0.95),
    st.integers(0, 2**31 - 1),
)
def test_split_is_a_deterministic_partition(presence, fraction, seed):
    train, val = split_indices(presence, fraction, seed)
    count = len(presence)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(count))
    assert 1 <= len(val) <= count - 1 and len(train) >= 1
    assert len(val) == min(max(round(count * fraction), 1), count - 1)
    again_train, again_val = split_indices(presence.copy(), fraction, seed)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)


def test_each_class_set_is_split_in_proportion():
    rng = np.random.default_rng(0)
    presence = rng.random((2000, 4)) < [0.5, 0.43, 0.53, 0.68]
    train, val = split_indices(presence, 0.2, seed=1)
    keys = presence @ (1 << np.arange(4))
    for key in np.unique(keys):
        group = np.flatnonzero(keys == key)
        in_val = np.isin(group, val).sum()
        assert abs(in_val - 0.2 * len(group)) <= 1, f"class set {key}: {in_val} of {len(group)} in val"
    np.testing.assert_allclose(presence[val].mean(0), presence[train].mean(0), atol=0.02)


def test_seed_changes_the_split_but_not_its_sizes():
    presence = np.random.default_rng(5).random((200, 4)) < 0.5
    first = split_indices(presence, 0.25, seed=1)
    second = split_indices(presence, 0.25, seed=2)
    assert len(first[1]) == len(second[1]) == 50
    assert not np.array_equal(first[1], second[1])


def test_tiny_strata_still_give_one_validation_image():
    presence = np.eye(4, dtype=bool)[[0, 1, 2, 3, 0]]  # four strata of one or two images
    train, val = split_indices(presence, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 4


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction_is_rejected(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(np.ones((10, 4), bool), fraction, 0)
