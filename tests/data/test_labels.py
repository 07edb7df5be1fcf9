"""Reading train.csv and sample_submission.csv: the table, and errors that name the file and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.data import labels
from harness.errors import DataError


def _layout(tmp_path: Path, rows: list[str], images: list[str], header: str = "Image_Label,EncodedPixels") -> Path:
    (tmp_path / "train_images").mkdir()
    for name in images:
        (tmp_path / "train_images" / name).write_bytes(b"")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join([header, *rows]) + "\n")
    return csv_path


def test_groups_rows_per_image_in_class_order(tmp_path):
    csv_path = _layout(
        tmp_path,
        ["a.jpg_Sugar,1 2", "a.jpg_Fish,", "a.jpg_Gravel,3 1", "a.jpg_Flower,", "b.jpg_Flower,5 5"],
        ["a.jpg", "b.jpg"],
    )
    table = labels.read_train_csv(csv_path)
    assert table.names == ["a.jpg", "b.jpg"]
    assert table.rles[0] == ("", "", "3 1", "1 2")
    # b.jpg lists only Flower: the other classes read as absent.
    assert table.rles[1] == ("", "5 5", "", "")
    np.testing.assert_array_equal(table.presence, [[0, 0, 1, 1], [0, 1, 0, 0]])
    assert table.label(0, 3) == "a.jpg_Sugar"
    assert table.masks(0, 2, 2)[..., 3].sum() == 2


def test_missing_column_is_named(tmp_path):
    csv_path = _layout(tmp_path, ["a.jpg_Fish,1 1"], ["a.jpg"], header="Image_Label,Pixels")
    with pytest.raises(DataError, match="missing column.*EncodedPixels") as caught:
        labels.read_train_csv(csv_path)
    assert str(csv_path) in str(caught.value)


def test_unknown_class_names_the_row(tmp_path):
    csv_path = _layout(tmp_path, ["a.jpg_Fish,", "a.jpg_Cumulus,1 1"], ["a.jpg"])
    with pytest.raises(DataError, match=r"line 3.*a.jpg_Cumulus.*unknown class 'Cumulus'"):
        labels.read_train_csv(csv_path)


def test_label_without_class_separator_is_rejected(tmp_path):
    csv_path = _layout(tmp_path, ["ajpgFish,"], ["a.jpg"])
    with pytest.raises(DataError, match="line 2.*'ajpgFish'"):
        labels.read_train_csv(csv_path)


def test_duplicate_rows_name_both_lines(tmp_path):
    csv_path = _layout(tmp_path, ["a.jpg_Fish,1 1", "a.jpg_Sugar,", "a.jpg_Fish,2 1"], ["a.jpg"])
    with pytest.raises(DataError, match=r"line 4: duplicate row for 'a.jpg_Fish' \(first on line 2\)"):
        labels.read_train_csv(csv_path)


def test_missing_images_are_listed(tmp_path):
    csv_path = _layout(tmp_path, ["a.jpg_Fish,", "b.jpg_Fish,", "c.jpg_Fish,"], ["b.jpg"])
    with pytest.raises(DataError, match=r"2 image\(s\).*a.jpg, c.jpg"):
        labels.read_train_csv(csv_path)
    # Reading the labels alone is still possible.
    assert labels.read_train_csv(csv_path, check_images=False).names == ["a.jpg", "b.jpg", "c.jpg"]


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="not found.*nothere.csv"):
        labels.read_train_csv(tmp_path / "nothere.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv is empty"):
        labels.read_train_csv(tmp_path / "empty.csv")
    header_only = _layout(tmp_path, [], [])
    with pytest.raises(DataError, match="no rows"):
        labels.read_train_csv(header_only)


def test_missing_images_folder(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("Image_Label,EncodedPixels\na.jpg_Fish,\n")
    with pytest.raises(DataError, match="images folder not found"):
        labels.read_train_csv(csv_path)


def test_sample_submission_keeps_file_order(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text("Image_Label,EncodedPixels\nz.jpg_Sugar,1 1\nz.jpg_Fish,1 1\na.jpg_Flower,1 1\n")
    assert labels.read_sample_submission(path) == ["z.jpg_Sugar", "z.jpg_Fish", "a.jpg_Flower"]
    path.write_text("Image_Label,EncodedPixels\nz.jpg_Sugar,1 1\nz.jpg_Sugar,1 1\n")
    with pytest.raises(DataError, match="line 3: duplicate"):
        labels.read_sample_submission(path)


def test_decode_masks_names_the_bad_label():
    with pytest.raises(DataError, match="x.jpg_Flower"):
        labels.decode_masks(("", "1 2 3", "", ""), 4, 4, "x.jpg")
