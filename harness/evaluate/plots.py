"""Pictures of a run (PNG, matplotlib's Agg backend): curves, overlays, tables, charts.

Every function takes plain data, writes one PNG atomically and returns its path; matplotlib is
imported inside, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from harness import CLASSES
from harness.io import atomic_path

# One colour per class (RGB 0..1), in CLASSES order.
CLASS_COLORS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure: Any, path: str | Path, dpi: int = 100) -> Path:
    pyplot = _pyplot()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    pyplot.close(figure)
    return path


def learning_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss, soft dice, challenge dice (train and validation) and the learning rate per epoch."""
    pyplot = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = (("loss", "loss"), ("dice_coef", "soft dice"), ("kaggle_dice", "challenge dice"), ("lr", "learning rate"))
    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    epochs = [int(row.get("epoch", index + 1)) for index, row in enumerate(rows)]
    for axis, (key, label) in zip(axes, panels):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            name = prefix + key
            values = [row.get(name) for row in rows]
            if key == "lr" and prefix:
                continue
            points = [(epoch, value) for epoch, value in zip(epochs, values) if isinstance(value, (int, float))]
            if points:
                axis.plot(*zip(*points), style, markersize=3, label="validation" if prefix else "train")
        axis.set_title(label)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if key == "lr":
            axis.set_yscale("log")
        elif axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def mask_overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB float image (H, W, 3) in [0, 1] with each class's mask tinted in its colour."""
    picture = np.asarray(image, dtype=np.float32)
    if picture.max() > 1.0:
        picture = picture / 255.0
    picture = picture.copy()
    for channel, color in enumerate(CLASS_COLORS):
        selected = np.asarray(masks[..., channel]).astype(bool)
        picture[selected] = (1.0 - alpha) * picture[selected] + alpha * np.asarray(color, dtype=np.float32)
    return np.clip(picture, 0.0, 1.0)


def overlays(
    images: np.ndarray,
    truth: np.ndarray,
    raw: np.ndarray,
    processed: np.ndarray,
    names: Sequence[str],
    path: str | Path,
    scores: Sequence[tuple[float, float]] | None = None,
) -> Path:
    """One row per image: the image, the truth, the raw (thresholded) and the post-processed masks."""
    pyplot = _pyplot()
    from matplotlib.patches import Patch

    rows = len(images)
    figure, axes = pyplot.subplots(rows, 4, figsize=(13, 2.4 * rows + 0.6), squeeze=False)
    headings = ("image", "truth", "raw (threshold 0.5)", "post-processed")
    for row in range(rows):
        panels = (
            np.asarray(images[row], dtype=np.float32) / 255.0,
            mask_overlay(images[row], truth[row]),
            mask_overlay(images[row], raw[row]),
            mask_overlay(images[row], processed[row]),
        )
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(panel)
            axis.set_xticks([])
            axis.set_yticks([])
            heading = headings[column]
            if column >= 2 and scores is not None:
                heading += f"  dice {scores[row][column - 2]:.3f}"
            axis.set_title(heading if row == 0 or column >= 2 else "", fontsize=9)
        axes[row, 0].set_ylabel(str(names[row])[:24], fontsize=8)
    handles = [Patch(color=color, label=name) for name, color in zip(CLASSES, CLASS_COLORS)]
    figure.legend(handles=handles, loc="lower center", ncol=len(CLASSES), frameon=False)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(figure, path)


def table_png(header: Sequence[str], rows: Sequence[Sequence[Any]], path: str | Path, title: str = "") -> Path:
    """A table as a picture (for the W&B run and reports): numbers shown with 4 decimals."""
    pyplot = _pyplot()
    text = [[f"{value:.4f}" if isinstance(value, float) else str(value) for value in row] for row in rows]
    figure, axis = pyplot.subplots(figsize=(max(6.0, 1.5 * len(header)), 0.45 * (len(rows) + 1) + 0.8))
    axis.axis("off")
    table = axis.table(cellText=text, colLabels=list(header), loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.3)
    table.auto_set_column_width(list(range(len(header))))
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    if title:
        axis.set_title(title)
    return _save(figure, path)


def search_heatmaps(scores: np.ndarray, thresholds: Sequence[float], min_sizes: Sequence[int], path: str | Path) -> Path:
    """Per class, the mean dice over (threshold, min size), best over the mask-level rule: (C, T, S, ...)."""
    pyplot = _pyplot()
    reduced = scores.reshape(scores.shape[0], scores.shape[1], scores.shape[2], -1).max(axis=-1)
    figure, axes = pyplot.subplots(1, reduced.shape[0], figsize=(4.0 * reduced.shape[0], 3.6), squeeze=False)
    for channel, axis in enumerate(axes[0]):
        image = axis.imshow(reduced[channel], aspect="auto", origin="lower", cmap="viridis")
        best = np.unravel_index(int(np.argmax(reduced[channel])), reduced[channel].shape)
        axis.plot(best[1], best[0], "r*", markersize=12)
        axis.set_title(CLASSES[channel] if channel < len(CLASSES) else str(channel))
        axis.set_yticks(range(len(thresholds)))
        axis.set_yticklabels([f"{value:.2f}" for value in thresholds], fontsize=7)
        axis.set_xticks(range(len(min_sizes)))
        axis.set_xticklabels([str(value) for value in min_sizes], rotation=90, fontsize=7)
        axis.set_xlabel("min component size (px)")
        if channel == 0:
            axis.set_ylabel("threshold")
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle("validation dice per class over the post-processing search (star: chosen)")
    figure.tight_layout()
    return _save(figure, path)


