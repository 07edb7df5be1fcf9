"""Post-processing: per class, a presence gate, a probability threshold and a minimum component size,
or the decision to drop the class altogether.

Pure functions on probability maps `(N, H, W, C)` (float), truth masks `(N, H, W, C)` ({0, 1}) and
presence scores `(N, C)` (float). For each class the search picks the candidate that maximises the
challenge metric for that class (the mean Dice over images, an empty prediction on an empty truth
scoring 1); the challenge metric is the mean over classes, so tuning each class on its own maximises
it exactly.

A candidate is `(threshold, min_size, p_min, area_min)`:
    gate: drop the whole mask when the image's presence score of the class < p_min (p_min = 0: off),
          unless the class is the image's most likely one and `keep_top` is on
    mask = probability > threshold
    keep the 8-connected components with area >= min_size
    drop the whole mask when the kept area < area_min (area_min = 0: off)
Beside the candidates, every class has the EMPTY decision ("drop": never predict it). Its score is the
share of images without the class; the search takes it whenever no candidate scores higher on the
tuning images, so a tuned class never scores below its own empty baseline there.

Presence score of an image and class (`presence_scores`): the mean of its `top_k` largest pixel
probabilities ("pixels"; top_k = 1 is the largest probability, the old mask-level rule), the
classifier probability of a model with a presence head ("classifier"), or the mean of both ("mean").
`keep_top`: the class with the largest presence score of each image is never gated away (every image
of the challenge has at least one class).

Nothing here reads or writes a file: tuning a run (`harness.evaluate.tuning`) and its postprocess.json
(`harness.evaluate.postprocess_file`) are built on these.

Two searches give the same answer (a test holds them to it, bit for bit):
- `search` (fast): per threshold, the connected components of each image are computed ONCE; the kept
  area and kept intersection with the truth of every min_size come from the component areas and the
  per-component intersections (`np.bincount` of the labels over the truth pixels), and the gate and the
  area rule are broadcasts; one pass scores every size and rule at once.
- `search_reference` (straightforward): every candidate thresholds, labels and filters every image
  again through `postprocess_mask`, the function `apply_postprocess` uses.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from harness import CLASSES
from harness.errors import HarnessError

# Minimum sizes are given at the challenge's submission resolution and scaled to the image size.
REFERENCE_HW = (350, 525)
# Up to 0.90 and up to 40 000 px (22% of the image): far enough that a class with large, unsure
# components can still be filtered away; beyond that the explicit empty decision takes over.
DEFAULT_THRESHOLDS = tuple(round(0.30 + 0.05 * step, 2) for step in range(13))  # 0.30 .. 0.90
DEFAULT_MIN_SIZES = (0, 100, 500, 1000, 2500, 5000, 7500, 10000, 15000, 20000, 25000, 30000, 40000)
PRESENCE_THRESHOLDS = (0.0,) + tuple(round(0.10 + 0.05 * step, 2) for step in range(17))  # off, 0.10 .. 0.90
RULE_AREA_MINS = (0, 1000, 2500, 5000, 10000)
RANDOM_THRESHOLD_RANGE = (0.2, 0.9)
DEFAULT_THRESHOLD = 0.5

PRESENCE_SOURCES = ("pixels", "classifier", "mean")
DEFAULT_TOP_K = 500  # pixels at 350x525 (0.27% of the image), scaled like the minimum sizes


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The candidates: every combination of these values (min sizes and areas in pixels)."""

    thresholds: tuple[float, ...]
    min_sizes: tuple[int, ...]
    p_mins: tuple[float, ...] = (0.0,)
    area_mins: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        for name in ("thresholds", "min_sizes", "p_mins", "area_mins"):
            values = getattr(self, name)
            if not values:
                raise HarnessError(f"post-processing search: '{name}' is empty")
        if any(not 0.0 <= value < 1.0 for value in self.thresholds):
            raise HarnessError(f"post-processing search: thresholds must be in [0, 1), got {self.thresholds}")
        if any(value < 0 for value in self.min_sizes + self.area_mins):
            raise HarnessError("post-processing search: sizes must be >= 0")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.thresholds), len(self.min_sizes), len(self.p_mins), len(self.area_mins))

    @property
    def candidates(self) -> int:
        return int(np.prod(self.shape))

    def to_dict(self) -> dict[str, list]:
        return {key: list(value) for key, value in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Presence:
    """How presence scores are made (the same for every class, so 'most likely class' is comparable)."""

    source: str = "pixels"
    top_k: int = 1
    keep_top: bool = False

    def __post_init__(self) -> None:
        if self.source not in PRESENCE_SOURCES:
            raise HarnessError(f"presence source {self.source!r} is not one of: {', '.join(PRESENCE_SOURCES)}")
        if self.top_k < 1:
            raise HarnessError(f"presence top_k must be >= 1, got {self.top_k}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ClassChoice:
    threshold: float
    min_size: int
    p_min: float
    area_min: int
    score: float  # mean Dice over images of this class after post-processing (the empty score if dropped)
    drop: bool = False  # the empty decision won: the class is never predicted
    kept_score: float = float("nan")  # the best candidate that predicts something (what dropping beat)

    def params(self) -> dict[str, float | int | bool]:
        return {"threshold": self.threshold, "min_size": self.min_size, "p_min": self.p_min,
                "area_min": self.area_min, "drop": self.drop}


@dataclasses.dataclass
class SearchResult:
    space: SearchSpace
    choices: list[ClassChoice]  # one per class, in CLASSES order
    scores: np.ndarray  # (C, T, S, P, A): mean Dice of every candidate
    empty: np.ndarray  # (C,): mean Dice of predicting nothing (the share of images without the class)
    seconds: float


def scale_sizes(sizes: Iterable[int], image_hw: tuple[int, int]) -> tuple[int, ...]:
    """Pixel counts given at 350x525 scaled to `image_hw`, rounded, duplicates removed, order kept."""
    factor = (image_hw[0] * image_hw[1]) / (REFERENCE_HW[0] * REFERENCE_HW[1])
    scaled: list[int] = []
    for size in sizes:
        value = int(round(size * factor))
        if value not in scaled:
            scaled.append(value)
    return tuple(scaled)


def scaled_top_k(top_k: int, image_hw: tuple[int, int]) -> int:
    """A top-k pixel count given at 350x525, at `image_hw` (at least 1)."""
    return max(1, scale_sizes([top_k], image_hw)[0])


def build_space(
    image_hw: tuple[int, int],
    trials: int = 0,
    mask_rule: bool = False,
    seed: int = 0,
    thresholds: Sequence[float] | None = None,
    min_sizes: Sequence[int] | None = None,
    presence_gate: bool = True,
) -> SearchSpace:
    """The default search: thresholds 0.30..0.90 step 0.05, or `trials` random thresholds.

    Every minimum size and presence threshold is scored for each threshold at no extra cost (see
    `search`), so random trials draw thresholds only. `presence_gate` adds the presence thresholds
    (`PRESENCE_THRESHOLDS`), `mask_rule` the minimum kept areas (`RULE_AREA_MINS`).
    """
    if thresholds is None:
        if trials:
            if trials < 1:
                raise HarnessError(f"--trials must be >= 1, got {trials}")
            generator = np.random.default_rng(seed)
            drawn = generator.uniform(*RANDOM_THRESHOLD_RANGE, size=trials)
            thresholds = sorted({round(float(value), 3) for value in drawn})
        else:
            thresholds = DEFAULT_THRESHOLDS
    if min_sizes is None:
        min_sizes = scale_sizes(DEFAULT_MIN_SIZES, image_hw)
    p_mins = PRESENCE_THRESHOLDS if presence_gate else (0.0,)
    area_mins = scale_sizes(RULE_AREA_MINS, image_hw) if mask_rule else (0,)
    return SearchSpace(tuple(float(t) for t in thresholds), tuple(int(s) for s in min_sizes), tuple(p_mins), tuple(area_mins))


# --- presence scores -------------------------------------------------------------------------------------
def top_k_mean(probabilities: np.ndarray, top_k: int) -> np.ndarray:
    """(N, H, W, C) -> (N, C): the mean of each map's `top_k` largest values (top_k = 1: the maximum)."""
    probabilities = np.asarray(probabilities)
    count, height, width, classes = probabilities.shape
    k = min(int(top_k), height * width)
    scores = np.empty((count, classes), dtype=np.float64)
    for channel in range(classes):
        values = np.asarray(probabilities[..., channel], dtype=np.float32).reshape(count, -1)
        if k == 1:
            scores[:, channel] = values.max(axis=1)
        else:
            largest = np.partition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k:]
            scores[:, channel] = largest.astype(np.float64).mean(axis=1)
    return scores


def presence_scores(probabilities: np.ndarray, classifier: np.ndarray | None, presence: Presence) -> np.ndarray:
    """(N, C) presence scores of `presence.source` from pixel maps and classifier probabilities (N, C)."""
    if presence.source != "pixels" and classifier is None:
        raise HarnessError(f"presence source {presence.source!r} needs a model with a presence head "
                           "(config presence_head: true); this model has none: use source 'pixels'")
    if presence.source == "classifier":
        return np.asarray(classifier, dtype=np.float64)
    pixels = top_k_mean(probabilities, presence.top_k)
    if presence.source == "pixels":
        return pixels
    return (pixels + np.asarray(classifier, dtype=np.float64)) / 2.0


def most_likely(scores: np.ndarray) -> np.ndarray:
    """(N, C) bool: True at each image's largest presence score (the first on ties)."""
    scores = np.asarray(scores)
    protected = np.zeros(scores.shape, dtype=bool)
    protected[np.arange(len(scores)), np.argmax(scores, axis=1)] = True
    return protected


def gate_inputs(
    probabilities: np.ndarray, classifier: np.ndarray | None, presence: Presence
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, C), protected (N, C) bool) for the searches and `apply_postprocess`."""
    scores = presence_scores(probabilities, classifier, presence)
    protected = most_likely(scores) if presence.keep_top else np.zeros(scores.shape, dtype=bool)
    return scores, protected


# --- applying parameters -----------------------------------------------------------------------------
def postprocess_mask(
    probability: np.ndarray,
    threshold: float,
    min_size: int = 0,
    p_min: float = 0.0,
    area_min: int = 0,
    drop: bool = False,
    presence: float | None = None,
    protected: bool = False,
) -> np.ndarray:
    """One image, one class: (H, W) probabilities -> (H, W) uint8 mask in {0, 1}.

    `presence`: the image's presence score of the class (default: its largest probability);
    `protected`: the class is the image's most likely one under `keep_top` (the gate never drops it).
    """
    import cv2

    # float32 whatever the input dtype: the same comparison everywhere (search, evaluate, predict).
    values = np.asarray(probability, dtype=np.float32)
    if drop:
        return np.zeros(values.shape, dtype=np.uint8)
    mask = (values > np.float32(threshold)).astype(np.uint8)
    if min_size > 0:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_size
        keep[0] = False  # label 0 is the background
        mask = keep[labels].astype(np.uint8)
    score = float(values.max()) if presence is None else float(presence)
    if (p_min > 0.0 and not protected and score < p_min) or (area_min > 0 and int(mask.sum()) < area_min):
        mask[:] = 0
    return mask


def default_params(threshold: float = DEFAULT_THRESHOLD) -> dict[str, dict[str, float | int | bool]]:
    """Per class parameters that only threshold (what a run without postprocess.json gets)."""
    return {name: {"threshold": threshold, "min_size": 0, "p_min": 0.0, "area_min": 0, "drop": False} for name in CLASSES}


def class_params(params: Mapping[str, Any]) -> dict[str, dict[str, float | int | bool]]:
    """The per-class parameters of a postprocess.json dict (or of such a per-class mapping itself)."""
    classes = params.get("classes", params)
    result = {}
    for name in CLASSES:
        if name not in classes:
            raise HarnessError(f"post-processing parameters: class '{name}' missing (have {sorted(classes)})")
        entry = classes[name]
        try:
            drop = entry.get("drop", False)
            if not isinstance(drop, bool):
                raise ValueError(f"drop must be true or false, got {drop!r}")
            result[name] = {
                "threshold": float(entry["threshold"]),
                "min_size": int(entry.get("min_size", 0)),
                "p_min": float(entry.get("p_min", 0.0)),
                "area_min": int(entry.get("area_min", 0)),
                "drop": drop,
            }
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise HarnessError(f"post-processing parameters of class '{name}': bad or missing value ({error})") from error
    return result


def presence_settings(params: Mapping[str, Any]) -> Presence:
    """The presence settings of a postprocess.json dict; files without them use the largest probability
    (the mask-level rule of version 1), without keep_top."""
    section = params.get("presence") if isinstance(params, Mapping) else None
    if not section:
        return Presence()
    try:
        return Presence(source=str(section["source"]), top_k=int(section.get("top_k", 1)),
                        keep_top=bool(section.get("keep_top", False)))
    except (KeyError, TypeError, ValueError) as error:
        raise HarnessError(f"post-processing parameters: bad 'presence' section ({error})") from error


def apply_postprocess(probabilities: np.ndarray, params: Mapping[str, Any], classifier: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, C) probabilities -> (N, H, W, C) uint8 masks, with each class's parameters.

    `params`: a postprocess.json dict (its presence settings are used) or a per-class mapping;
    `classifier`: (N, C) presence-head probabilities, needed when the presence source uses them.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or probabilities.shape[-1] != len(CLASSES):
        raise ValueError(f"expected (N, H, W, {len(CLASSES)}) probabilities, got shape {probabilities.shape}")
    per_class = class_params(params)
    presence = presence_settings(params)
    gated = any(values["p_min"] > 0.0 and not values["drop"] for values in per_class.values())
    if gated or presence.keep_top:
        scores, protected = gate_inputs(probabilities, classifier, presence)
    else:
        scores, protected = None, np.zeros(probabilities.shape[::3], dtype=bool)
    masks = np.zeros(probabilities.shape, dtype=np.uint8)
    for channel, name in enumerate(CLASSES):
        values = per_class[name]
        for index in range(probabilities.shape[0]):
            masks[index, :, :, channel] = postprocess_mask(
                probabilities[index, :, :, channel], **values,
                presence=None if scores is None else float(scores[index, channel]),
                protected=bool(protected[index, channel]),
            )
    return masks


# --- scoring -------------------------------------------------------------------------------------------
def _dice(intersection: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image Dice from integer counts, elementwise; empty on empty scores 1 (the challenge's rule)."""
    total = predicted + truth
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1))


