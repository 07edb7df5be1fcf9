"""Inference on a trained run: its config, its validation split, its model's probability maps.

The validation split is the training run's own (same cache, same `split_indices(presence,
val_fraction, seed)`), so post-processing is tuned and scored on images the model never trained on.
Predicting is the slow part: the validation predictions are cached in `RUN_DIR/cache/`, keyed by
best.keras's modification time, the image count and the TTA mode, so a second `harness postprocess`
or `harness evaluate` of the same model skips the model entirely.

The cache holds float16 LOGITS, not float16 probabilities: float16 steps are 0.0005 wide near 0.5, so
rounding probabilities flips every pixel in (0.5, 0.50024] at the challenge's threshold, and one such
pixel turns an empty-on-empty pair (Dice 1) into 0 (on a 3-epoch UNet: 185 of 1200 pairs changed).
Logits keep their sign exactly (float16 is finest near 0), so threshold 0.5 gives the same masks as
the float32 prediction, and other thresholds move by at most about 1e-4 in probability.

Models with a presence head (config `presence_head: true`) have two outputs, "mask" and "presence"
(`model_outputs`); their per-class presence logits are cached beside the pixel logits
(`val-presence-...npy`, float32) and averaged like the maps under TTA and in ensembles.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from harness import config as config_module
from harness import io, runfolder
from harness.errors import HarnessError

TTA_MODES = ("none", "flips")
PREDICT_BATCH = 8


@dataclasses.dataclass
class RunInfo:
    run_dir: Path
    run_id: str
    sweep_id: str | None
    config: config_module.Config


@dataclasses.dataclass
class Validation:
    """The validation split of a run: uint8 images and masks (memory-mapped) and their names."""

    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W, 4) uint8
    names: list[str]
    indices: np.ndarray  # positions in the cache


def load_run(run_dir: str | os.PathLike[str], data_dir: str | None = None, cache_dir: str | None = None) -> RunInfo:
    """The run's saved config (config.json), with the data location optionally moved."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HarnessError(f"run folder not found: {run_dir}")
    saved = runfolder.read_config(run_dir)
    config_path = run_dir / runfolder.CONFIG_FILE
    if saved is None:
        raise HarnessError(f"{config_path} is missing: not a run folder (written when training starts)")
    values = {key: value for key, value in saved.items() if key in config_module.config_keys()}
    if data_dir:
        values["data_dir"] = str(data_dir)
        # A moved data folder brings its cache unless one is named.
        values["cache_dir"] = str(cache_dir or "")
    elif cache_dir:
        values["cache_dir"] = str(cache_dir)
    config = config_module.from_dict(values, source=str(config_path))
    return RunInfo(run_dir, str(saved.get("run_id") or run_dir.name), saved.get("sweep_id"), config)


def validation_split(config: config_module.Config, limit: int = 0) -> Validation:
    """The run's validation images (the first `limit` of them when > 0), from the data cache."""
    from harness.data import dataset as dataset_module
    from harness.data import split as split_module

    cache = dataset_module.open_or_prepare(config, progress=True)
    _, val_idx = split_module.split_indices(cache.presence, config.val_fraction, config.seed)
    # In split order, as training's validation dataset iterates it (same batches, same batch metrics).
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if limit > 0:
        val_idx = val_idx[:limit]
    if val_idx.size == 0:
        raise HarnessError(f"the validation split of {config.data_dir} is empty (val_fraction={config.val_fraction})")
    return Validation(
        images=cache.images[val_idx],
        masks=cache.masks[val_idx],
        names=[cache.names[index] for index in val_idx],
        indices=val_idx,
    )


def load_model(run_dir: str | os.PathLike[str]):
    from harness.run import checkpoint

    return checkpoint.load_best(run_dir)


OUTPUT_MASK = "mask"
OUTPUT_PRESENCE = "presence"


@dataclasses.dataclass
class Maps:
    """A model's answer for a set of images: pixel probabilities and, with a presence head, the
    classifier's per-class probabilities."""

    probabilities: np.ndarray  # (N, H, W, 4) float32
    presence: np.ndarray | None  # (N, 4) float32, or None for a model without a presence head


