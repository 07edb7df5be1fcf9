"""Reading the challenge's `train.csv` and `sample_submission.csv`.

Rows are `Image_Label,EncodedPixels` with `Image_Label = <image>.jpg_<Class>`. The table groups them per
image with the classes in the fixed order `harness.CLASSES`. A class row that is missing for an image
is read as "absent" (the official files always list all four; a missing row can only mean no mask).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from harness import CLASSES
from harness.data import rle as rle_module
from harness.errors import DataError

REQUIRED_COLUMNS = ("Image_Label", "EncodedPixels")
# Listing more than this many missing images in one message helps nobody.
_MAX_LISTED = 10


@dataclasses.dataclass
class LabelTable:
    """Per-image labels: `rles[i][c]` is image `names[i]`'s RLE for `CLASSES[c]` ('' when absent)."""

    names: list[str]
    rles: list[tuple[str, str, str, str]]
    presence: np.ndarray  # bool (N, 4)
    csv_path: Path | None = None
    images_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.names)

    def label(self, index: int, class_index: int) -> str:
        return f"{self.names[index]}_{CLASSES[class_index]}"

    def masks(self, index: int, height: int, width: int) -> np.ndarray:
        """Image `index`'s four masks at its own size: uint8 (height, width, 4)."""
        return decode_masks(self.rles[index], height, width, self.names[index])


def decode_masks(rles: tuple[str, ...], height: int, width: int, image_name: str) -> np.ndarray:
    """Four RLE strings (class order) -> uint8 (height, width, 4); errors name `<image>_<Class>`."""
    masks = np.zeros((height, width, len(CLASSES)), dtype=np.uint8)
    for class_index, encoded in enumerate(rles):
        if encoded:
            masks[..., class_index] = rle_module.decode(
                encoded, height, width, label=f"{image_name}_{CLASSES[class_index]}"
            )
    return masks


def split_image_label(image_label: str, where: str) -> tuple[str, int]:
    """'<image>.jpg_<Class>' -> (image name, class index); DataError naming `where` otherwise."""
    image, separator, class_name = image_label.rpartition("_")
    if not separator or not image:
        raise DataError(f"{where}: Image_Label {image_label!r} is not '<image>.jpg_<Class>'")
    if class_name not in CLASSES:
        raise DataError(
            f"{where}: Image_Label {image_label!r} has unknown class {class_name!r}; "
            f"expected one of {', '.join(CLASSES)}"
        )
    return image, CLASSES.index(class_name)


def read_train_csv(
    csv_path: str | Path, images_dir: str | Path | None = None, check_images: bool = True
) -> LabelTable:
    """Read a challenge `train.csv`; images must exist in `images_dir` (default: <csv dir>/train_images)."""
    csv_path = Path(csv_path)
    images_dir = Path(images_dir) if images_dir is not None else csv_path.parent / "train_images"
    rows = _read_rows(csv_path)
    order: dict[str, int] = {}
    rles: list[list[str]] = []
    seen: dict[str, int] = {}
    for line_number, image_label, encoded in rows:
        where = f"{csv_path} line {line_number}"
        image, class_index = split_image_label(image_label, where)
        if image_label in seen:
            raise DataError(f"{where}: duplicate row for {image_label!r} (first on line {seen[image_label]})")
        seen[image_label] = line_number
        if image not in order:
            order[image] = len(rles)
            rles.append(["", "", "", ""])
        rles[order[image]][class_index] = encoded.strip()
    if not order:
        raise DataError(f"{csv_path}: no rows (expected Image_Label,EncodedPixels rows)")
    names = list(order)
    if check_images:
        _check_images_exist(names, images_dir, csv_path)
    presence = np.array([[bool(value) for value in row] for row in rles], dtype=bool).reshape(-1, len(CLASSES))
    return LabelTable(
        names=names,
        rles=[tuple(row) for row in rles],  # type: ignore[misc]
        presence=presence,
        csv_path=csv_path,
        images_dir=images_dir,
    )


def read_sample_submission(path: str | Path) -> list[str]:
    """The Image_Label column of a sample submission, in file order (validated like train.csv)."""
    path = Path(path)
    labels = []
    seen: set[str] = set()
    for line_number, image_label, _ in _read_rows(path):
        where = f"{path} line {line_number}"
        split_image_label(image_label, where)
        if image_label in seen:
            raise DataError(f"{where}: duplicate row for {image_label!r}")
        seen.add(image_label)
        labels.append(image_label)
    return labels


def _read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, Image_Label, EncodedPixels) of each data row."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"label file not found: {path}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty (expected the header Image_Label,EncodedPixels)")
        header = [column.strip().lstrip("\ufeff") for column in header]
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'} "
                f"(expected Image_Label,EncodedPixels)"
            )
        label_column = header.index("Image_Label")
        pixels_column = header.index("EncodedPixels")
        rows = []
        for record in reader:
            if not record or all(not field.strip() for field in record):
                continue
            line_number = reader.line_num
            if len(record) <= max(label_column, pixels_column):
                # A row with no EncodedPixels field at all reads as an absent mask.
                record = record + [""] * (max(label_column, pixels_column) + 1 - len(record))
            rows.append((line_number, record[label_column].strip(), record[pixels_column]))
    return rows


def _check_images_exist(names: list[str], images_dir: Path, csv_path: Path) -> None:
    if not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir} (the images listed in {csv_path})")
    present = {entry.name for entry in images_dir.iterdir()}
    missing = [name for name in names if name not in present]
    if missing:
        listed = ", ".join(missing[:_MAX_LISTED]) + (f", ... ({len(missing)} in all)" if len(missing) > _MAX_LISTED else "")
        raise DataError(f"{len(missing)} image(s) listed in {csv_path} are missing from {images_dir}: {listed}")