def grouped_bars(
    groups: Sequence[str], series: Mapping[str, Sequence[float]], path: str | Path, title: str = "", ylabel: str = "dice"
) -> Path:
    """Bars per group (e.g. classes) for each series (e.g. runs or before/after), values written on top."""
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(max(6.0, 1.6 * len(groups)), 4.0))
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(groups))
    for offset, (label, values) in enumerate(series.items()):
        bars = axis.bar(positions + (offset - (len(series) - 1) / 2) * width, values, width, label=label)
        axis.bar_label(bars, labels=[f"{value:.3f}" for value in values], fontsize=7, padding=1)
    axis.set_xticks(positions)
    axis.set_xticklabels(groups)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, max(1.0, max((max(values) for values in series.values() if len(values)), default=1.0) * 1.1))
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title)
    return _save(figure, path)


def parallel_coordinates(
    columns: Sequence[str],
    values: np.ndarray,
    tick_labels: Mapping[int, Sequence[tuple[float, str]]],
    color_values: np.ndarray,
    path: str | Path,
    color_label: str = "",
    title: str = "",
) -> Path:
    """One line per run across the columns (each scaled to [0, 1]); coloured by `color_values`.

    `values` is (runs, columns) numeric (categorical columns already mapped to positions);
    `tick_labels[column]` gives (position, text) ticks for that axis. NaN breaks a line.
    """
    pyplot = _pyplot()
    from matplotlib import cm, colors

    values = np.asarray(values, dtype=np.float64)
    low = np.nanmin(values, axis=0) if values.size else np.zeros(len(columns))
    high = np.nanmax(values, axis=0) if values.size else np.ones(len(columns))
    span = np.where(high > low, high - low, 1.0)
    scaled = (values - low) / span
    figure, axis = pyplot.subplots(figsize=(max(7.0, 1.7 * len(columns)), 4.8))
    finite = np.isfinite(color_values)
    norm = colors.Normalize(
        vmin=float(np.min(color_values[finite])) if finite.any() else 0.0,
        vmax=float(np.max(color_values[finite])) if finite.any() else 1.0,
    )
    colormap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else pyplot.get_cmap("viridis")
    order = np.argsort(np.where(finite, color_values, -np.inf))  # best runs drawn last, on top
    for run in order:
        color = colormap(norm(color_values[run])) if finite[run] else (0.6, 0.6, 0.6, 0.6)
        axis.plot(range(len(columns)), scaled[run], "-o", color=color, alpha=0.85, linewidth=1.4, markersize=3)
    for column in range(len(columns)):
        axis.axvline(column, color="black", linewidth=0.8)
        ticks = tick_labels.get(column)
        if ticks is None:
            ticks = [(low[column], f"{low[column]:.3g}"), (high[column], f"{high[column]:.3g}")]
        for position, text in ticks:
            axis.text(column + 0.03, (position - low[column]) / span[column], text, fontsize=7, va="center")
    axis.set_xticks(range(len(columns)))
    axis.set_xticklabels(columns, rotation=20)
    axis.set_yticks([])
    axis.set_xlim(-0.2, len(columns) - 0.5)
    axis.set_ylim(-0.08, 1.08)
    mappable = cm.ScalarMappable(norm=norm, cmap=colormap)
    figure.colorbar(mappable, ax=axis, label=color_label)
    if title:
        axis.set_title(title)
    return _save(figure, path)


def importance_bars(names: Sequence[str], correlation: Sequence[float], importance: Sequence[float], path: str | Path, metric: str) -> Path:
    """Per parameter: the correlation with the metric (signed) and the importance (|Spearman|)."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 0.45 * max(len(names), 2) + 1.5), sharey=True)
    positions = np.arange(len(names))
    correlation = np.nan_to_num(np.asarray(correlation, dtype=np.float64))
    importance = np.nan_to_num(np.asarray(importance, dtype=np.float64))
    axes[0].barh(positions, correlation, color=["tab:green" if value >= 0 else "tab:red" for value in correlation])
    axes[0].set_title(f"correlation with {metric} (Pearson)")
    axes[0].set_xlim(-1, 1)
    axes[0].axvline(0, color="black", linewidth=0.8)
    axes[1].barh(positions, importance, color="tab:blue")
    axes[1].set_title("importance (|Spearman rho|; eta for categorical)")
    axes[1].set_xlim(0, 1)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(names)
    for axis in axes:
        axis.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # the axes share y: inverting once puts the most important on top
    figure.tight_layout()
    return _save(figure, path)

