"""Click commands of the evaluation area: `harness postprocess|evaluate|predict|compare` and
`harness sweep report` (added to the sweep area's group). Thin: parse, call one function, print.
"""

from __future__ import annotations

from pathlib import Path

import click

from harness import cli_common
from harness.errors import HarnessError
from harness.sweep import commands as sweep_commands

RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
DATA_DIR_HELP = "Use this data folder instead of the run's data_dir (its cache: --cache-dir or DATA_DIR/cache)."
MEMBERS_SWEEP_HELP = "Use the best finished runs of this local sweep instead of RUN_DIRs."

cache_dir_option = click.option("--cache-dir", default=None, help="Use this data cache root instead of the run's.")
limit_option = click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True,
                            help="Use only the first N validation images (0: all).")


def members_options(function):
    """RUN_DIR... or --sweep ID --top K, --root and --out-dir: what makes a run or an ensemble."""
    function = click.option("--out-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
                            help="Folder of an ensemble's postprocess.json / evaluation.json "
                                 "[default with --sweep: ROOT/SWEEP_ID/ensemble-topK].")(function)
    function = cli_common.store_option(function)
    function = cli_common.root_option(function)
    function = click.option("--rank-by", type=click.Choice(["metric", "held-out"]), default="metric", show_default=True,
                            help="With --sweep: rank the finished runs by the sweep's metric, or by each run's own "
                                 "post-processed held-out score (postprocess tunes the runs without one).")(function)
    function = click.option("--top", type=click.IntRange(min=1), default=None,
                            help="With --sweep: the K best finished runs (see --rank-by) [default: 1].")(function)
    function = cli_common.sweep_option(required=False, bare=False, help_text=MEMBERS_SWEEP_HELP)(function)
    return click.argument("run_dirs", nargs=-1, type=RUN_DIR)(function)


def _target(run_dirs: tuple[Path, ...], sweep_id: str | None, top: int | None, root: str | None, out_dir: Path | None,
            data_dir: str | None = None, cache_dir: str | None = None, rank_by: str = "metric", tune=None):
    from harness.evaluate import ensemble

    target = ensemble.resolve(run_dirs, sweep_id=sweep_id, top=top, root=root, out_dir=out_dir,
                              data_dir=data_dir, cache_dir=cache_dir, rank_by=rank_by, tune=tune)
    if target.is_ensemble:
        click.echo(f"{target.label}: members share the validation split ({', '.join(ensemble.SPLIT_KEYS)} checked); "
                   f"writing into {target.folder}")
    return target


@click.command("postprocess")
@members_options
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Random search: this many thresholds drawn in [0.2, 0.9] (every min size is scored for each); "
                   "default: the grid of thresholds 0.30..0.90")
@click.option("--mask-rule", is_flag=True, help="Also search a minimum kept area: drop a class when its kept area < area_min.")
@click.option("--presence", type=click.Choice(["auto", "off", "pixels", "classifier", "mean"]), default="auto", show_default=True,
              help="Presence score of the per-class gate: pixels (mean of the top-k pixel probabilities), classifier "
                   "(the presence head), mean (of both); auto searches each the model supports; off: no gate.")
@click.option("--top-k", type=click.IntRange(min=1), default=500, show_default=True,
              help="Pixels of the top-k mean, at 350x525 (scaled to the image size).")
@click.option("--keep-top", is_flag=True, help="Never gate away each image's most likely class (every image has one).")
@click.option("--folds", type=click.IntRange(min=0), default=2, show_default=True,
              help="Held-out estimate: tune on K-1 folds of the validation images, score on the last, K times (0: none).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Held-out estimate: the mean over this many fold splits (seeds SEED, SEED+1, ...); each is reported.")
@click.option("--tta", type=click.Choice(["none", "flips"]), default="none", show_default=True,
              help="Tune on flip-TTA maps (mean of the image and its flips); `harness predict` then uses the same.")
@cli_common.data_dir_option(DATA_DIR_HELP)
@cache_dir_option
@limit_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --trials and of the folds.")
def postprocess_command(run_dirs: tuple[Path, ...], sweep_id: str | None, top: int | None, rank_by: str,
                        root: str | None, out_dir: Path | None, trials: int | None, mask_rule: bool, presence: str,
                        top_k: int, keep_top: bool, folds: int, repeats: int, tta: str, data_dir: str | None,
                        cache_dir: str | None, limit: int, seed: int) -> None:
    """Tune per-class post-processing on the validation split of a run or an ensemble of runs.

    Per class: a presence gate, a threshold and a minimum component size, or "drop" (predict nothing)
    when that scores best. Writes postprocess.json (used by `harness evaluate` and `harness predict`)
    into RUN_DIR (or the ensemble's folder) and prints the per-class table: all-empty baseline, raw
    (threshold 0.5), tuned-on, held-out (k-fold), and the decision.
    """
    from harness import runfolder
    from harness.evaluate import ensemble, postprocess_file, tuning

    if folds == 1:
        raise HarnessError("--folds 1 leaves nothing to tune on: use 2 or more (or 0 for no held-out estimate)")
    if repeats > 1 and folds == 0:
        raise HarnessError("--repeats needs a held-out estimate: drop --folds 0")
    options = dict(trials=trials or 0, mask_rule=mask_rule, presence=presence, top_k=top_k, keep_top=keep_top,
                   folds=folds or 2, repeats=repeats, tta=tta, limit=limit, seed=seed)

    def tune_member(folder: Path) -> None:  # --rank-by held-out: a run with no held-out score yet, tuned alike
        tuning.tune_target(ensemble.resolve([folder], data_dir=data_dir, cache_dir=cache_dir), **options)

    target = _target(run_dirs, sweep_id, top, root, out_dir, data_dir, cache_dir, rank_by, tune_member)
    document = tuning.tune_target(target, **{**options, "folds": folds})
    click.echo(postprocess_file.format_tuning_table(document))
    click.echo(postprocess_file.summary_line(document))
    search = document["search"]
    click.echo(f"{document['validation_images']} validation images, {search['candidates_per_class']} candidates per "
               f"class, search {search['seconds']:.2f} s; min sizes in pixels at {document['image_size']} "
               f"(@350x525: the same area at the submission size)")
    click.echo(f"wrote {target.folder / runfolder.POSTPROCESS_FILE}")


