"""`harness evaluate RUN_DIR`: scores, per-class table, pictures and evaluation.json of a trained run.

On the run's validation split, for each setting
    plain      the validation images as they are
    augmented  the same images through an augmentation pipeline (the reference's overfitting check:
               a model that only memorised the training images loses much more here)
    tta        flip test-time augmentation: the mean of the predictions of the image, its horizontal
               and its vertical flip (with --tta flips)
it reports the loss, the soft dice (`dice_coef`, batch-averaged like Keras' val_dice_coef), the
challenge dice of raw masks (threshold) and of post-processed masks (postprocess.json, or the plain
threshold when the run was not tuned), overall and per class. Pictures go to RUN_DIR/plots/, the
numbers to RUN_DIR/evaluation.json; the W&B run receives both when W&B is on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness import CLASSES
from harness import io, runfolder
from harness.evaluate import ensemble, inference, plots, postprocess_file
from harness.evaluate import postprocess as postprocess_module
from harness.tables import format_table

DEFAULT_OVERLAYS = 6


def score_setting(
    maps: inference.Maps, truth: np.ndarray, params: Mapping[str, Any], loss_name: str, batch_size: int, threshold: float
) -> dict[str, Any]:
    """Loss, soft dice, challenge dice raw and post-processed (overall and per class) of one setting."""
    from harness.run import metrics

    truth = np.asarray(truth)
    probabilities = maps.probabilities
    loss, soft = _batched_loss_and_soft_dice(probabilities, truth, loss_name, batch_size)
    raw = (np.asarray(probabilities) > threshold).astype(np.uint8)
    processed = postprocess_module.apply_postprocess(probabilities, params, maps.presence)
    raw_pairs = metrics.dice_per_pair(raw, truth)
    post_pairs = metrics.dice_per_pair(processed, truth)
    return {
        "loss": loss,
        "dice_coef": soft,
        "kaggle_dice": float(raw_pairs.mean()),
        "kaggle_dice_post": float(post_pairs.mean()),
        "per_class": {
            name: {"dice": float(raw_pairs[:, channel].mean()), "dice_post": float(post_pairs[:, channel].mean())}
            for channel, name in enumerate(CLASSES)
        },
    }


def _batched_loss_and_soft_dice(probabilities: np.ndarray, truth: np.ndarray, loss_name: str, batch_size: int) -> tuple[float, float]:
    # As Keras computes val_loss and val_dice_coef, so the numbers compare with metrics.jsonl: the loss
    # is averaged over batches weighted by their size, the soft dice (one scalar per batch, counted
    # once by MeanMetricWrapper) over batches unweighted.
    from harness.run import losses, metrics

    loss_function = losses.get_loss(loss_name)
    total_loss = 0.0
    soft_values = []
    count = len(probabilities)
    for start in range(0, count, batch_size):
        y_pred = np.asarray(probabilities[start:start + batch_size], dtype=np.float32)
        y_true = np.asarray(truth[start:start + batch_size], dtype=np.float32)
        total_loss += float(np.asarray(loss_function(y_true, y_pred))) * len(y_pred)
        soft_values.append(metrics.soft_dice(y_pred, y_true))
    return total_loss / count, float(np.mean(soft_values))


def augment_split(images: np.ndarray, masks: np.ndarray, pipeline_name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The images and masks through the named pipeline, image by image (deterministic for a seed)."""
    from harness.data import augment

    pipeline = augment.build(pipeline_name, seed=seed)
    if pipeline is None:
        return np.asarray(images), np.asarray(masks)
    out_images = np.empty_like(np.asarray(images))
    out_masks = np.empty_like(np.asarray(masks))
    for index in range(len(images)):
        result = pipeline(image=np.asarray(images[index]), mask=np.asarray(masks[index]))
        out_images[index] = result["image"]
        out_masks[index] = result["mask"]
    return out_images, out_masks


