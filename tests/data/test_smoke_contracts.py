"""Quick end-to-end check of the data contracts other areas build on (synth -> prepare -> datasets)."""

from __future__ import annotations

import numpy as np

from harness.data import cache, dataset


def test_make_datasets_serves_standardised_batches(tiny_config):
    data = dataset.make_datasets(tiny_config)
    assert len(data.train_idx) + len(data.val_idx) == len(data.cache)
    assert not set(data.train_idx.tolist()) & set(data.val_idx.tolist())
    x, y = data.train[0]
    assert x.shape == (4, 64, 96, 3) and x.dtype == np.float32
    assert y.shape == (4, 64, 96, 4) and y.dtype == np.float32
    assert set(np.unique(y).tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1.0, atol=1e-3)


def test_prepared_cache_opens(prepared_cache):
    opened = cache.open_cache(prepared_cache, "64x96")
    assert opened.images.shape == (24, 64, 96, 3)
    assert opened.masks.shape == (24, 64, 96, 4)