def model_outputs(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(mask_logits (B, H, W, 4), presence_logits (B, 4) or None) of one standardised batch.

    A model built with `presence_head: true` has two outputs named "mask" and "presence"; without it,
    one output. Outputs are logits by contract; an output layer that applies a sigmoid (the UNet and
    the library model of today) gives probabilities, turned into logits here (float64, so the sign,
    i.e. the side of 0.5, is exact; 0 and 1 become -inf and inf).
    """
    raw = model(np.ascontiguousarray(x), training=False)
    names = list(getattr(model, "output_names", None) or [])
    sigmoid = _sigmoid_outputs(model)
    if isinstance(raw, dict):
        outputs = {name: raw[name] for name in raw}
    elif isinstance(raw, (list, tuple)):
        if len(raw) != len(names):
            raise HarnessError(f"model has {len(raw)} outputs but {len(names)} output names {names}")
        outputs = dict(zip(names, raw))
    else:
        outputs = {names[0] if names else OUTPUT_MASK: raw}
    if len(outputs) == 1:
        (name, mask), = outputs.items()
        return _as_logits(mask, sigmoid.get(name, False)), None
    if set(outputs) != {OUTPUT_MASK, OUTPUT_PRESENCE}:
        raise HarnessError(f"a model with {len(outputs)} outputs must name them {OUTPUT_MASK!r} and "
                           f"{OUTPUT_PRESENCE!r}, got {sorted(outputs)}")
    return (_as_logits(outputs[OUTPUT_MASK], sigmoid.get(OUTPUT_MASK, False)),
            _as_logits(outputs[OUTPUT_PRESENCE], sigmoid.get(OUTPUT_PRESENCE, False)))


def _sigmoid_outputs(model: Any) -> dict[str, bool]:
    """{output name: True if the layer making it ends in a sigmoid} of a functional Keras model."""
    import keras

    flags = {}
    names = list(getattr(model, "output_names", None) or [])
    for name, tensor in zip(names, getattr(model, "outputs", None) or []):
        history = getattr(tensor, "_keras_history", None)
        layer = history[0] if history else None
        activation = getattr(layer, "activation", None)
        flags[name] = activation is keras.activations.sigmoid
    return flags


def _as_logits(values: Any, is_probability: bool) -> np.ndarray:
    values = np.asarray(values)
    if not is_probability:
        return values.astype(np.float32)
    probability = values.astype(np.float64)
    with np.errstate(divide="ignore"):
        return (np.log(probability) - np.log1p(-probability)).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities of logits (computed in float64; -inf and inf give 0 and 1)."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def predict_batches(model: Any, batches: Iterator[np.ndarray], tta: str = "none") -> Iterator[Maps]:
    """Maps of uint8 image batches; `tta='flips'` averages the image's, its hflip's and its vflip's
    probabilities (presence probabilities too)."""
    from harness.data import dataset as dataset_module

    if tta not in TTA_MODES:
        raise HarnessError(f"--tta {tta!r} is not one of: {', '.join(TTA_MODES)}")
    for images in batches:
        x = dataset_module.standardize(images)
        mask_logits, presence_logits = model_outputs(model, x)
        prediction = sigmoid(mask_logits)
        presence = None if presence_logits is None else sigmoid(presence_logits)
        if tta == "flips":
            # Each flip is undone on the prediction before averaging, so the maps stay aligned.
            for flipped, undo in ((x[:, :, ::-1], lambda maps: maps[:, :, ::-1]), (x[:, ::-1], lambda maps: maps[:, ::-1])):
                flipped_masks, flipped_presence = model_outputs(model, flipped)
                prediction = prediction + undo(sigmoid(flipped_masks))
                if presence is not None:
                    presence = presence + sigmoid(flipped_presence)
            prediction = prediction / 3.0
            presence = None if presence is None else presence / 3.0
        yield Maps(prediction.astype(np.float32), None if presence is None else presence.astype(np.float32))


def predict_maps(
    model: Any, images: np.ndarray, tta: str = "none", batch_size: int = PREDICT_BATCH, progress: bool = True, desc: str = "predicting"
) -> Maps:
    """Maps of uint8 images (N, H, W, 3), batch by batch with a progress bar."""
    import tqdm

    starts = range(0, len(images), batch_size)
    batches = (np.asarray(images[start:start + batch_size]) for start in starts)
    parts = list(tqdm.tqdm(predict_batches(model, batches, tta), total=len(starts), desc=desc, unit="batch", disable=not progress))
    if not parts:
        return Maps(np.zeros((0,) + tuple(images.shape[1:3]) + (4,), np.float32), None)
    presence = None if parts[0].presence is None else np.concatenate([part.presence for part in parts], axis=0)
    return Maps(np.concatenate([part.probabilities for part in parts], axis=0), presence)


def encode_logits(probabilities: np.ndarray) -> np.ndarray:
    """float16 logits of probabilities (computed in float64 so the sign is exact; 0 and 1 become -inf, inf)."""
    probabilities = np.asarray(probabilities)
    logits = np.empty(probabilities.shape, dtype=np.float16)
    with np.errstate(divide="ignore"):
        for index in range(len(probabilities)):  # image by image: float64 temporaries stay small
            values = probabilities[index].astype(np.float64)
            logits[index] = np.log(values) - np.log1p(-values)
    return logits


def decode_logits(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities of float16 logits (the sigmoid, in float64, image by image)."""
    logits = np.asarray(logits)
    probabilities = np.empty(logits.shape, dtype=np.float32)
    with np.errstate(over="ignore"):
        for index in range(len(logits)):
            probabilities[index] = 1.0 / (1.0 + np.exp(-logits[index].astype(np.float64)))
    return probabilities


def cache_path(run_dir: Path, count: int, tta: str, kind: str = "logits") -> Path:
    """RUN_DIR/cache/val-<kind>-<best.keras mtime>-<count>-<tta>.npy (kind: logits or presence)."""
    best = run_dir / runfolder.BEST_FILE
    if not best.exists():
        raise HarnessError(f"no best model in {run_dir}: {runfolder.BEST_FILE} is missing (has the run finished an epoch?)")
    return run_dir / runfolder.CACHE_DIR / f"val-{kind}-{best.stat().st_mtime_ns}-{count}-{tta}.npy"


def validation_maps(
    run_dir: str | os.PathLike[str],
    validation: Validation,
    tta: str = "none",
    model_loader: Callable[[], Any] | None = None,
    progress: bool = True,
) -> Maps:
    """The model's validation maps, from RUN_DIR/cache/ or predicted once and cached.

    The presence probabilities (models with a presence head) are cached as float32 logits beside the
    pixel logits, and written first: a pixel file without a presence file means "no presence head".
    """
    run_dir = Path(run_dir)
    path = cache_path(run_dir, len(validation.names), tta)
    presence_path = cache_path(run_dir, len(validation.names), tta, kind="presence")
    if path.exists():
        try:
            cached = np.load(path)
            presence = np.load(presence_path) if presence_path.exists() else None
            if cached.shape == validation.masks.shape and (presence is None or presence.shape == (len(cached), cached.shape[-1])):
                return Maps(decode_logits(cached), None if presence is None else sigmoid(presence))
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    model = (model_loader or (lambda: load_model(run_dir)))()
    maps = predict_maps(model, validation.images, tta=tta, progress=progress, desc="predicting validation")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"val-*-{tta}.npy"):
        stale.unlink(missing_ok=True)  # an older model's predictions
    presence_logits = None if maps.presence is None else _as_logits(maps.presence, is_probability=True)
    if presence_logits is not None:
        with io.atomic_path(presence_path, suffix=".npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, presence_logits)
    logits = encode_logits(maps.probabilities)
    with io.atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, logits)
    # What was cached, not the float32 prediction: the first and every later call see the same maps.
    return Maps(decode_logits(logits), None if presence_logits is None else sigmoid(presence_logits))