def evaluate_target(
    target: ensemble.Target,
    augment: str | None = None,
    tta: str = "none",
    limit: int = 0,
    overlays: int = DEFAULT_OVERLAYS,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run or an ensemble (`harness.evaluate.ensemble.Target`: members' maps averaged);
    writes TARGET/evaluation.json and TARGET/plots/ and returns the document."""
    config = target.config
    augment = augment or (config.augment if config.augment != "none" else "default")
    validation = inference.validation_split(config, limit=limit)
    truth = np.asarray(validation.masks)
    params, tuned = postprocess_file.params_for_run(target.folder)
    models = ensemble.Models(target)

    settings: dict[str, inference.Maps] = {}
    settings["plain"] = ensemble.validation_maps(target, validation, models=models, progress=progress)
    augmented_images, augmented_masks = augment_split(validation.images, truth, augment, seed)
    augmented = ensemble.predict_maps(models, augmented_images, progress=progress, desc=f"predicting ({augment})")
    if tta != "none":
        settings["tta"] = ensemble.validation_maps(target, validation, tta=tta, models=models, progress=progress)

    scoring = (params, config.loss, config.batch_size, config.threshold)
    results = {"plain": score_setting(settings["plain"], truth, *scoring),
               "augmented": score_setting(augmented, augmented_masks, *scoring)}
    if "tta" in settings:
        results["tta"] = score_setting(settings["tta"], truth, *scoring)

    plots_dir = target.folder / runfolder.PLOTS_DIR
    pictures = _pictures(target, validation, settings["plain"], params, results, plots_dir, overlays)
    document = {
        "run_id": target.label,
        "members": [str(member.run_dir) for member in target.members],
        "sweep_id": target.members[0].sweep_id if not target.is_ensemble else target.sweep_id,
        "model": config.model if not target.is_ensemble else sorted({member.config.model for member in target.members}),
        "image_size": config.image_size,
        "validation_images": int(len(validation.names)),
        "threshold": config.threshold,
        "augment": augment,
        "tta": tta,
        "presence_head": settings["plain"].presence is not None,
        "postprocess": _postprocess_section(target.folder, params, tuned),
        "results": results,
        "plots": {key: str(path.relative_to(target.folder)) for key, path in pictures.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    document["wandb"] = False if target.is_ensemble else log_to_wandb(target.members[0], document, pictures)
    io.atomic_write_json(target.folder / runfolder.EVALUATION_FILE, document)
    return document


def _postprocess_section(folder: Path, params: Mapping[str, Any], tuned: bool) -> dict[str, Any]:
    """evaluation.json's account of the post-processing it scored: the parameters and where they came
    from, and, when tuned, the tuning's own per-class numbers (empty, raw, tuned-on, held-out)."""
    tuned_document = postprocess_file.load_params(folder) if tuned else None
    per_class = postprocess_module.class_params(params)
    return {
        "source": runfolder.POSTPROCESS_FILE if tuned else "default",
        "classes": per_class,
        "presence": params["presence"],
        "dropped": [name for name, values in per_class.items() if values["drop"]],
        "tuning": None if tuned_document is None else {
            "tta": tuned_document.get("tta", "none"),
            "holdout": tuned_document.get("holdout"),
            "classes": {name: {key: entry.get(key) for key in ("dice_empty", "dice_before", "dice_after", "dice_held_out")}
                        for name, entry in tuned_document["classes"].items()},
            "mean": tuned_document.get("mean"),
        },
    }


def _pictures(
    target: ensemble.Target,
    validation: inference.Validation,
    maps: inference.Maps,
    params: Mapping[str, Any],
    results: Mapping[str, Any],
    plots_dir: Path,
    overlays: int,
) -> dict[str, Path]:
    from harness.run import metrics

    pictures: dict[str, Path] = {}
    rows = [] if target.is_ensemble else runfolder.read_history(target.members[0].run_dir)
    if rows:
        pictures["learning_curves"] = plots.learning_curves(rows, plots_dir / "learning_curves.png", title=target.label)
    if overlays > 0:
        positions = np.unique(np.linspace(0, len(validation.names) - 1, min(overlays, len(validation.names))).astype(int))
        chosen = maps.probabilities[positions]
        raw = (np.asarray(chosen) > target.config.threshold).astype(np.uint8)
        processed = postprocess_module.apply_postprocess(chosen, params, None if maps.presence is None else maps.presence[positions])
        truth = np.asarray(validation.masks[positions])
        scores = [
            (float(metrics.dice_per_pair(raw[i:i + 1], truth[i:i + 1]).mean()),
             float(metrics.dice_per_pair(processed[i:i + 1], truth[i:i + 1]).mean()))
            for i in range(len(positions))
        ]
        pictures["overlays"] = plots.overlays(
            np.asarray(validation.images[positions]), truth, raw, processed,
            [validation.names[position] for position in positions], plots_dir / "overlays.png", scores=scores,
        )
    header, table = class_table(results)
    pictures["class_table"] = plots.table_png(header, table, plots_dir / "class_table.png", title=f"{target.label}: validation dice per class")
    pictures["class_dice"] = plots.grouped_bars(
        list(CLASSES),
        {
            f"{setting} {kind}": [results[setting]["per_class"][name][key] for name in CLASSES]
            for setting in results
            for kind, key in (("raw", "dice"), ("post-processed", "dice_post"))
        },
        plots_dir / "class_dice.png",
        title=f"{target.label}: validation dice per class",
    )
    return pictures


def class_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per class (plus the mean and the overall loss/soft dice), raw and post-processed, per setting."""
    settings = list(results)
    header = ["class"] + [f"{setting} {kind}" for setting in settings for kind in ("raw", "post")]
    rows: list[list[Any]] = []
    for name in CLASSES:
        rows.append([name] + [results[setting]["per_class"][name][key] for setting in settings for key in ("dice", "dice_post")])
    rows.append(["mean"] + [results[setting][key] for setting in settings for key in ("kaggle_dice", "kaggle_dice_post")])
    rows.append(["loss"] + [value for setting in settings for value in (results[setting]["loss"], "")])
    rows.append(["dice_coef"] + [value for setting in settings for value in (results[setting]["dice_coef"], "")])
    return header, rows


def format_report(document: Mapping[str, Any]) -> str:
    header, rows = class_table(document["results"])
    text_rows = [[f"{value:.4f}" if isinstance(value, float) else str(value) for value in row] for row in rows]
    model = document["model"] if isinstance(document["model"], str) else "+".join(document["model"])
    lines = [
        f"run {document['run_id']} ({model}, {document['image_size']}): "
        f"{document['validation_images']} validation images; augmented = {document['augment']}, tta = {document['tta']}; "
        f"post-processing from {document['postprocess']['source']}",
        format_table(text_rows, header=header, align="l" + "r" * (len(header) - 1), rules=(1,)),
    ]
    tuning = document["postprocess"].get("tuning")
    if tuning:
        # The honest numbers: tuned-on is optimistic, held-out is the estimate (k-fold).
        lines += ["", "post-processing (from the tuning): all-empty baseline, raw, tuned-on, held-out; "
                  "dropped: " + (", ".join(document["postprocess"]["dropped"]) or "none")]
        classes = {name: {**entry, **document["postprocess"]["classes"][name]} for name, entry in tuning["classes"].items()}
        lines.append(postprocess_file.format_tuning_table({"classes": classes, "mean": tuning["mean"],
                                                           "image_size": document["image_size"]}))
    return "\n".join(lines)


# --- W&B ------------------------------------------------------------------------------------------------
def wandb_enabled(run_dir: Path) -> bool:
    """W&B is on (WANDB_MODE not disabled) and the run logged to W&B (a wandb/ folder with a run in it)."""
    from harness.run import tracking

    if tracking.wandb_mode() == "disabled":
        return False
    folder = run_dir / "wandb"
    return folder.is_dir() and any(child.is_dir() and "run-" in child.name for child in folder.iterdir())


def log_to_wandb(run: inference.RunInfo, document: Mapping[str, Any], pictures: Mapping[str, Path]) -> bool:
    """Send the tables and pictures to the run's W&B run (resumed by id; offline works). True if sent."""
    if not wandb_enabled(run.run_dir):
        return False
    import wandb

    from harness.run import tracking

    arguments: dict[str, Any] = {
        # The run's own id (config.json), not $WANDB_RUN_ID, which may belong to whatever runs this shell.
        "id": run.run_id,
        "resume": "allow",
        "dir": str(run.run_dir),
        "project": run.config.wandb_project or None,
        "entity": run.config.wandb_entity or None,
        "mode": tracking.wandb_mode(),
        "job_type": "evaluation",
    }
    wandb_run = wandb.init(**{key: value for key, value in arguments.items() if value is not None})
    try:
        header, rows = class_table(document["results"])
        table = wandb.Table(columns=header, data=[[value if value != "" else None for value in row] for row in rows])
        payload: dict[str, Any] = {"evaluation/per_class": table}
        for key, path in pictures.items():
            payload[f"evaluation/{key}"] = wandb.Image(str(path))
        wandb_run.log(payload)
        for setting, values in document["results"].items():
            for metric in ("loss", "dice_coef", "kaggle_dice", "kaggle_dice_post"):
                wandb_run.summary[f"evaluation/{setting}/{metric}"] = values[metric]
    finally:
        wandb_run.finish()
    return True
