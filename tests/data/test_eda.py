"""`harness eda`: statistics match the labels; plots are written as PNG."""

from __future__ import annotations

import json

import numpy as np

from harness import CLASSES
from harness.data import eda, labels


def test_run_eda_counts_and_plots(synth_dir, tmp_path):
    out = tmp_path / "eda"
    summary = eda.run_eda(synth_dir, out)
    table = labels.read_train_csv(synth_dir / "train.csv")
    assert summary["images"] == 24 and summary["image_sizes"] == ["96x144"]
    assert summary["class_counts"] == {name: int(table.presence[:, i].sum()) for i, name in enumerate(CLASSES)}
    assert sum(summary["masks_per_image"].values()) == 24
    matrix = np.array(summary["cooccurrence"]["counts"])
    np.testing.assert_array_equal(np.diag(matrix), table.presence.sum(axis=0))
    np.testing.assert_array_equal(matrix, matrix.T)
    # Areas are listed in image order: the first Fish value is the first image with Fish.
    first_fish = int(np.flatnonzero(table.presence[:, 0])[0])
    fish_area = table.masks(first_fish, 96, 144)[..., 0].mean()
    assert summary["mask_area_fraction"]["Fish"]["values"][0] == round(float(fish_area), 5)
    for name in eda.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "eda.json").read_text())["images"] == 24
    text = eda.format_summary(summary)
    assert "Fish" in text and "co-occurrence" in text
