"""Post-processing: per class, a probability threshold and a minimum connected-component size.

Pure functions on probability maps `(N, H, W, C)` (float) and truth masks `(N, H, W, C)` ({0, 1}).
For each class the search picks the candidate that maximises the challenge metric for that class (the
mean Dice over images, an empty prediction on an empty truth scoring 1); the challenge metric is the
mean over classes, so tuning each class on its own maximises it exactly.

A candidate is `(threshold, min_size, p_min, area_min)`:
    mask = probability > threshold
    keep the 8-connected components with area >= min_size
    drop the whole mask when the image's largest probability < p_min or the kept area < area_min
(`p_min = 0` and `area_min = 0` switch the mask-level rule off.)

Two searches give the same answer (a test holds them to it, bit for bit):
- `search` (fast): per threshold, the connected components of each image are computed ONCE; the kept
  area and kept intersection with the truth of every min_size come from the component areas and the
  per-component intersections (`np.bincount` of the labels over the truth pixels), and the mask-level
  rule is a broadcast; one pass scores every size and rule at once.
- `search_reference` (straightforward): every candidate thresholds, labels and filters every image
  again through `postprocess_mask`, the function `apply_postprocess` uses.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from harness import CLASSES
from harness.errors import HarnessError

# Minimum sizes are given at the challenge's submission resolution and scaled to the image size.
REFERENCE_HW = (350, 525)
DEFAULT_THRESHOLDS = tuple(round(0.30 + 0.05 * step, 2) for step in range(11))  # 0.30 .. 0.80
DEFAULT_MIN_SIZES = (0, 100, 500, 1000, 2500, 5000, 7500, 10000, 15000, 20000, 25000)
RULE_P_MINS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
RULE_AREA_MINS = (0, 1000, 2500, 5000, 10000)
RANDOM_THRESHOLD_RANGE = (0.2, 0.85)
DEFAULT_THRESHOLD = 0.5
PARAMS_VERSION = 1


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
class ClassChoice:
    threshold: float
    min_size: int
    p_min: float
    area_min: int
    score: float  # mean Dice over images of this class after post-processing

    def params(self) -> dict[str, float | int]:
        return {"threshold": self.threshold, "min_size": self.min_size, "p_min": self.p_min, "area_min": self.area_min}


@dataclasses.dataclass
class SearchResult:
    space: SearchSpace
    choices: list[ClassChoice]  # one per class, in CLASSES order
    scores: np.ndarray  # (C, T, S, P, A): mean Dice of every candidate
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


def build_space(
    image_hw: tuple[int, int],
    trials: int = 0,
    mask_rule: bool = False,
    seed: int = 0,
    thresholds: Sequence[float] | None = None,
    min_sizes: Sequence[int] | None = None,
) -> SearchSpace:
    """The default search: the threshold grid 0.30..0.80 step 0.05, or `trials` random thresholds.

    Every minimum size is scored for each threshold at no extra cost (see `search`), so random trials
    draw thresholds only. `mask_rule` adds the mask-level rule's grid (p_min, area_min).
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
    p_mins = RULE_P_MINS if mask_rule else (0.0,)
    area_mins = scale_sizes(RULE_AREA_MINS, image_hw) if mask_rule else (0,)
    return SearchSpace(tuple(float(t) for t in thresholds), tuple(int(s) for s in min_sizes), tuple(p_mins), tuple(area_mins))


# --- applying parameters -----------------------------------------------------------------------------
def postprocess_mask(
    probability: np.ndarray, threshold: float, min_size: int = 0, p_min: float = 0.0, area_min: int = 0
) -> np.ndarray:
    """One image, one class: (H, W) probabilities -> (H, W) uint8 mask in {0, 1}."""
    import cv2

    # float32 whatever the input dtype: the same comparison everywhere (search, evaluate, predict).
    values = np.asarray(probability, dtype=np.float32)
    mask = (values > np.float32(threshold)).astype(np.uint8)
    if min_size > 0:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_size
        keep[0] = False  # label 0 is the background
        mask = keep[labels].astype(np.uint8)
    if (p_min > 0.0 and float(values.max()) < p_min) or (area_min > 0 and int(mask.sum()) < area_min):
        mask[:] = 0
    return mask


