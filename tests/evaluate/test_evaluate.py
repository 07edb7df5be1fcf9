"""`harness postprocess`, `harness evaluate` and `harness compare` on a smoke-trained run (real model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness import CLASSES
from harness import io
from harness.cli import main
from harness.evaluate import ensemble, evaluate, inference

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _invoke(*args: str):
    result = CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)
    return result


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


@pytest.mark.slow
def test_postprocess_command_tunes_writes_json_and_prints_the_table(tuned_run: tuple[Path, str]):
    run_dir, output = tuned_run
    document = json.loads((run_dir / "postprocess.json").read_text())
    for name in CLASSES:
        entry = document["classes"][name]
        # The grid holds threshold 0.5 without a size filter (= "before"), so tuning never loses.
        assert entry["dice_after"] >= entry["dice_before"] - 1e-12
        assert entry["threshold"] in document["search"]["thresholds"]
        assert entry["min_size"] in document["search"]["min_sizes"]
        row = next(line for line in output.splitlines() if line.startswith(name))
        assert f"{entry['dice_before']:.4f}" in row and f"{entry['dice_after']:.4f}" in row
    assert "mean" in output
    assert document["validation_images"] == len(inference.validation_split(inference.load_run(run_dir).config).names)
    assert _is_png(run_dir / "plots" / "postprocess_search.png")


@pytest.mark.slow
def test_postprocess_reuses_cached_predictions_until_the_model_changes(tuned_copy: Path):
    cached = list((tuned_copy / "cache").glob("val-logits-*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).dtype == np.float16
    stamp = cached[0].stat().st_mtime_ns
    again = _invoke("postprocess", tuned_copy, "--trials", "5", "--seed", "1")
    assert again.exit_code == 0, again.output
    assert cached[0].stat().st_mtime_ns == stamp and "predicting" not in again.output
    tuned = json.loads((tuned_copy / "postprocess.json").read_text())
    assert tuned["search"]["method"] == "random" and len(tuned["search"]["thresholds"]) <= 5
    # A newer model invalidates the cache: predicted again, the old file removed.
    model_time = (tuned_copy / "best.keras").stat().st_mtime_ns + 10**9
    os.utime(tuned_copy / "best.keras", ns=(model_time, model_time))
    assert _invoke("postprocess", tuned_copy, "--mask-rule").exit_code == 0
    assert [path.name for path in (tuned_copy / "cache").glob("*.npy")] == [f"val-logits-{model_time}-{tuned['validation_images']}-none.npy"]
    assert "p_min" in json.loads((tuned_copy / "postprocess.json").read_text())["classes"]["Fish"]


@pytest.mark.slow
def test_evaluate_command_scores_plots_and_matches_the_training_metrics(tuned_copy: Path):
    run_copy = tuned_copy
    result = _invoke("evaluate", run_copy, "--tta", "flips", "--augment", "default", "--overlays", "3")
    assert result.exit_code == 0, result.output
    document = json.loads((run_copy / "evaluation.json").read_text())
    assert set(document["results"]) == {"plain", "augmented", "tta"}
    assert document["postprocess"]["source"] == "postprocess.json"
    plain = document["results"]["plain"]
    # The same numbers as the training run's validation of its best epoch (same split, model, metric).
    summary = io.read_json(run_copy / "summary.json")
    best_row = next(row for row in io.read_jsonl(run_copy / "metrics.jsonl") if row["epoch"] == summary["best"]["epoch"])
    assert plain["kaggle_dice"] == pytest.approx(best_row["val_kaggle_dice"], abs=2e-3)
    assert plain["loss"] == pytest.approx(best_row["val_loss"], rel=2e-3)
    assert plain["dice_coef"] == pytest.approx(best_row["val_dice_coef"], rel=2e-3)
    # Post-processed with the tuned parameters = the tuned score.
    tuned = json.loads((run_copy / "postprocess.json").read_text())
    assert plain["kaggle_dice_post"] == pytest.approx(tuned["mean"]["dice_after"], abs=1e-9)
    for name in CLASSES:
        assert name in result.output
        assert plain["per_class"][name]["dice_post"] == pytest.approx(tuned["classes"][name]["dice_after"], abs=1e-9)
    for key in ("learning_curves", "overlays", "class_table", "class_dice"):
        assert _is_png(run_copy / document["plots"][key]), key
    assert document["wandb"] is False  # WANDB_MODE=disabled in tests


@pytest.mark.slow
def test_flip_tta_averages_the_flipped_predictions(trained_run: Path):
    model = inference.load_model(trained_run)
    validation = inference.validation_split(inference.load_run(trained_run).config, limit=2)
    images = np.asarray(validation.images)
    plain = inference.predict_maps(model, images, progress=False).probabilities
    hflip = inference.predict_maps(model, images[:, :, ::-1], progress=False).probabilities[:, :, ::-1]
    vflip = inference.predict_maps(model, images[:, ::-1], progress=False).probabilities[:, ::-1]
    tta = inference.predict_maps(model, images, tta="flips", progress=False).probabilities
    np.testing.assert_allclose(tta, (plain + hflip + vflip) / 3.0, atol=1e-5)
    assert not np.allclose(tta, plain, atol=1e-4)  # the flips do change the answer


@pytest.mark.slow
def test_untuned_run_uses_the_threshold_and_logs_to_an_offline_wandb_run(run_copy: Path, monkeypatch, capsys):
    """W&B offline is real here (no server is needed); the run folder looks like one trained with W&B."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    (run_copy / "wandb" / f"offline-run-20260101_000000-{run_copy.name}").mkdir(parents=True)
    document = evaluate.evaluate_target(ensemble.resolve([run_copy]), augment="none", overlays=2, progress=False)
    assert "warning" in capsys.readouterr().err  # no postprocess.json
    assert document["postprocess"]["source"] == "default"
    plain = document["results"]["plain"]
    assert plain["kaggle_dice_post"] == pytest.approx(plain["kaggle_dice"], abs=1e-12)
    # With augment none, the "augmented" setting is the plain one.
    assert document["results"]["augmented"]["kaggle_dice"] == pytest.approx(plain["kaggle_dice"], abs=1e-3)

    assert document["wandb"] is True
    folders = [path for path in (run_copy / "wandb").glob(f"offline-run-*-{run_copy.name}") if any(path.iterdir())]
    assert folders, list((run_copy / "wandb").iterdir())
    media = [path.name for path in folders[0].rglob("*.png")]
    assert any("overlays" in name for name in media) and any("class_table" in name for name in media)
    assert list(folders[0].rglob("*.table.json"))