@click.command("evaluate")
@members_options
@click.option("--augment", default=None, help="Pipeline of the augmented check (none|flips|default|strong) "
              "[default: the run's augment, or default].")
@click.option("--tta", type=click.Choice(["none", "flips"]), default="none", show_default=True,
              help="flips: also score the mean prediction of the image and its horizontal and vertical flips.")
@cli_common.data_dir_option(DATA_DIR_HELP)
@cache_dir_option
@limit_option
@click.option("--overlays", type=click.IntRange(min=0), default=6, show_default=True,
              help="Validation images drawn in plots/overlays.png.")
def evaluate_command(run_dirs: tuple[Path, ...], sweep_id: str | None, top: int | None, rank_by: str, root: str | None,
                     out_dir: Path | None, augment: str | None, tta: str, data_dir: str | None, cache_dir: str | None,
                     limit: int, overlays: int) -> None:
    """Score a run or an ensemble on its validation split (plain, augmented, TTA; raw and post-processed).

    Writes evaluation.json and PNGs in plots/ (learning curves, overlays, tables) into RUN_DIR (or the
    ensemble's folder); logs them to the run's W&B run when W&B is on (single runs).
    """
    from harness import runfolder
    from harness.config import AUGMENTATIONS
    from harness.evaluate import evaluate

    if augment is not None and augment not in AUGMENTATIONS:
        raise HarnessError(f"--augment {augment!r} is not one of: {', '.join(AUGMENTATIONS)}")
    target = _target(run_dirs, sweep_id, top, root, out_dir, data_dir, cache_dir, rank_by)
    document = evaluate.evaluate_target(target, augment=augment, tta=tta, limit=limit, overlays=overlays)
    click.echo(evaluate.format_report(document))
    click.echo(f"wrote {target.folder / runfolder.EVALUATION_FILE} and {len(document['plots'])} plots in "
               f"{target.folder / runfolder.PLOTS_DIR}"
               + (" (and logged them to W&B)" if document.get("wandb") else ""))


@click.command("predict")
@members_options
@click.option("--images", "images_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of test images (e.g. DATA_DIR/test_images).")
@click.option("--out", default="submission.csv", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Submission CSV to write.")
@click.option("--sample-submission", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write rows in this file's order; its images must be exactly those in --images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--tta", type=click.Choice(["none", "flips"]), default=None,
              help="flips: average the predictions of the image and its horizontal and vertical flips "
                   "[default: what the post-processing was tuned with].")
def predict_command(run_dirs: tuple[Path, ...], sweep_id: str | None, top: int | None, rank_by: str, root: str | None,
                    out_dir: Path | None, images_dir: Path, out: Path, sample_submission: Path | None, batch_size: int,
                    tta: str | None) -> None:
    """Write a challenge submission (Image_Label,EncodedPixels at 350x525) for the images in --images,
    from one run or the average of an ensemble's members."""
    from harness.evaluate import predict

    target = _target(run_dirs, sweep_id, top, root, out_dir, rank_by=rank_by)
    result = predict.predict_target(target, images_dir, out=out, sample_submission=sample_submission,
                                    batch_size=batch_size, tta=tta)
    click.echo(f"wrote {result['path']}: {result['rows']} rows for {result['images']} images "
               f"({result['non_empty_rows']} non-empty masks; {result['members']} model(s), tta {result['tta']}; "
               f"post-processing from {result['postprocess']}); every row checked")


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
@cli_common.sweep_option()
@cli_common.root_option
@cli_common.store_option
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Best runs listed.")
def report_command(sweep_id: str, root: str | None, top: int) -> None:
    """Best runs, parallel coordinates and parameter importance of a local sweep (PNG + report.md)."""
    from harness.evaluate import reports

    result = reports.sweep_report(sweep_id, root=root, top=top)
    click.echo(reports.format_best_runs(result))
    click.echo(f"wrote {len(result['files'])} files in {result['folder']}")


def register(group: click.Group) -> None:
    """Add this area's commands to `group` (and `report` to the sweep area's `harness sweep`)."""
    for command in (postprocess_command, evaluate_command, predict_command, compare_command):
        group.add_command(command)
    sweep_group = getattr(sweep_commands, "sweep_group", None)
    if sweep_group is not None:
        sweep_group.add_command(report_command)
