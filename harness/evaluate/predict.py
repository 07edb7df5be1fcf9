"""`harness predict RUN_DIR --images DIR`: a challenge submission from a trained run.

Test images are read at the run's image size (`harness.data.cache.load_image`, INTER_AREA),
standardised, predicted in batches, post-processed with RUN_DIR/postprocess.json (or the plain
threshold 0.5, with a warning), resized to the submission's 350x525 (HxW) with nearest-neighbour and
run-length encoded. With `--sample-submission` the rows follow that file's order and its image set
must equal the folder's. The CSV is written to a temporary file, checked (every row decodes at
350x525, every expected Image_Label appears exactly once) and only then renamed into place.
"""

from __future__ import annotations

import csv
import io as text_io
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from harness import CLASSES
from harness import io, runfolder
from harness.errors import DataError, HarnessError
from harness.evaluate import ensemble, inference, postprocess, postprocess_file

SUBMISSION_HW = (350, 525)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HEADER = ("Image_Label", "EncodedPixels")
_MAX_LISTED = 10


def list_images(images_dir: str | os.PathLike[str]) -> list[str]:
    """File names of the test images in `images_dir`, sorted."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"test image folder not found: {images_dir}")
    names = sorted(path.name for path in images_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not names:
        raise DataError(f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return names


def submission_order(image_names: Sequence[str], sample_submission: str | os.PathLike[str] | None) -> list[str]:
    """The Image_Label rows to write: the sample submission's order, else image by image in class order."""
    if sample_submission is None:
        return [f"{name}_{class_name}" for name in image_names for class_name in CLASSES]
    from harness.data import labels

    rows = labels.read_sample_submission(sample_submission)
    wanted: dict[str, set[int]] = {}
    for line, image_label in enumerate(rows, start=2):
        image, class_index = labels.split_image_label(image_label, f"{sample_submission} line {line}")
        wanted.setdefault(image, set()).add(class_index)
    missing = sorted(set(wanted) - set(image_names))
    extra = sorted(set(image_names) - set(wanted))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} image(s) of the sample submission are missing from the folder: {_listing(missing)}")
        if extra:
            parts.append(f"{len(extra)} image(s) in the folder are not in the sample submission: {_listing(extra)}")
        raise DataError(f"{sample_submission}: " + "; ".join(parts))
    incomplete = sorted(image for image, classes in wanted.items() if len(classes) != len(CLASSES))
    if incomplete:
        raise DataError(f"{sample_submission}: images without a row for each of the 4 classes: {_listing(incomplete)}")
    return rows


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def resize_masks(masks: np.ndarray, size: tuple[int, int] = SUBMISSION_HW) -> np.ndarray:
    """(H, W, C) uint8 masks resized to `size` (HxW) with nearest-neighbour (stays binary)."""
    import cv2

    if masks.shape[:2] == tuple(size):
        return masks
    channels = [cv2.resize(np.ascontiguousarray(masks[..., channel]), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
                for channel in range(masks.shape[-1])]
    return np.stack(channels, axis=-1)


def encode_masks(masks: Iterator[tuple[str, np.ndarray]]) -> dict[str, str]:
    """{Image_Label: RLE} of (image name, (350, 525, 4) masks) pairs."""
    from harness.data import rle

    encoded = {}
    for name, image_masks in masks:
        for channel, class_name in enumerate(CLASSES):
            encoded[f"{name}_{class_name}"] = rle.encode(image_masks[..., channel])
    return encoded


def write_submission(path: str | os.PathLike[str], order: Sequence[str], encoded: Mapping[str, str]) -> Path:
    """Write the CSV atomically, after validating exactly the bytes that will be renamed into place."""
    missing = [label for label in order if label not in encoded]
    if missing:
        raise HarnessError(f"no prediction for {_listing(missing)}")
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for label in order:
        writer.writerow((label, encoded[label]))
    path = Path(path)
    with io.atomic_path(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        validate_submission(tmp, order)
    return path


def validate_submission(path: str | os.PathLike[str], order: Sequence[str], size: tuple[int, int] = SUBMISSION_HW) -> int:
    """Check a submission file: the header, the rows in `order`, every RLE decodes at `size`. Rows checked."""
    from harness.data import rle

    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0]) != HEADER:
        raise HarnessError(f"{path}: header is {rows[0] if rows else 'missing'}, expected {','.join(HEADER)}")
    body = rows[1:]
    if len(body) != len(order):
        raise HarnessError(f"{path}: {len(body)} rows, expected {len(order)}")
    for line, (row, expected) in enumerate(zip(body, order), start=2):
        if len(row) != 2:
            raise HarnessError(f"{path} line {line}: {len(row)} fields, expected 2")
        if row[0] != expected:
            raise HarnessError(f"{path} line {line}: Image_Label {row[0]!r}, expected {expected!r}")
        rle.decode(row[1], size[0], size[1], label=row[0])
    return len(body)


def predict_target(
    target: ensemble.Target,
    images_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] = "submission.csv",
    sample_submission: str | os.PathLike[str] | None = None,
    batch_size: int = inference.PREDICT_BATCH,
    tta: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of `images_dir` with the best model of each member (probabilities and
    presence averaged), post-process with TARGET/postprocess.json and write the submission CSV.

    `tta`: None uses the TTA the post-processing was tuned with (postprocess.json's "tta", else none).
    """
    import tqdm

    from harness.data import cache

    image_names = list_images(images_dir)
    order = submission_order(image_names, sample_submission)
    params, tuned = postprocess_file.params_for_run(target.folder)
    if tta is None:
        document = postprocess_file.load_params(target.folder) if tuned else None
        tta = str((document or {}).get("tta", "none"))
    models = ensemble.Models(target).all()
    size = target.config.image_hw
    images_dir = Path(images_dir)

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(image_names), batch_size):
            yield np.stack([cache.load_image(images_dir / name, size) for name in image_names[start:start + batch_size]])

    def masks() -> Iterator[tuple[str, np.ndarray]]:
        position = 0
        bar = tqdm.tqdm(total=len(image_names), desc="predicting test images", unit="image", disable=not progress)
        for images in batches():
            maps = ensemble.average([next(inference.predict_batches(model, iter([images]), tta=tta)) for model in models])
            processed = postprocess.apply_postprocess(maps.probabilities, params, maps.presence)
            for image_masks in processed:
                yield image_names[position], resize_masks(image_masks)
                position += 1
            bar.update(len(processed))
        bar.close()

    encoded = encode_masks(masks())
    path = write_submission(out, order, encoded)
    non_empty = sum(1 for label in order if encoded[label])
    return {
        "path": str(path),
        "images": len(image_names),
        "rows": len(order),
        "non_empty_rows": non_empty,
        "members": len(target.members),
        "tta": tta,
        "postprocess": runfolder.POSTPROCESS_FILE if tuned else "default",
    }
