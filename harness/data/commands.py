"""Click commands of the data area: `harness synth`, `harness prepare`, `harness eda`.

Thin on purpose: parse, call one function, print. Heavy modules (OpenCV, matplotlib) load inside.
"""

from __future__ import annotations

from pathlib import Path

import click

from harness.config import parse_size
from harness.errors import DataError


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", type=click.IntRange(min=1), required=True, help="Number of labelled train images.")
@click.option("--test-images", type=click.IntRange(min=0), default=0, show_default=True, help="Number of unlabelled test images.")
@click.option("--size", default="350x525", show_default=True, help="Image size HxW (350x525: the challenge's quarter size).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same dataset.")
def synth_command(out: Path, images: int, test_images: int, size: str, seed: int) -> None:
    """Generate a synthetic dataset in the challenge's layout at OUT."""
    from harness.data import synth

    height, width = parse_size(size, key="--size")
    synth.synthesize(out, images=images, test_images=test_images, size=(height, width), seed=seed)
    click.echo(
        f"wrote {images} train + {test_images} test images ({height}x{width}) to {out} "
        f"(train.csv, train_images/, test_images/, sample_submission.csv)"
    )


@click.command("prepare")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--size", default="384x576", show_default=True, help="Cache image size HxW.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Decoding processes [default: CPU count].")
@click.option("--cache-dir", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache root [default: DATA_DIR/cache].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare_command(data_dir: Path, size: str, workers: int | None, cache_dir: Path | None, quiet: bool) -> None:
    """Decode and resize DATA_DIR's images and masks once into a memory-mapped cache."""
    from harness.data import cache

    height, width = parse_size(size, key="--size")
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    root = cache.prepare(data_dir, (height, width), cache_dir=cache_dir, workers=workers, progress=not quiet)
    opened = cache.open_cache(root, (height, width))
    click.echo(f"cache ready: {cache.describe(opened)}")


@click.command("eda")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the PNG plots and eda.json go [default: DATA_DIR/eda].")
def eda_command(data_dir: Path, out_dir: Path | None) -> None:
    """Class frequencies, masks per image, co-occurrence and mask areas of DATA_DIR (printed and plotted)."""
    from harness.data import eda

    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    summary = eda.run_eda(data_dir, out_dir)
    click.echo(eda.format_summary(summary))


def register(group: click.Group) -> None:
    """Add this area's commands to `group`."""
    for command in (synth_command, prepare_command, eda_command):
        group.add_command(command)
