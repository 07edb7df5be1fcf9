"""Exploratory statistics of a challenge-layout dataset: printed, saved as eda.json and PNG plots.

    class_frequency.png   share of images with each class
    masks_per_image.png   how many classes an image has (0-4)
    cooccurrence.png      images holding both classes (4x4 matrix)
    mask_area.png         each class's mask area as a share of its image (histograms)
    examples.png          a few images with their mask outlines

Mask areas come from the RLE run lengths (no decoding) and image sizes from the JPEG headers, so this
takes seconds even on the full 5546-image challenge set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness import CLASSES
from harness.data import labels as labels_module
from harness.data import rle as rle_module
from harness.errors import DataError
from harness.io import atomic_path, atomic_write_json

PLOTS = ("class_frequency.png", "masks_per_image.png", "cooccurrence.png", "mask_area.png", "examples.png")
_CLASS_COLORS = ("#1f77b4", "#2ca02c", "#d62728", "#ffbf00")  # Fish, Flower, Gravel, Sugar
_EXAMPLES = 6


def run_eda(data_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Statistics of DATA_DIR/train.csv; writes eda.json and the PNG plots to `out_dir` (default DATA_DIR/eda)."""
    data_dir = Path(data_dir)
    csv_path = data_dir / "train.csv"
    if not csv_path.is_file():
        raise DataError(f"{data_dir} has no train.csv (expected the challenge layout: train.csv + train_images/)")
    out_dir = Path(out_dir) if out_dir else data_dir / "eda"
    table = labels_module.read_train_csv(csv_path, data_dir / "train_images")
    summary = summarize(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_all(table, summary, out_dir)
    summary["plots"] = [str(out_dir / name) for name in PLOTS]
    atomic_write_json(out_dir / "eda.json", summary)
    return summary


def summarize(table: labels_module.LabelTable) -> dict[str, Any]:
    """Counts, shares, co-occurrence and per-class mask-area fractions of a label table."""
    presence = table.presence
    count = len(table)
    sizes = [_image_size(table.images_dir / name) for name in table.names]  # type: ignore[operator]
    areas: dict[str, list[float]] = {name: [] for name in CLASSES}
    for index, rles in enumerate(table.rles):
        height, width = sizes[index]
        for class_index, encoded in enumerate(rles):
            if encoded:
                label = table.label(index, class_index)
                areas[CLASSES[class_index]].append(rle_module.area(encoded, label) / (height * width))
    masks_per_image = presence.sum(axis=1)
    cooccurrence = presence.T.astype(np.int64) @ presence.astype(np.int64)
    distinct_sizes = sorted({f"{height}x{width}" for height, width in sizes})
    return {
        "images": count,
        "image_sizes": distinct_sizes,
        "class_counts": {name: int(presence[:, i].sum()) for i, name in enumerate(CLASSES)},
        "class_shares": {name: float(presence[:, i].mean()) for i, name in enumerate(CLASSES)},
        "masks_per_image": {str(k): int((masks_per_image == k).sum()) for k in range(len(CLASSES) + 1)},
        "cooccurrence": {"classes": list(CLASSES), "counts": cooccurrence.tolist()},
        "mask_area_fraction": {
            name: {
                "mean": float(np.mean(values)) if values else 0.0,
                "median": float(np.median(values)) if values else 0.0,
                "values": [round(value, 5) for value in values],
            }
            for name, values in areas.items()
        },
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text report of `summary` for the terminal."""
    lines = [f"{summary['images']} images (sizes HxW: {', '.join(summary['image_sizes'])})", ""]
    lines.append(f"{'class':<8} {'images':>7} {'share':>7} {'mean area':>10} {'median area':>12}")
    for name in CLASSES:
        area = summary["mask_area_fraction"][name]
        lines.append(
            f"{name:<8} {summary['class_counts'][name]:>7} {summary['class_shares'][name]:>7.1%} "
            f"{area['mean']:>10.1%} {area['median']:>12.1%}"
        )
    lines.append("")
    lines.append("classes per image: " + ", ".join(f"{k}: {v}" for k, v in summary["masks_per_image"].items()))
    lines.append("")
    lines.append("co-occurrence (images with both):")
    lines.append(" " * 8 + "".join(f"{name:>8}" for name in CLASSES))
    for name, row in zip(CLASSES, summary["cooccurrence"]["counts"]):
        lines.append(f"{name:<8}" + "".join(f"{value:>8}" for value in row))
    if summary.get("plots"):
        lines.append("")
        lines.append("plots: " + ", ".join(summary["plots"]))
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------------
def _plot_all(table: labels_module.LabelTable, summary: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    count = summary["images"]

    figure, axes = pyplot.subplots(figsize=(5, 3.5))
    shares = [summary["class_shares"][name] for name in CLASSES]
    axes.bar(CLASSES, shares, color=_CLASS_COLORS)
    axes.set_ylabel("share of images")
    axes.set_ylim(0, 1)
    axes.set_title(f"Images with each class (n={count})")
    for position, share in enumerate(shares):
        axes.text(position, share + 0.02, f"{share:.0%}", ha="center")
    _save(figure, out_dir / "class_frequency.png")

    figure, axes = pyplot.subplots(figsize=(5, 3.5))
    keys = list(summary["masks_per_image"])
    axes.bar(keys, [summary["masks_per_image"][key] for key in keys], color="#555555")
    axes.set_xlabel("classes present in the image")
    axes.set_ylabel("images")
    axes.set_title("Masks per image")
    _save(figure, out_dir / "masks_per_image.png")

    figure, axes = pyplot.subplots(figsize=(4.5, 4))
    matrix = np.array(summary["cooccurrence"]["counts"])
    shown = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(CLASSES)), CLASSES)
    axes.set_yticks(range(len(CLASSES)), CLASSES)
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black")
    axes.set_title("Images with both classes")
    figure.colorbar(shown, ax=axes, fraction=0.046)
    _save(figure, out_dir / "cooccurrence.png")

    figure, grid = pyplot.subplots(1, len(CLASSES), figsize=(12, 3), sharey=True)
    for axes, name, color in zip(grid, CLASSES, _CLASS_COLORS):
        values = summary["mask_area_fraction"][name]["values"]
        axes.hist(values, bins=20, range=(0, 1), color=color)
        axes.set_title(f"{name} (n={len(values)})")
        axes.set_xlabel("mask area / image area")
    grid[0].set_ylabel("masks")
    figure.suptitle("Mask areas")
    _save(figure, out_dir / "mask_area.png")

    _plot_examples(table, out_dir / "examples.png", pyplot)


def _plot_examples(table: labels_module.LabelTable, path: Path, pyplot: Any) -> None:
    from harness.data import cache as cache_module

    shown = min(_EXAMPLES, len(table))
    # Spread the picks over the table so the examples are not all from one corner of it.
    picks = np.linspace(0, len(table) - 1, shown).round().astype(int)
    columns = min(3, shown)
    rows = int(np.ceil(shown / columns))
    figure, grid = pyplot.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for axes in grid.ravel():
        axes.axis("off")
    for axes, index in zip(grid.ravel(), picks):
        image, masks = cache_module.load_example(
            table.images_dir / table.names[index], table.rles[index], _preview_size(table, index)  # type: ignore[operator]
        )
        axes.imshow(image)
        for class_index, color in enumerate(_CLASS_COLORS):
            if masks[..., class_index].any():
                axes.contour(masks[..., class_index], levels=[0.5], colors=[color], linewidths=1.5)
        present = [CLASSES[c] for c in range(len(CLASSES)) if table.presence[index, c]]
        axes.set_title(f"{table.names[index]}: {', '.join(present) or 'none'}", fontsize=9)
    handles = [pyplot.Line2D([0], [0], color=color, label=name) for name, color in zip(CLASSES, _CLASS_COLORS)]
    figure.legend(handles=handles, loc="lower center", ncol=len(CLASSES))
    _save(figure, path)


def _preview_size(table: labels_module.LabelTable, index: int) -> tuple[int, int]:
    height, width = _image_size(table.images_dir / table.names[index])  # type: ignore[operator]
    factor = max(1, int(np.ceil(width / 525)))  # full resolution is needlessly slow to draw
    return height // factor, width // factor


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the JPEG header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None
    return height, width


def _save(figure: Any, path: Path) -> None:
    from matplotlib import pyplot

    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    pyplot.close(figure)
