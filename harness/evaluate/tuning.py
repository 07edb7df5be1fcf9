"""Tuning the post-processing of a run or an ensemble: `harness postprocess`.

`tune_maps` is the whole procedure on validation maps (the search under each presence source, the
k-fold held-out estimate, repeated over fold splits) and returns the sections of postprocess.json;
`tune_target` gets a target's validation maps (cached per member, `harness.evaluate.ensemble`), tunes
them and writes TARGET/postprocess.json and the search heatmaps.

Above the pure search (`harness.evaluate.postprocess`) and the targets (`harness.evaluate.ensemble`);
postprocess.json is read back through `harness.evaluate.postprocess_file`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from harness import CLASSES
from harness import io, runfolder
from harness.errors import HarnessError
from harness.evaluate import ensemble, inference, plots, postprocess
from harness.run import metrics

PARAMS_VERSION = 2  # the format of postprocess.json
PRESENCE_CHOICES = ("auto", "off") + postprocess.PRESENCE_SOURCES
DEFAULT_FOLDS = 2
SEARCH_PLOT = "postprocess_search.png"

# tune_fold(probabilities, truth, classifier) -> Tuned: the whole search on part of the images.
TuneFold = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], postprocess.Tuned]


def sources_to_search(presence: str, has_classifier: bool) -> list[str]:
    """The presence sources a search tries: 'auto' tries every one the model supports, simplest first."""
    if presence not in PRESENCE_CHOICES:
        raise HarnessError(f"--presence {presence!r} is not one of: {', '.join(PRESENCE_CHOICES)}")
    if presence == "auto":
        return list(postprocess.PRESENCE_SOURCES) if has_classifier else ["pixels"]
    if presence == "off":
        return ["pixels"]  # the gate is off (p_min = 0 only); the source only names the keep_top score
    if presence != "pixels" and not has_classifier:
        raise HarnessError(f"--presence {presence} needs a model with a presence head (config presence_head: true); "
                           "this model has none: use --presence pixels or auto")
    return [presence]


def tune_maps(
    probabilities: np.ndarray,
    truth: np.ndarray,
    classifier: np.ndarray | None,
    image_hw: tuple[int, int],
    trials: int = 0,
    mask_rule: bool = False,
    presence: str = "auto",
    top_k: int = postprocess.DEFAULT_TOP_K,
    keep_top: bool = False,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    progress: bool = False,
    repeats: int = 1,
) -> dict[str, Any]:
    """The whole tuning of validation maps: search on all images (the parameters to use), and with
    `folds` >= 2 the same procedure per fold, scored on the images it did not see (the estimate).

    `repeats` > 1: the estimate is the mean over that many fold splits (seeds `seed`, `seed` + 1, ...).
    On a few hundred images one split moves the estimate by about +-0.005 (docs/evaluation.md); the
    mean of several is steadier, and the document keeps each split's score to show the spread.

    Returns the postprocess.json sections: search, presence, holdout, classes, dropped, mean.
    """
    if repeats < 1:
        raise HarnessError(f"--repeats must be >= 1, got {repeats}")
    truth = np.asarray(truth)
    space = postprocess.build_space(image_hw, trials=trials, mask_rule=mask_rule, seed=seed, presence_gate=presence != "off")
    sources = sources_to_search(presence, classifier is not None)
    pixels_k = postprocess.scaled_top_k(top_k, image_hw)

    def tune_part(part_probabilities: np.ndarray, part_truth: np.ndarray, part_classifier: np.ndarray | None,
                  show: bool = False) -> postprocess.Tuned:
        return postprocess.tune(part_probabilities, part_truth, space, sources, pixels_k, keep_top, part_classifier,
                                progress=show)

    tuned = tune_part(probabilities, truth, classifier, show=progress)
    holdout, held_out = _holdout(probabilities, truth, classifier, tune_part, folds, seed, repeats)
    classes, mean = _class_scores(probabilities, truth, classifier, tuned, held_out)
    search = {
        "method": "random" if trials else "grid",
        "trials": int(trials),
        "seed": int(seed),
        "mask_rule": bool(mask_rule),
        "candidates_per_class": space.candidates + 1,  # + the empty decision
        "seconds": round(tuned.result.seconds, 3),
        **space.to_dict(),
    }
    return {
        "search": search,
        "presence": {**tuned.presence.to_dict(), "top_k_at_350x525": int(top_k), "searched": tuned.source_means,
                     "gate": presence != "off"},
        "holdout": holdout,
        "classes": classes,
        "dropped": [name for name, choice in zip(CLASSES, tuned.result.choices) if choice.drop],
        "mean": mean,
        "_scores": tuned.result.scores,  # for the heatmaps; removed before writing
    }


def _holdout(probabilities: np.ndarray, truth: np.ndarray, classifier: np.ndarray | None, tune_part: TuneFold,
             folds: int, seed: int, repeats: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """The holdout section (each fold's images, presence source, dropped classes and score; each split's
    mean) and the held-out Dice per class (C,), the mean over the splits; None with `folds` 0."""
    holdout: dict[str, Any] = {"folds": int(folds), "seed": int(seed), "repeats": int(repeats) if folds else 0}
    if not folds:
        return holdout, None
    per_split = []
    holdout["per_fold"] = []
    for split_seed in range(seed, seed + repeats):
        assignment = postprocess.fold_of_images(len(truth), folds, split_seed)
        dice, per_fold = postprocess.held_out_dice(probabilities, truth, assignment, tune_part, classifier)
        per_split.append(dice.mean(axis=0))
        holdout["per_fold"] += [
            {"seed": split_seed, "images": int((assignment == fold).sum()), "presence": part.presence.source,
             "dropped": [name for name, choice in zip(CLASSES, part.result.choices) if choice.drop],
             "held_out": float(dice[assignment == fold].mean())}
            for fold, part in enumerate(per_fold)
        ]
    holdout["per_split"] = [float(np.mean(split)) for split in per_split]
    return holdout, np.mean(per_split, axis=0)


def _class_scores(probabilities: np.ndarray, truth: np.ndarray, classifier: np.ndarray | None,
                  tuned: postprocess.Tuned, held_out: np.ndarray | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The classes section (each class's decision and its dice: empty, raw, tuned-on, held-out) and the mean."""
    params = tuned.document_params()
    before = postprocess.dice_by_class((np.asarray(probabilities) > postprocess.DEFAULT_THRESHOLD).astype(np.uint8), truth)
    empty = tuned.result.empty
    after = metrics.dice_per_pair(postprocess.apply_postprocess(probabilities, params, classifier), truth).mean(axis=0)
    classes = {}
    for channel, (name, choice) in enumerate(zip(CLASSES, tuned.result.choices)):
        classes[name] = {
            **choice.params(),
            "dice_empty": float(empty[channel]),
            "dice_before": float(before[channel]),
            "dice_after": float(after[channel]),
            "dice_held_out": None if held_out is None else float(held_out[channel]),
            "dice_best_kept": choice.kept_score,
        }
    mean = {
        "dice_empty": float(np.mean(empty)),
        "dice_before": float(np.mean(before)),
        "dice_after": float(np.mean(after)),
        "dice_held_out": None if held_out is None else float(np.mean(held_out)),
    }
    return classes, mean