def default_params(threshold: float = DEFAULT_THRESHOLD) -> dict[str, dict[str, float | int]]:
    """Per class parameters that only threshold (what a run without postprocess.json gets)."""
    return {name: {"threshold": threshold, "min_size": 0, "p_min": 0.0, "area_min": 0} for name in CLASSES}


def class_params(params: Mapping[str, Any]) -> dict[str, dict[str, float | int]]:
    """The per-class parameters of a postprocess.json dict (or of such a per-class mapping itself)."""
    classes = params.get("classes", params)
    result = {}
    for name in CLASSES:
        if name not in classes:
            raise HarnessError(f"post-processing parameters: class '{name}' missing (have {sorted(classes)})")
        entry = classes[name]
        try:
            result[name] = {
                "threshold": float(entry["threshold"]),
                "min_size": int(entry.get("min_size", 0)),
                "p_min": float(entry.get("p_min", 0.0)),
                "area_min": int(entry.get("area_min", 0)),
            }
        except (KeyError, TypeError, ValueError) as error:
            raise HarnessError(f"post-processing parameters of class '{name}': bad or missing value ({error})") from error
    return result


def apply_postprocess(probabilities: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """(N, H, W, C) probabilities -> (N, H, W, C) uint8 masks, with each class's parameters."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or probabilities.shape[-1] != len(CLASSES):
        raise ValueError(f"expected (N, H, W, {len(CLASSES)}) probabilities, got shape {probabilities.shape}")
    per_class = class_params(params)
    masks = np.zeros(probabilities.shape, dtype=np.uint8)
    for channel, name in enumerate(CLASSES):
        values = per_class[name]
        for index in range(probabilities.shape[0]):
            masks[index, :, :, channel] = postprocess_mask(probabilities[index, :, :, channel], **values)
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


def _choose(space: SearchSpace, scores: np.ndarray) -> list[ClassChoice]:
    choices = []
    for class_scores in scores:
        # argmax takes the first best candidate in (threshold, size, p_min, area_min) order: ties go to
        # the lowest threshold and the smallest filter.
        t, s, p, a = np.unravel_index(int(np.argmax(class_scores)), class_scores.shape)
        choices.append(
            ClassChoice(
                threshold=space.thresholds[t],
                min_size=space.min_sizes[s],
                p_min=space.p_mins[p],
                area_min=space.area_mins[a],
                score=float(class_scores[t, s, p, a]),
            )
        )
    return choices


def search(probabilities: np.ndarray, truth: np.ndarray, space: SearchSpace, progress: bool = False) -> SearchResult:
    """The fast search: components once per (class, threshold, image); every size and rule scored at once."""
    import cv2
    import tqdm

    _check_inputs(probabilities, truth)
    started = time.perf_counter()
    count, _, _, classes = probabilities.shape
    sizes = np.asarray(space.min_sizes, dtype=np.int64)
    p_mins = np.asarray(space.p_mins, dtype=np.float64)
    area_mins = np.asarray(space.area_mins, dtype=np.int64)
    scores = np.empty((classes,) + space.shape, dtype=np.float64)
    bar = tqdm.tqdm(total=classes * len(space.thresholds), desc="post-processing search", unit="threshold", disable=not progress)
    for channel in range(classes):
        # One float32 copy per class: comparisons on float16 are several times slower.
        values = np.asarray(probabilities[..., channel], dtype=np.float32)
        truth_pixels = [np.flatnonzero(np.asarray(truth[index, :, :, channel])) for index in range(count)]
        truth_areas = np.array([pixels.size for pixels in truth_pixels], dtype=np.int64)
        maxima = np.array([float(values[index].max()) for index in range(count)])
        # Dropped by p_min: (N, P), the same for every threshold and size.
        below_p_min = (p_mins[None, :] > 0.0) & (maxima[:, None] < p_mins[None, :])
        for t_index, threshold in enumerate(space.thresholds):
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
            # Mask-level rule, broadcast to (N, S, P, A): drop by the largest probability or the kept area.
            dropped = below_p_min[:, None, :, None] | (
                (area_mins[None, None, None, :] > 0) & (kept_area[:, :, None, None] < area_mins[None, None, None, :])
            )
            predicted = np.where(dropped, 0, kept_area[:, :, None, None])
            intersection = np.where(dropped, 0, kept_intersection[:, :, None, None])
            dice = _dice(intersection, predicted, truth_areas[:, None, None, None])
            scores[channel, t_index] = _mean_over_images(np.moveaxis(dice, 0, -1))
            bar.update(1)
    bar.close()
    return SearchResult(space, _choose(space, scores), scores, time.perf_counter() - started)


def search_reference(probabilities: np.ndarray, truth: np.ndarray, space: SearchSpace, progress: bool = False) -> SearchResult:
    """The straightforward search: `postprocess_mask` (one connectedComponents) per candidate and image."""
    import tqdm

    _check_inputs(probabilities, truth)
    started = time.perf_counter()
    count, _, _, classes = probabilities.shape
    scores = np.empty((classes,) + space.shape, dtype=np.float64)
    grid = list(itertools.product(*(range(length) for length in space.shape)))
    bar = tqdm.tqdm(total=classes * len(grid), desc="post-processing search (reference)", unit="candidate", disable=not progress)
    for channel in range(classes):
        truth_masks = [np.asarray(truth[index, :, :, channel]).astype(bool) for index in range(count)]
        truth_areas = np.array([mask.sum() for mask in truth_masks], dtype=np.int64)
        for t, s, p, a in grid:
            predicted = np.zeros(count, dtype=np.int64)
            intersection = np.zeros(count, dtype=np.int64)
            for index in range(count):
                mask = postprocess_mask(
                    probabilities[index, :, :, channel],
                    threshold=space.thresholds[t],
                    min_size=space.min_sizes[s],
                    p_min=space.p_mins[p],
                    area_min=space.area_mins[a],
                ).astype(bool)
                predicted[index] = mask.sum()
                intersection[index] = np.logical_and(mask, truth_masks[index]).sum()
            scores[channel, t, s, p, a] = _mean_over_images(_dice(intersection, predicted, truth_areas))
            bar.update(1)
    bar.close()
    return SearchResult(space, _choose(space, scores), scores, time.perf_counter() - started)


def dice_by_class(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean Dice over images per class, (C,), of binary masks (harness.run.metrics' rule)."""
    from harness.run import metrics

    return metrics.dice_per_pair(masks, truth).mean(axis=0)


# --- a run: tune, save, print ---------------------------------------------------------------------------
POSTPROCESS_FILE = "postprocess.json"


def tune_run(
    run_dir: str | Path,
    trials: int = 0,
    mask_rule: bool = False,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    limit: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict the run's validation split (cached), search, write RUN_DIR/postprocess.json; return it."""
    from harness import io
    from harness.evaluate import plots, runs

    run = runs.load_run(run_dir, data_dir=data_dir, cache_dir=cache_dir)
    validation = runs.validation_split(run.config, limit=limit)
    probabilities = runs.validation_probabilities(run.run_dir, validation, progress=progress)
    truth = np.asarray(validation.masks)
    space = build_space(run.config.image_hw, trials=trials, mask_rule=mask_rule, seed=seed)
    result = search(probabilities, truth, space, progress=progress)
    before = dice_by_class((probabilities > DEFAULT_THRESHOLD).astype(np.uint8), truth)
    document = {
        "version": PARAMS_VERSION,
        "run_id": run.run_id,
        "image_size": run.config.image_size,
        "validation_images": int(len(validation.names)),
        "model_mtime_ns": (run.run_dir / runs.BEST_FILE).stat().st_mtime_ns,
        "search": {
            "method": "random" if trials else "grid",
            "trials": int(trials),
            "seed": int(seed),
            "mask_rule": bool(mask_rule),
            "candidates_per_class": space.candidates,
            "seconds": round(result.seconds, 3),
            **space.to_dict(),
        },
        "classes": {
            name: {**choice.params(), "dice_before": float(before[channel]), "dice_after": choice.score}
            for channel, (name, choice) in enumerate(zip(CLASSES, result.choices))
        },
        "mean": {
            "dice_before": float(np.mean(before)),
            "dice_after": float(np.mean([choice.score for choice in result.choices])),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    io.atomic_write_json(run.run_dir / POSTPROCESS_FILE, document)
    plots.search_heatmaps(result.scores, space.thresholds, space.min_sizes, run.run_dir / "plots" / "postprocess_search.png")
    return document


def params_for_run(run_dir: str | Path) -> tuple[dict[str, dict[str, float | int]], bool]:
    """The run's tuned per-class parameters and True; the plain threshold and False (with a warning
    on stderr) when the run has no postprocess.json yet."""
    document = load_params(run_dir)
    if document is None:
        print(
            f"warning: {Path(run_dir) / POSTPROCESS_FILE} not found: using the plain threshold {DEFAULT_THRESHOLD} "
            f"for every class (run `harness postprocess {run_dir}` first)",
            file=sys.stderr,
        )
        return default_params(), False
    return class_params(document), True


def load_params(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/postprocess.json, checked; None when the run has not been tuned."""
    from harness import io

    path = Path(run_dir) / POSTPROCESS_FILE
    try:
        document = io.read_json(path)
    except ValueError as error:
        raise HarnessError(f"{path}: not valid JSON ({error})") from error
    if document is None:
        return None
    if not isinstance(document, dict) or "classes" not in document:
        raise HarnessError(f"{path}: no 'classes' section (expected the output of `harness postprocess`)")
    try:
        class_params(document)
    except HarnessError as error:
        raise HarnessError(f"{path}: {error}") from error
    return document


def format_table(document: Mapping[str, Any]) -> str:
    """The reference's table: per class dice before/after, chosen threshold and size; plus the mean."""
    header, rows = table_rows(document)
    widths = [max(len(str(header[column])), *(len(str(row[column])) for row in rows)) for column in range(len(header))]
    lines = ["  ".join(str(value).rjust(width) if column else str(value).ljust(width)
                       for column, (value, width) in enumerate(zip(line, widths)))
             for line in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def table_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of `format_table` (also used for the PNG table)."""
    from harness.config import parse_size

    image_hw = parse_size(document.get("image_size", f"{REFERENCE_HW[0]}x{REFERENCE_HW[1]}"))
    factor = (REFERENCE_HW[0] * REFERENCE_HW[1]) / (image_hw[0] * image_hw[1])
    rule = bool(document.get("search", {}).get("mask_rule"))
    header = ["class", "dice before", "dice after", "threshold", "min size", "@350x525"]
    if rule:
        header += ["p_min", "area_min"]
    rows = []
    for name in CLASSES:
        entry = document["classes"][name]
        row = [
            name,
            f"{entry['dice_before']:.4f}",
            f"{entry['dice_after']:.4f}",
            f"{entry['threshold']:.2f}",
            str(entry["min_size"]),
            str(int(round(entry["min_size"] * factor))),
        ]
        if rule:
            row += [f"{entry['p_min']:.2f}", str(entry["area_min"])]
        rows.append(row)
    mean = document["mean"]
    rows.append(["mean", f"{mean['dice_before']:.4f}", f"{mean['dice_after']:.4f}"] + [""] * (len(header) - 3))
    return header, rows
