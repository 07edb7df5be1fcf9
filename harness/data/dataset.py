"""Batches for Keras from the prepared cache: shuffling per epoch, joint augmentation, standardisation.

Augmentation runs per image on the CPU (albumentations, harness.data.augment), or with
`augment_on_device` as batched tensor ops on the backend's default device (harness.data.device_augment:
the batch is read as uint8 and transformed and standardised there).

`CloudDataset` is a `keras.utils.PyDataset` (threads, not processes: memory-mapped reads are
thread-safe and the GIL is released inside NumPy/OpenCV). Everything random is derived from
`(seed, epoch, image index)`, so a batch does not depend on which thread built it, and a resumed run
that calls `set_epoch(epoch)` sees the same order and augmentation as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Sequence

import numpy as np

from harness.data import augment as augment_module
from harness.data import cache as cache_module
from harness.data import device_augment
from harness.data import split as split_module

EPSILON = 1e-6


def standardize(images: np.ndarray) -> np.ndarray:
    """float32 images with each image's own mean subtracted and divided by its std (over H, W, C).

    Accepts one image (H, W, C) or a batch (B, H, W, C). The statistics come from OpenCV's
    meanStdDev (one pass, accumulated in double precision): about 50x faster than np.mean + np.std.
    """
    import cv2

    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.dtype not in (np.uint8, np.float32, np.float64):
        batch = batch.astype(np.float32)
    out = np.empty(batch.shape, dtype=np.float32)
    for index in range(len(batch)):
        image = np.ascontiguousarray(batch[index])
        plane = image.reshape(image.shape[0], -1)  # one channel: statistics over H, W and C together
        mean, std = (float(value[0, 0]) for value in cv2.meanStdDev(plane))
        np.subtract(image, mean, out=out[index], dtype=np.float32)
        out[index] *= np.float32(1.0 / (std + EPSILON))
    return out[0] if single else out


def _make_class() -> type:
    # The class derives from keras.utils.PyDataset, so it is built on first use: importing this module
    # (for `standardize`, say) does not import Keras and TensorFlow.
    import keras

    class CloudDataset(keras.utils.PyDataset):  # type: ignore[misc, valid-type]
        """(x float32 (B, H, W, 3) standardised, y float32 (B, H, W, 4)) batches of `indices` from `cache`.

        With `augment_on_device` (augment flips or default) x and y are the backend's tensors, augmented
        and standardised on its default device (harness.data.device_augment), not NumPy arrays."""

        def __init__(
            self,
            cache: cache_module.Cache,
            indices: Sequence[int] | np.ndarray,
            batch_size: int,
            augment: str = "none",
            shuffle: bool = False,
            seed: int = 0,
            workers: int = 1,
            max_batches: int | None = None,
            target_names: Sequence[str] = (),
            augment_on_device: bool = False,
        ) -> None:
            super().__init__(workers=max(1, int(workers)), use_multiprocessing=False)
            self.cache = cache
            self.indices = np.asarray(indices, dtype=np.int64)
            if self.indices.size == 0:
                raise ValueError("CloudDataset needs at least one image index")
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            self.batch_size = int(batch_size)
            self.augment = augment
            self.shuffle = shuffle
            self.seed = int(seed)
            self.max_batches = int(max_batches) if max_batches else None
            # A model with several outputs (the presence head) gets y as {name: masks} for each name: the
            # same array, from which each output's loss derives its own target.
            self.target_names = tuple(target_names)
            self._pipelines = threading.local()  # albumentations pipelines keep state: one per thread
            augment_module.build(augment)  # fail now, on the caller's thread, for an unknown name
            self.augment_on_device = bool(augment_on_device)
            if self.augment_on_device:
                device_augment.check_name(augment)
            self.epoch = 0
            self._order = self._epoch_order(0)
            self._skip: tuple[int, int] | None = None  # (epoch, batches): placeholders, see skip_batches
            self._placeholders: dict[int, Any] = {}  # batch size -> zeros shaped like a real batch
            self._building = threading.local()  # set while a placeholder's model batch is built

        # Keras API --------------------------------------------------------------------------------
        def __len__(self) -> int:
            batches = math.ceil(self.indices.size / self.batch_size)
            return min(batches, self.max_batches) if self.max_batches else batches

        def __getitem__(self, batch_index: int) -> tuple[np.ndarray, Any]:
            if not 0 <= batch_index < len(self):
                raise IndexError(f"batch {batch_index} out of range (0..{len(self) - 1})")
            chosen = self._order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            if self._skip is not None and self.epoch == self._skip[0] and batch_index < self._skip[1] \
                    and not getattr(self._building, "real", False):
                return self._placeholder(batch_index, len(chosen))
            images, masks = self._device_batch(chosen) if self.augment_on_device else self._cpu_batch(chosen)
            if self.target_names:
                return images, {name: masks for name in self.target_names}
            return images, masks

        def on_epoch_end(self) -> None:
            self.set_epoch(self.epoch + 1)

        # Ours ---------------------------------------------------------------------------------------
        def set_epoch(self, epoch: int) -> None:
            """Make the next batches those of `epoch` (0-based): order and augmentation follow it."""
            self.epoch = int(epoch)
            self._order = self._epoch_order(self.epoch)

        def skip_batches(self, epoch: int, count: int) -> None:
            """Serve zero placeholders for the first `count` batches of `epoch` (0-based): a run resumed
            at batch `count` of that epoch skips those steps (see harness.run.callbacks.skip_first_batches)
            and should not spend time reading and augmenting images it discards. The others are unchanged."""
            self._skip = (int(epoch), int(count)) if count > 0 else None

        def _placeholder(self, batch_index: int, size: int) -> Any:
            # A batch the resumed run skips (trained before the interruption): zeros with the structure,
            # shapes and dtypes of a real batch (built once per batch size), so no image work per batch.
            if size not in self._placeholders:
                self._building.real = True
                try:
                    real = self[batch_index]
                finally:
                    self._building.real = False
                self._placeholders[size] = _zeros_like(real)
            return self._placeholders[size]

        def _cpu_batch(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # Augmented per image (albumentations, seeded per image), then standardised.
            images = np.empty((len(chosen), *self.cache.size, 3), dtype=np.uint8)
            masks = np.empty((len(chosen), *self.cache.size, 4), dtype=np.float32)
            pipeline = self._pipeline()
            for slot, image_index in enumerate(chosen):
                image = self.cache.images[image_index]
                mask = self.cache.masks[image_index]
                if pipeline is not None:
                    augment_module.reseed(pipeline, self._sample_seed(int(image_index)))
                    out = pipeline(image=np.asarray(image), mask=np.asarray(mask))
                    image, mask = out["image"], out["mask"]
                images[slot] = image
                masks[slot] = mask  # uint8 -> float32 in the copy itself
            return standardize(images), masks

        def _device_batch(self, chosen: np.ndarray) -> tuple[Any, Any]:
            # The uint8 batch as stored; only each sample's 8 transform numbers are drawn here, from the
            # same per-image seed as the CPU path (resume-exact), and the device does the pixel work.
            images = np.asarray(self.cache.images[chosen])  # a copy out of the memory map, in batch order
            masks = np.asarray(self.cache.masks[chosen])
            seeds = [self._sample_seed(int(image_index)) for image_index in chosen]
            return device_augment.augment(self.augment, images, masks, seeds)

        def _epoch_order(self, epoch: int) -> np.ndarray:
            if not self.shuffle:
                return self.indices
            return np.random.default_rng([self.seed, epoch]).permutation(self.indices)

        def _sample_seed(self, image_index: int) -> int:
            return int(np.random.default_rng([self.seed, self.epoch, image_index]).integers(2**31 - 1))

        def _pipeline(self) -> Any:
            if not hasattr(self._pipelines, "value"):
                self._pipelines.value = augment_module.build(self.augment)
            return self._pipelines.value

    return CloudDataset


def _zeros_like(batch: Any) -> Any:
    """Zeros shaped like `batch`: arrays inside tuples, lists and dicts, structure kept."""
    if isinstance(batch, dict):
        return {key: _zeros_like(value) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_zeros_like(value) for value in batch)
    return np.zeros_like(batch)


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    # `from harness.data.dataset import CloudDataset` builds the class (and imports Keras) on demand.
    global _CLASS
    if name == "CloudDataset":
        if _CLASS is None:
            _CLASS = _make_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class Datasets:
    train: Any  # CloudDataset
    val: Any  # CloudDataset
    cache: cache_module.Cache
    train_idx: np.ndarray
    val_idx: np.ndarray


def open_or_prepare(config: Any, progress: bool = True) -> cache_module.Cache:
    """The cache for `config` (data_dir, cache_dir, image_size), preparing it first if missing or stale."""
    from pathlib import Path

    from harness.errors import DataError

    cache_dir = config.resolved_cache_dir()
    size = config.image_hw
    data_dir = Path(config.data_dir)
    has_labels = (data_dir / "train.csv").is_file()
    try:
        return cache_module.open_cache(cache_dir, size, data_dir=data_dir if has_labels else None)
    except DataError:
        if not has_labels:
            raise
    height, width = size
    print(
        f"no current cache for {data_dir} at {height}x{width} in {cache_dir}: preparing it now "
        f"(same as `harness prepare {data_dir} --size {height}x{width} --cache {cache_dir}`)",
        flush=True,
    )
    cache_module.prepare(data_dir, size, cache_dir=cache_dir, workers=None, progress=progress)
    return cache_module.open_cache(cache_dir, size, data_dir=data_dir)


def make_datasets(config: Any) -> Datasets:
    """Training and validation datasets for a `harness.config.Config` (split by `seed`)."""
    cache = open_or_prepare(config)
    train_idx, val_idx = split_module.split_indices(cache.presence, config.val_fraction, config.seed)
    dataset_class = __getattr__("CloudDataset")
    # The presence head's output names (harness.model.heads); its target is derived from the mask.
    target_names = ("mask", "presence") if getattr(config, "presence_head", False) else ()
    train = dataset_class(
        cache,
        train_idx,
        batch_size=config.batch_size,
        augment=config.augment,
        augment_on_device=getattr(config, "augment_device", False),
        shuffle=True,
        seed=config.seed,
        workers=config.workers,
        max_batches=config.steps_per_epoch or None,
        target_names=target_names,
    )
    val = dataset_class(
        cache,
        val_idx,
        batch_size=config.batch_size,
        augment="none",
        shuffle=False,
        seed=config.seed,
        workers=config.workers,
        max_batches=config.validation_steps or None,
        target_names=target_names,
    )
    return Datasets(train=train, val=val, cache=cache, train_idx=train_idx, val_idx=val_idx)