def _mean_over_images(dice: np.ndarray) -> np.ndarray:
    # Images on the last, contiguous axis: the same summation order whatever the leading shape, so
    # the fast and the reference search produce bit-identical scores.
    return np.ascontiguousarray(dice).mean(axis=-1)


def _check_inputs(probabilities: np.ndarray, truth: np.ndarray) -> None:
    if probabilities.shape != truth.shape:
        raise ValueError(f"probabilities {probabilities.shape} and truth {truth.shape} differ in shape")
    if probabilities.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) arrays, got shape {probabilities.shape}")
    if probabilities.shape[0] == 0:
        raise HarnessError("post-processing search: no validation images")


def _gate(probabilities: np.ndarray, scores: np.ndarray | None, protected: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Presence scores (default: each map's largest probability) and protected flags, both (N, C)."""
    if scores is None:
        scores = top_k_mean(probabilities, 1)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (probabilities.shape[0], probabilities.shape[-1]):
        raise ValueError(f"presence scores {scores.shape} do not match probabilities {probabilities.shape}")
    protected = np.zeros(scores.shape, dtype=bool) if protected is None else np.asarray(protected, dtype=bool)
    return scores, protected


def _choose(space: SearchSpace, scores: np.ndarray, empty: np.ndarray) -> list[ClassChoice]:
    choices = []
    for class_scores, empty_score in zip(scores, empty):
        # argmax takes the first best candidate in (threshold, size, p_min, area_min) order: ties go to
        # the lowest threshold and the smallest filter.
        t, s, p, a = np.unravel_index(int(np.argmax(class_scores)), class_scores.shape)
        best = float(class_scores[t, s, p, a])
        # On a tie the empty decision wins: it is the simpler answer and cannot be worse than itself.
        drop = bool(empty_score >= best)
        choices.append(
            ClassChoice(
                threshold=space.thresholds[t],
                min_size=space.min_sizes[s],
                p_min=space.p_mins[p],
                area_min=space.area_mins[a],
                score=float(empty_score) if drop else best,
                drop=drop,
                kept_score=best,
            )
        )
    return choices


def search(
    probabilities: np.ndarray,
    truth: np.ndarray,
    space: SearchSpace,
    progress: bool = False,
    presence: np.ndarray | None = None,
    protected: np.ndarray | None = None,
) -> SearchResult:
    """The fast search: components once per (class, threshold, image); every size and rule scored at once.

    `presence`: (N, C) presence scores of the gate (default: each map's largest probability);
    `protected`: (N, C) bool, pairs the gate never drops (keep_top).
    """
    import tqdm

    _check_inputs(probabilities, truth)
    presence, protected = _gate(probabilities, presence, protected)
    started = time.perf_counter()
    count, _, _, classes = probabilities.shape
    sizes = np.asarray(space.min_sizes, dtype=np.int64)
    p_mins = np.asarray(space.p_mins, dtype=np.float64)
    area_mins = np.asarray(space.area_mins, dtype=np.int64)
    scores = np.empty((classes,) + space.shape, dtype=np.float64)
    empty = np.empty(classes, dtype=np.float64)
    bar = tqdm.tqdm(total=classes * len(space.thresholds), desc="post-processing search", unit="threshold", disable=not progress)
    for channel in range(classes):
        # One float32 copy per class: comparisons on float16 are several times slower.
        values = np.asarray(probabilities[..., channel], dtype=np.float32)
        truth_pixels = [np.flatnonzero(np.asarray(truth[index, :, :, channel])) for index in range(count)]
        truth_areas = np.array([pixels.size for pixels in truth_pixels], dtype=np.int64)
        zeros = np.zeros(count, dtype=np.int64)
        empty[channel] = _mean_over_images(_dice(zeros, zeros, truth_areas))
        # Dropped by the presence gate: (N, P), the same for every threshold and size.
        gated = ((p_mins[None, :] > 0.0) & (presence[:, channel, None] < p_mins[None, :])
                 & ~protected[:, channel, None])
        for t_index, threshold in enumerate(space.thresholds):
            kept_area, kept_intersection = _kept_by_size(values, threshold, truth_pixels, sizes)
            scores[channel, t_index] = _rule_scores(kept_area, kept_intersection, truth_areas, gated, area_mins)
            bar.update(1)
    bar.close()
    return SearchResult(space, _choose(space, scores, empty), scores, empty, time.perf_counter() - started)


def _kept_by_size(values: np.ndarray, threshold: float, truth_pixels: Sequence[np.ndarray],
                  sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, S) kept area and kept overlap with the truth of every min size, one class at one threshold:
    the connected components of each image computed once (`values`: (N, H, W) float32)."""
    import cv2

    count = len(values)
    kept_area = np.zeros((count, len(sizes)), dtype=np.int64)
    kept_intersection = np.zeros((count, len(sizes)), dtype=np.int64)
    for index in range(count):
        mask = (values[index] > np.float32(threshold)).astype(np.uint8)
        components, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if components <= 1:
            continue
        areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
        # Truth pixels per component: the labels under the truth mask, counted.
        overlaps = np.bincount(labels.ravel()[truth_pixels[index]], minlength=components)[1:]
        # Components by decreasing area: those kept by a size are a prefix, so cumulative sums
        # give the kept area and overlap of every size at once.
        order = np.argsort(-areas, kind="stable")
        cumulative_area = np.concatenate(([0], np.cumsum(areas[order])))
        cumulative_overlap = np.concatenate(([0], np.cumsum(overlaps[order])))
        kept_count = np.searchsorted(-areas[order], -sizes, side="right")  # areas >= size
        kept_area[index] = cumulative_area[kept_count]
        kept_intersection[index] = cumulative_overlap[kept_count]
    return kept_area, kept_intersection


def _rule_scores(kept_area: np.ndarray, kept_intersection: np.ndarray, truth_areas: np.ndarray,
                 gated: np.ndarray, area_mins: np.ndarray) -> np.ndarray:
    """(S, P, A) mean Dice over images of one class at one threshold: the gate (`gated`: (N, P)) and the
    area rule applied to the kept areas and overlaps (N, S), broadcast to (N, S, P, A)."""
    dropped = gated[:, None, :, None] | (
        (area_mins[None, None, None, :] > 0) & (kept_area[:, :, None, None] < area_mins[None, None, None, :])
    )
    predicted = np.where(dropped, 0, kept_area[:, :, None, None])
    intersection = np.where(dropped, 0, kept_intersection[:, :, None, None])
    dice = _dice(intersection, predicted, truth_areas[:, None, None, None])
    return _mean_over_images(np.moveaxis(dice, 0, -1))


def search_reference(
    probabilities: np.ndarray,
    truth: np.ndarray,
    space: SearchSpace,
    progress: bool = False,
    presence: np.ndarray | None = None,
    protected: np.ndarray | None = None,
) -> SearchResult:
    """The straightforward search: `postprocess_mask` (one connectedComponents) per candidate and image."""
    import tqdm

    _check_inputs(probabilities, truth)
    presence, protected = _gate(probabilities, presence, protected)
    started = time.perf_counter()
    count, _, _, classes = probabilities.shape
    scores = np.empty((classes,) + space.shape, dtype=np.float64)
    empty = np.empty(classes, dtype=np.float64)
    grid = list(itertools.product(*(range(length) for length in space.shape)))
    bar = tqdm.tqdm(total=classes * len(grid), desc="post-processing search (reference)", unit="candidate", disable=not progress)
    for channel in range(classes):
        truth_masks = [np.asarray(truth[index, :, :, channel]).astype(bool) for index in range(count)]
        truth_areas = np.array([mask.sum() for mask in truth_masks], dtype=np.int64)

        def score(**values: Any) -> float:
            predicted = np.zeros(count, dtype=np.int64)
            intersection = np.zeros(count, dtype=np.int64)
            for index in range(count):
                mask = postprocess_mask(probabilities[index, :, :, channel], **values,
                                        presence=float(presence[index, channel]),
                                        protected=bool(protected[index, channel])).astype(bool)
                predicted[index] = mask.sum()
                intersection[index] = np.logical_and(mask, truth_masks[index]).sum()
            return _mean_over_images(_dice(intersection, predicted, truth_areas))

        empty[channel] = score(threshold=0.5, drop=True)
        for t, s, p, a in grid:
            scores[channel, t, s, p, a] = score(threshold=space.thresholds[t], min_size=space.min_sizes[s],
                                                p_min=space.p_mins[p], area_min=space.area_mins[a])
            bar.update(1)
    bar.close()
    return SearchResult(space, _choose(space, scores, empty), scores, empty, time.perf_counter() - started)


def dice_by_class(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean Dice over images per class, (C,), of binary masks (harness.run.metrics' rule)."""
    from harness.run import metrics

    return metrics.dice_per_pair(masks, truth).mean(axis=0)


# --- tuning: presence source, folds ---------------------------------------------------------------------
@dataclasses.dataclass
class Tuned:
    """The result of `tune`: the presence settings, the search under them, every source's mean score."""

    presence: Presence
    result: SearchResult
    source_means: dict[str, float]

    def document_params(self) -> dict[str, Any]:
        """What `apply_postprocess` takes: per-class parameters and the presence settings."""
        return {"classes": {name: choice.params() for name, choice in zip(CLASSES, self.result.choices)},
                "presence": self.presence.to_dict()}


def tune(
    probabilities: np.ndarray,
    truth: np.ndarray,
    space: SearchSpace,
    sources: Sequence[str],
    top_k: int,
    keep_top: bool,
    classifier: np.ndarray | None = None,
    progress: bool = False,
) -> Tuned:
    """Search under every presence source in `sources`; keep the one with the best mean over classes
    (the first on ties, so list the simplest first)."""
    if not sources:
        raise HarnessError("post-processing: no presence source to search")
    best: Tuned | None = None
    means: dict[str, float] = {}
    for source in sources:
        presence = Presence(source=source, top_k=top_k, keep_top=keep_top)
        scores, protected = gate_inputs(probabilities, classifier, presence)
        result = search(probabilities, truth, space, progress=progress, presence=scores, protected=protected)
        means[source] = float(np.mean([choice.score for choice in result.choices]))
        if best is None or means[source] > means[best.presence.source]:
            best = Tuned(presence, result, {})
    assert best is not None
    best.source_means = means
    return best


def fold_of_images(count: int, folds: int, seed: int) -> np.ndarray:
    """(N,) fold number of each image: a seeded permutation cut into `folds` near-equal parts."""
    if folds < 2:
        raise HarnessError(f"--folds must be >= 2 (or 0 for no held-out estimate), got {folds}")
    if count < folds:
        raise HarnessError(f"--folds {folds}: only {count} validation images")
    order = np.random.default_rng(seed).permutation(count)
    assignment = np.empty(count, dtype=np.int64)
    for fold, positions in enumerate(np.array_split(order, folds)):
        assignment[positions] = fold
    return assignment


def held_out_dice(
    probabilities: np.ndarray,
    truth: np.ndarray,
    folds: np.ndarray,
    tune_fold: Callable[[np.ndarray, np.ndarray, np.ndarray | None], Tuned],
    classifier: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Tuned]]:
    """Out-of-fold Dice (N, C): each fold post-processed with parameters tuned on the other folds.

    `tune_fold(probabilities, truth, classifier) -> Tuned` is the whole tuning procedure (source choice
    included), so the estimate covers every choice the search makes.
    """
    from harness.run import metrics

    dice = np.empty((len(truth), truth.shape[-1]), dtype=np.float64)
    tuned_folds = []
    for fold in np.unique(folds):
        inside, outside = folds == fold, folds != fold
        tuned = tune_fold(probabilities[outside], np.asarray(truth)[outside],
                          None if classifier is None else classifier[outside])
        masks = apply_postprocess(probabilities[inside], tuned.document_params(),
                                  None if classifier is None else classifier[inside])
        dice[inside] = metrics.dice_per_pair(masks, np.asarray(truth)[inside])
        tuned_folds.append(tuned)
    return dice, tuned_folds
