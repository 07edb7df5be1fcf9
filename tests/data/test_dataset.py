"""CloudDataset and make_datasets: batches, standardisation, per-epoch shuffling, resumable randomness."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from harness.data import cache, dataset


@pytest.fixture(scope="module")
def opened(prepared_cache):
    return cache.open_cache(prepared_cache, "64x96")


def test_standardize_per_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 8, 10, 3)).astype(np.uint8)
    images[1] = 7  # a constant image must not divide by zero
    out = dataset.standardize(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[[0, 2]].mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out[[0, 2]].std(axis=(1, 2, 3)), 1, atol=1e-4)
    assert np.all(out[1] == 0)
    single = dataset.standardize(images[0])
    np.testing.assert_allclose(single, out[0], rtol=1e-6)


def test_batches_without_augmentation_are_the_cache_standardised(opened):
    data = dataset.CloudDataset(opened, [3, 1, 4, 5, 9], batch_size=2)
    assert len(data) == 3
    x, y = data[1]
    np.testing.assert_allclose(x, dataset.standardize(opened.images[[4, 5]]), rtol=1e-6)
    np.testing.assert_array_equal(y, opened.masks[[4, 5]].astype(np.float32))
    last_x, last_y = data[2]
    assert last_x.shape == (1, 64, 96, 3) and last_y.shape == (1, 64, 96, 4)
    with pytest.raises(IndexError):
        data[3]


def test_shuffle_changes_per_epoch_and_set_epoch_replays_it(opened):
    indices = np.arange(24)
    data = dataset.CloudDataset(opened, indices, batch_size=5, shuffle=True, seed=3)
    epoch0 = data._order.copy()
    assert sorted(epoch0.tolist()) == indices.tolist()
    data.on_epoch_end()
    epoch1 = data._order.copy()
    assert sorted(epoch1.tolist()) == indices.tolist() and not np.array_equal(epoch0, epoch1)
    resumed = dataset.CloudDataset(opened, indices, batch_size=5, shuffle=True, seed=3)
    resumed.set_epoch(1)
    np.testing.assert_array_equal(resumed._order, epoch1)
    for batch in range(len(data)):
        np.testing.assert_array_equal(data[batch][0], resumed[batch][0])


def test_max_batches_caps_length_and_each_epoch_sees_a_different_part(opened):
    data = dataset.CloudDataset(opened, np.arange(24), batch_size=4, shuffle=True, seed=0, max_batches=2)
    assert len(data) == 2
    first = data._order[:8].copy()
    data.on_epoch_end()
    assert not np.array_equal(first, data._order[:8])
    assert len(dataset.CloudDataset(opened, np.arange(24), batch_size=4)) == 6


def test_augmentation_is_seeded_per_sample_and_independent_of_call_order(opened):
    make = lambda: dataset.CloudDataset(opened, np.arange(12), batch_size=4, augment="default", shuffle=True, seed=7)  # noqa: E731
    forward, backward = make(), make()
    forward_batches = [forward[i] for i in range(3)]
    backward_batches = [backward[i] for i in reversed(range(3))][::-1]
    for (x1, y1), (x2, y2) in zip(forward_batches, backward_batches):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    plain = dataset.CloudDataset(opened, np.arange(12), batch_size=4, shuffle=True, seed=7)
    differing = sum(not np.array_equal(a[1], b[1]) for a, b in zip(forward_batches, [plain[i] for i in range(3)]))
    assert differing >= 1, "augmentation should change some masks"
    for _, y in forward_batches:
        assert set(np.unique(y).tolist()) <= {0.0, 1.0}


def test_threaded_loading_through_keras_gives_the_same_batches(opened):
    import keras

    # Keras iterates a PyDataset with workers > 1 through a thread pool; results must not depend on it.
    single = dataset.CloudDataset(opened, np.arange(16), batch_size=4, augment="flips", shuffle=True, seed=1, workers=1)
    threaded = dataset.CloudDataset(opened, np.arange(16), batch_size=4, augment="flips", shuffle=True, seed=1, workers=2)
    model = keras.Sequential([keras.Input((64, 96, 3)), keras.layers.Lambda(lambda x: x)])
    np.testing.assert_allclose(model.predict(single, verbose=0), model.predict(threaded, verbose=0), rtol=1e-6)


def test_bad_arguments(opened):
    with pytest.raises(ValueError, match="at least one"):
        dataset.CloudDataset(opened, [], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        dataset.CloudDataset(opened, [0], batch_size=0)
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown augmentation"):
        dataset.CloudDataset(opened, [0], batch_size=1, augment="nope")


def test_make_datasets_splits_and_configures(tiny_config):
    config = dataclasses.replace(tiny_config, steps_per_epoch=2, validation_steps=1, val_fraction=0.25)
    data = dataset.make_datasets(config)
    assert len(data.val_idx) == 6 and len(data.train_idx) == 18
    assert len(data.train) == 2 and len(data.val) == 1
    assert data.train.augment == "flips" and data.train.shuffle
    assert data.val.augment == "none" and not data.val.shuffle
    again = dataset.make_datasets(config)
    np.testing.assert_array_equal(data.val_idx, again.val_idx)


def test_make_datasets_prepares_a_missing_cache(synth_dir, tiny_config, tmp_path, capsys):
    data_dir = tmp_path / "fresh"
    shutil.copytree(synth_dir, data_dir, ignore=shutil.ignore_patterns("cache"))
    config = dataclasses.replace(tiny_config, data_dir=str(data_dir), cache_dir="", image_size="32x48")
    data = dataset.make_datasets(config)
    assert "preparing it now" in capsys.readouterr().out
    assert (data_dir / "cache" / "32x48" / "index.json").exists()
    assert data.train[0][0].shape[1:] == (32, 48, 3)


def test_skipped_batches_of_a_resumed_epoch_are_zero_placeholders_and_the_rest_unchanged(opened):
    """Exact resume (harness.run.callbacks.skip_first_batches): the first k batches of the resumed epoch
    are zeros shaped like real batches (also the short last one); every other batch is the real one."""
    indices = list(range(9))
    reference = dataset.CloudDataset(opened, indices, batch_size=2, augment="flips", shuffle=True, seed=3, workers=2)
    resumed = dataset.CloudDataset(opened, indices, batch_size=2, augment="flips", shuffle=True, seed=3, workers=2)
    for data in (reference, resumed):
        data.set_epoch(4)
    resumed.skip_batches(4, 5)  # all 5 batches, as after a signal during validation
    resumed.skip_batches(4, 2)
    for index in range(len(resumed)):
        (x, y), (x_real, y_real) = resumed[index], reference[index]
        assert x.shape == x_real.shape and y.shape == y_real.shape and x.dtype == x_real.dtype
        if index < 2:
            assert not x.any() and not y.any()
        else:
            np.testing.assert_array_equal(x, x_real)
            np.testing.assert_array_equal(y, y_real)
    resumed.on_epoch_end()  # the next epoch is untouched
    reference.on_epoch_end()
    np.testing.assert_array_equal(resumed[0][0], reference[0][0])
    resumed.set_epoch(4)
    resumed.skip_batches(4, 5)
    assert resumed[4][0].shape[0] == 1 and not resumed[4][0].any()  # the short last batch too
