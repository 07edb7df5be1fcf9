"""Evaluation on real challenge imagery (../shared/data/clouds-real), kept small: a 16-image subset.

The model is the session's smoke-trained run (trained on generated data); what is tested here is the
pipeline on real JPEGs and real labels: `--data-dir` moves the run onto the subset (its own cache is
prepared on the fly), post-processing, evaluation and a submission for real 350x525 images.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness import CLASSES
from harness.cli import main
from harness.data import rle

SUBSET_IMAGES = 16
TEST_IMAGES = 3


@pytest.fixture(scope="module")
def real_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 16 images of clouds-real with their train.csv rows, plus 3 of them as test images."""
    source = shared_data / "clouds-real"
    if not (source / "train.csv").is_file():
        pytest.skip(f"{source} has no train.csv")
    with open(source / "train.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    names: list[str] = []
    for label, _ in body:
        image = label.rpartition("_")[0]
        if image not in names:
            names.append(image)
        if len(names) > SUBSET_IMAGES:
            names.pop()
            break
    subset = tmp_path_factory.mktemp("real") / "clouds-subset"
    (subset / "train_images").mkdir(parents=True)
    (subset / "test_images").mkdir()
    with open(subset / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(row for row in body if row[0].rpartition("_")[0] in names)
    for name in names:
        shutil.copy(source / "train_images" / name, subset / "train_images" / name)
    test_names = names[:TEST_IMAGES]
    for name in test_names:
        shutil.copy(source / "train_images" / name, subset / "test_images" / name)
    (subset / "sample_submission.csv").write_text(
        "Image_Label,EncodedPixels\n" + "".join(f"{name}_{class_name},1 1\n" for name in reversed(test_names) for class_name in CLASSES)
    )
    return subset


@pytest.mark.realdata
@pytest.mark.slow
def test_postprocess_evaluate_and_predict_on_real_images(run_copy: Path, real_subset: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(main, ["postprocess", str(run_copy), "--data-dir", str(real_subset)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tuned = json.loads((run_copy / "postprocess.json").read_text())
    assert tuned["validation_images"] == 4  # 25% of 16, stratified
    result = runner.invoke(main, ["evaluate", str(run_copy), "--data-dir", str(real_subset), "--overlays", "2"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads((run_copy / "evaluation.json").read_text())
    plain = document["results"]["plain"]
    assert plain["kaggle_dice_post"] == pytest.approx(tuned["mean"]["dice_after"], abs=1e-9)
    assert all(np.isfinite(plain[key]) for key in ("loss", "dice_coef", "kaggle_dice"))
    assert (real_subset / "cache" / "64x96" / "index.json").is_file()  # the subset got its own cache

    out = tmp_path / "submission.csv"
    result = runner.invoke(main, ["predict", str(run_copy), "--images", str(real_subset / "test_images"), "--out", str(out),
                                  "--sample-submission", str(real_subset / "sample_submission.csv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [row[0] for row in rows] == [line.split(",")[0] for line in (real_subset / "sample_submission.csv").read_text().splitlines()[1:]]
    for label, encoded in rows:
        assert rle.decode(encoded, 350, 525, label).shape == (350, 525)
