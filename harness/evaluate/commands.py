"""Click commands of the evaluation area: `harness postprocess|evaluate|predict|compare` and
`harness sweep report` (added to the sweep area's group). Thin: parse, call one function, print.
"""

from __future__ import annotations

from pathlib import Path

import click

from harness.errors import HarnessError
from harness.sweep import commands as sweep_commands

RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
DATA_DIR_HELP = "Use this data folder instead of the run's data_dir (its cache: --cache-dir or DATA_DIR/cache)."


@click.command("postprocess")
@click.argument("run_dir", type=RUN_DIR)
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Random search: this many thresholds drawn in [0.2, 0.85] (every min size is scored for each).")
@click.option("--grid", "use_grid", is_flag=True, help="Grid search: thresholds 0.30..0.80 step 0.05 (the default).")
@click.option("--mask-rule", is_flag=True, help="Also search the mask-level rule: drop a class when its largest "
              "probability < p_min or its kept area < area_min.")
@click.option("--data-dir", default=None, help=DATA_DIR_HELP)
@click.option("--cache-dir", default=None, help="Use this data cache root instead of the run's.")
@click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Use only the first N validation images (0: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --trials.")
def postprocess_command(run_dir: Path, trials: int | None, use_grid: bool, mask_rule: bool, data_dir: str | None,
                        cache_dir: str | None, limit: int, seed: int) -> None:
    """Tune per-class thresholds and minimum component sizes on RUN_DIR's validation split.

    Writes RUN_DIR/postprocess.json (used by `harness evaluate` and `harness predict`) and prints the
    per-class table: dice before (threshold 0.5), dice after, chosen threshold and size.
    """
    from harness.evaluate import postprocess

    if trials and use_grid:
        raise HarnessError("--trials and --grid exclude each other: pick one search")
    document = postprocess.tune_run(run_dir, trials=trials or 0, mask_rule=mask_rule, data_dir=data_dir,
                                    cache_dir=cache_dir, limit=limit, seed=seed)
    click.echo(postprocess.format_table(document))
    search = document["search"]
    click.echo(f"{document['validation_images']} validation images, {search['candidates_per_class']} candidates per "
               f"class, search {search['seconds']:.2f} s; min sizes in pixels at {document['image_size']} "
               f"(@350x525: the same area at the submission size)")
    click.echo(f"wrote {run_dir / postprocess.POSTPROCESS_FILE}")


@click.command("evaluate")
@click.argument("run_dir", type=RUN_DIR)
@click.option("--augment", default=None, help="Pipeline of the augmented check (none|flips|default|strong) "
              "[default: the run's augment, or default].")
@click.option("--tta", type=click.Choice(["none", "flips"]), default="none", show_default=True,
              help="flips: also score the mean prediction of the image and its horizontal and vertical flips.")
@click.option("--data-dir", default=None, help=DATA_DIR_HELP)
@click.option("--cache-dir", default=None, help="Use this data cache root instead of the run's.")
@click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Use only the first N validation images (0: all).")
@click.option("--overlays", type=click.IntRange(min=0), default=6, show_default=True,
              help="Validation images drawn in plots/overlays.png.")
def evaluate_command(run_dir: Path, augment: str | None, tta: str, data_dir: str | None, cache_dir: str | None,
                     limit: int, overlays: int) -> None:
    """Score RUN_DIR on its validation split (plain, augmented, TTA; raw and post-processed, per class).

    Writes RUN_DIR/evaluation.json and PNGs in RUN_DIR/plots/ (learning curves, overlays, tables); logs
    them to the run's W&B run when W&B is on.
    """
    from harness.config import AUGMENTATIONS
    from harness.evaluate import evaluate

    if augment is not None and augment not in AUGMENTATIONS:
        raise HarnessError(f"--augment {augment!r} is not one of: {', '.join(AUGMENTATIONS)}")
    document = evaluate.evaluate_run(run_dir, augment=augment, tta=tta, data_dir=data_dir, cache_dir=cache_dir,
                                     limit=limit, overlays=overlays)
    click.echo(evaluate.format_report(document))
    click.echo(f"wrote {run_dir / evaluate.EVALUATION_FILE} and {len(document['plots'])} plots in {run_dir / 'plots'}"
               + (" (and logged them to W&B)" if document.get("wandb") else ""))


@click.command("predict")
@click.argument("run_dir", type=RUN_DIR)
@click.option("--images", "images_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of test images (e.g. DATA_DIR/test_images).")
@click.option("--out", default="submission.csv", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Submission CSV to write.")
@click.option("--sample-submission", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write rows in this file's order; its images must be exactly those in --images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--tta", type=click.Choice(["none", "flips"]), default="none", show_default=True,
              help="flips: average the predictions of the image and its horizontal and vertical flips.")
def predict_command(run_dir: Path, images_dir: Path, out: Path, sample_submission: Path | None, batch_size: int,
                    tta: str) -> None:
    """Write a challenge submission (Image_Label,EncodedPixels at 350x525) for the images in --images."""
    from harness.evaluate import predict

    result = predict.predict_run(run_dir, images_dir, out=out, sample_submission=sample_submission,
                                 batch_size=batch_size, tta=tta)
    click.echo(f"wrote {result['path']}: {result['rows']} rows for {result['images']} images "
               f"({result['non_empty_rows']} non-empty masks; post-processing from {result['postprocess']}); "
               "every row checked")


@click.command("compare")
@click.argument("run_a", type=RUN_DIR)
@click.argument("run_b", type=RUN_DIR)
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Chart PNG [default: RUN_A/plots/comparison.png].")
def compare_command(run_a: Path, run_b: Path, out: Path | None) -> None:
    """Two runs' per-class validation dice side by side (from evaluation.json or postprocess.json)."""
    from harness.evaluate import compare

    click.echo(compare.format_comparison(compare.compare_runs(run_a, run_b, out)))


@click.command("report")
@click.argument("sweep_id")
@click.option("--root", default=None, help="runs root holding sweeps.db (default: $HARNESS_ROOT or ./runs)")
@sweep_commands.store_option
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Best runs listed.")
def report_command(sweep_id: str, root: str | None, top: int) -> None:
    """Best runs, parallel coordinates and parameter importance of a local sweep (PNG + report.md)."""
    from harness.evaluate import reports

    result = reports.sweep_report(sweep_id, root=root, top=top)
    header, rows = result["header"], result["best"]
    widths = [max(len(header[column]), *(len(row[column]) for row in rows)) for column in range(len(header))]
    for line in [header] + rows:
        click.echo("  ".join(value.ljust(width) for value, width in zip(line, widths)))
    click.echo(f"wrote {len(result['files'])} files in {result['folder']}")


def register(group: click.Group) -> None:
    """Add this area's commands to `group` (and `report` to the sweep area's `harness sweep`)."""
    for command in (postprocess_command, evaluate_command, predict_command, compare_command):
        group.add_command(command)
    from harness.sweep import commands as sweep_commands

    sweep_group = getattr(sweep_commands, "sweep_group", None)
    if sweep_group is not None:
        sweep_group.add_command(report_command)