@pytest.mark.slow
def test_compare_prints_both_runs_side_by_side_and_saves_a_chart(tuned_copy: Path, tmp_path: Path):
    run_copy = tuned_copy
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"run_id": "other", "model": "sm_unet_resnet34"}))
    scores = {name: {"threshold": 0.5, "min_size": 0, "p_min": 0.0, "area_min": 0, "dice_before": 0.1 * (index + 1),
                     "dice_after": 0.2 * (index + 1), "dice_held_out": 0.15 * (index + 1)} for index, name in enumerate(CLASSES)}
    io.atomic_write_json(other / "postprocess.json", {"classes": scores, "mean": {"dice_before": 0.25, "dice_after": 0.5,
                                                                                   "dice_held_out": 0.375},
                                                     "image_size": "64x96", "validation_images": 6})
    chart = tmp_path / "chart.png"
    result = _invoke("compare", run_copy, other, "--out", chart)
    assert result.exit_code == 0, result.output
    assert _is_png(chart)
    tuned = json.loads((run_copy / "postprocess.json").read_text())
    sugar = next(line for line in result.output.splitlines() if line.startswith("Sugar"))
    assert sugar.split()[1:5] == [f"{tuned['classes']['Sugar']['dice_before']:.4f}", f"{tuned['classes']['Sugar']['dice_after']:.4f}",
                                  "0.4000", "0.8000"]
    # Both tuned with folds: the held-out estimates side by side too.
    held_out = tuned["classes"]["Sugar"]["dice_held_out"]
    assert sugar.split()[6:9] == [f"{held_out:.4f}", "0.6000", f"{0.6 - held_out:+.4f}"]
    assert "B-A held-out" in result.output
    assert "sm_unet_resnet34" in result.output and "from postprocess.json" in result.output


def test_commands_report_bad_run_folders_with_exit_code_2(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["postprocess", empty], ["evaluate", empty], ["predict", empty, "--images", tmp_path]):
        result = _invoke(*command)
        assert result.exit_code == 2, result.output
        assert "config.json" in result.output
    result = _invoke("compare", empty, empty)
    assert result.exit_code == 2 and "evaluation.json" in result.output
    result = _invoke("postprocess", empty, "--grid")  # the grid is the default: no flag that does nothing
    assert result.exit_code == 2 and "No such option '--grid'" in result.output


def test_cached_logits_keep_threshold_half_exact():
    """float16 probabilities would round 0.5 + 1e-4 down to 0.5; float16 logits keep every side of 0.5."""
    rng = np.random.default_rng(0)
    edge = np.nextafter(np.float32(0.5), np.float32(1.0))
    values = np.concatenate([
        rng.random(4000).astype(np.float32),
        np.float32(0.5) + rng.uniform(-3e-4, 3e-4, 4000).astype(np.float32),
        np.array([0.0, 1.0, 0.5, edge, np.nextafter(np.float32(0.5), np.float32(0.0))], dtype=np.float32),
    ])
    probabilities = values.reshape(1, -1, 1, 1)
    logits = inference.encode_logits(probabilities)
    assert logits.dtype == np.float16
    back = inference.decode_logits(logits)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back > np.float32(0.5), probabilities > np.float32(0.5))
    assert ((probabilities.astype(np.float16) > 0.5) != (probabilities > 0.5)).sum() > 100  # what it avoids
    assert back.ravel()[4000 * 2] == 0.0 and back.ravel()[4000 * 2 + 1] == 1.0
    np.testing.assert_allclose(back, probabilities, atol=2.5e-4)
