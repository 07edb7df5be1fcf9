"""Submission files: RLE round trip at 350x525, sample-submission row order, validation, `harness predict`."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness import CLASSES
from harness.cli import main
from harness.data import labels, rle
from harness.errors import DataError, HarnessError
from harness.evaluate import predict


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _sample_submission(path: Path, images: list[str], seed: int = 0) -> list[str]:
    """A sample submission listing `images` x classes in a shuffled order (like Kaggle's is not sorted)."""
    order = [f"{image}_{name}" for image in images for name in CLASSES]
    np.random.default_rng(seed).shuffle(order)
    path.write_text("Image_Label,EncodedPixels\n" + "".join(f"{label},1 1\n" for label in order))
    return order


def test_submission_round_trips_through_the_rle_decoder_in_sample_order(tmp_path: Path):
    rng = np.random.default_rng(0)
    images = [f"img{index:02d}.jpg" for index in range(5)]
    masks = {}
    for image in images:
        image_masks = np.zeros((350, 525, 4), dtype=np.uint8)
        for channel in range(4):
            if rng.random() < 0.7:  # some classes absent: empty RLE
                top, left = rng.integers(0, 300), rng.integers(0, 450)
                image_masks[top:top + rng.integers(5, 50), left:left + rng.integers(5, 75), channel] = 1
        image_masks[0, 0, 0] = image_masks[-1, -1, 3] = 1  # first and last pixel: the RLE's edge cases
        masks[image] = image_masks
    order = _sample_submission(tmp_path / "sample.csv", images)
    assert predict.submission_order(images, tmp_path / "sample.csv") == order
    encoded = predict.encode_masks(iter(masks.items()))
    out = predict.write_submission(tmp_path / "submission.csv", order, encoded)
    rows = _read_rows(out)
    assert rows[0] == ["Image_Label", "EncodedPixels"]
    assert [row[0] for row in rows[1:]] == order
    for label, encoded_pixels in rows[1:]:
        image, class_index = labels.split_image_label(label, "test")
        np.testing.assert_array_equal(rle.decode(encoded_pixels, 350, 525, label), masks[image][..., class_index])
    assert predict.validate_submission(out, order) == len(order)


def test_submission_order_names_missing_and_extra_images(tmp_path: Path):
    _sample_submission(tmp_path / "sample.csv", ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(DataError) as raised:
        predict.submission_order(["a.jpg", "b.jpg", "z.jpg"], tmp_path / "sample.csv")
    message = str(raised.value)
    assert "sample.csv" in message and "missing from the folder: c.jpg" in message and "not in the sample submission: z.jpg" in message
    (tmp_path / "partial.csv").write_text("Image_Label,EncodedPixels\na.jpg_Fish,\na.jpg_Sugar,\n")
    with pytest.raises(DataError, match="a.jpg"):
        predict.submission_order(["a.jpg"], tmp_path / "partial.csv")
    assert predict.submission_order(["b.jpg", "a.jpg"], None)[:5] == [
        "b.jpg_Fish", "b.jpg_Flower", "b.jpg_Gravel", "b.jpg_Sugar", "a.jpg_Fish"]


def test_validation_rejects_a_bad_file_and_nothing_is_left_behind(tmp_path: Path):
    order = ["a.jpg_Fish", "a.jpg_Flower", "a.jpg_Gravel", "a.jpg_Sugar"]
    encoded = {label: "" for label in order}
    encoded["a.jpg_Gravel"] = f"{350 * 525 - 5} 10"  # runs past the last pixel of 350x525
    with pytest.raises(HarnessError, match="a.jpg_Gravel"):
        predict.write_submission(tmp_path / "submission.csv", order, encoded)
    assert list(tmp_path.iterdir()) == []  # no submission, no temporary file
    bad = tmp_path / "bad.csv"
    bad.write_text("Image_Label,EncodedPixels\na.jpg_Fish,\na.jpg_Gravel,\na.jpg_Flower,\na.jpg_Sugar,\n")
    with pytest.raises(HarnessError, match="line 3"):
        predict.validate_submission(bad, order)


def test_resize_masks_is_nearest_and_binary():
    masks = np.zeros((64, 96, 4), dtype=np.uint8)
    masks[:32, :48, 2] = 1
    resized = predict.resize_masks(masks)
    assert resized.shape == (350, 525, 4) and set(np.unique(resized)) == {0, 1}
    assert resized[:175, :262, 2].all() and not resized[176:, 263:, 2].any() and not resized[..., 0].any()


@pytest.mark.slow
def test_predict_command_writes_a_checked_submission_in_sample_order(tuned_copy: Path, synth_dir: Path, tmp_path: Path):
    images_dir = synth_dir / "test_images"
    sample = synth_dir / "sample_submission.csv"
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(main, ["predict", str(tuned_copy), "--images", str(images_dir), "--out", str(out),
                                       "--sample-submission", str(sample), "--batch-size", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = _read_rows(out)
    assert [row[0] for row in rows[1:]] == labels.read_sample_submission(sample)
    assert len(rows) - 1 == 4 * len(list(images_dir.iterdir()))
    decoded = {label: rle.decode(encoded_pixels, 350, 525, label) for label, encoded_pixels in rows[1:]}
    # The rows are the model's post-processed masks, resized: recompute one image's by hand.
    from harness.data import cache
    from harness.evaluate import inference, postprocess, postprocess_file

    image = sorted(path.name for path in images_dir.iterdir())[1]
    probabilities = inference.predict_maps(inference.load_model(tuned_copy), cache.load_image(images_dir / image, (64, 96))[None], progress=False).probabilities
    expected = predict.resize_masks(postprocess.apply_postprocess(probabilities, postprocess_file.load_params(tuned_copy))[0])
    for channel, name in enumerate(CLASSES):
        np.testing.assert_array_equal(decoded[f"{image}_{name}"], expected[..., channel])

    # A folder that does not match the sample submission: exit 2, the extra image named, no file written.
    extra_dir = tmp_path / "more_images"
    shutil.copytree(images_dir, extra_dir)
    shutil.copy(next(images_dir.iterdir()), extra_dir / "extra_image.jpg")
    out_2 = tmp_path / "submission_2.csv"
    result = CliRunner().invoke(main, ["predict", str(tuned_copy), "--images", str(extra_dir), "--out", str(out_2),
                                       "--sample-submission", str(sample)])
    assert result.exit_code == 2 and "extra_image.jpg" in result.output
    assert not out_2.exists()