def tune_target(
    target: ensemble.Target,
    trials: int = 0,
    mask_rule: bool = False,
    presence: str = "auto",
    top_k: int = postprocess.DEFAULT_TOP_K,
    keep_top: bool = False,
    folds: int = DEFAULT_FOLDS,
    tta: str = "none",
    limit: int = 0,
    seed: int = 0,
    progress: bool = True,
    repeats: int = 1,
) -> dict[str, Any]:
    """Predict the validation split of a run or ensemble (cached per member), tune (`tune_maps`), write
    TARGET/postprocess.json and the search heatmaps; return the document."""
    config = target.config
    validation = inference.validation_split(config, limit=limit)
    maps = ensemble.validation_maps(target, validation, tta=tta, progress=progress)
    sections = tune_maps(maps.probabilities, validation.masks, maps.presence, config.image_hw, trials=trials,
                         mask_rule=mask_rule, presence=presence, top_k=top_k, keep_top=keep_top, folds=folds,
                         seed=seed, progress=progress, repeats=repeats)
    scores = sections.pop("_scores")
    document = {
        "version": PARAMS_VERSION,
        "run_id": target.label,
        "members": [str(member.run_dir) for member in target.members],
        "image_size": config.image_size,
        "validation_images": int(len(validation.names)),
        "tta": tta,
        "presence_head": maps.presence is not None,
        "model_mtime_ns": [(member.run_dir / runfolder.BEST_FILE).stat().st_mtime_ns for member in target.members],
        **sections,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    io.atomic_write_json(target.folder / runfolder.POSTPROCESS_FILE, document)
    space = sections["search"]
    plots.search_heatmaps(scores, space["thresholds"], space["min_sizes"], target.folder / runfolder.PLOTS_DIR / SEARCH_PLOT)
    return document
