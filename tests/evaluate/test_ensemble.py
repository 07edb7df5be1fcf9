"""Models with a presence head (a hand-built two-output Keras model), the presence cache, and
ensembles of runs (`harness postprocess|evaluate|predict RUN RUN...` and `--sweep ID --top K`) on
generated data with real tiny trainings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness import CLASSES
from harness import io
from harness.cli import main
from harness.data import rle
from harness.evaluate import ensemble, inference, postprocess, postprocess_file, predict
from harness.sweep.store import Store
from tests.conftest import CACHE_SIZE
from tests.evaluate.conftest import train_tiny


def _invoke(*args: object):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def _two_output_model(height: int = CACHE_SIZE[0], width: int = CACHE_SIZE[1], sigmoid: bool = False):
    """The presence-head contract: outputs "mask" (B, H, W, 4) and "presence" (B, 4), logits."""
    import keras

    inputs = keras.Input((height, width, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    mask = keras.layers.Conv2D(4, 1, name="mask", activation="sigmoid" if sigmoid else None)(features)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    presence = keras.layers.Dense(4, name="presence", activation="sigmoid" if sigmoid else None)(pooled)
    return keras.Model(inputs, [mask, presence])


def test_model_outputs_returns_mask_and_presence_logits_of_a_two_output_model():
    import keras

    keras.utils.set_random_seed(0)
    model = _two_output_model(8, 12)
    x = np.random.default_rng(0).standard_normal((2, 8, 12, 3)).astype(np.float32)
    mask_logits, presence_logits = inference.model_outputs(model, x)
    expected_mask, expected_presence = (np.asarray(value) for value in model(x, training=False))
    assert mask_logits.shape == (2, 8, 12, 4) and presence_logits.shape == (2, 4)
    np.testing.assert_allclose(mask_logits, expected_mask, rtol=1e-6)
    np.testing.assert_allclose(presence_logits, expected_presence, rtol=1e-6)
    assert (mask_logits < 0).any() and (mask_logits > 0).any()  # real logits, not probabilities

    # Outputs that end in a sigmoid (today's single-output models) come back as logits too.
    probability_model = _two_output_model(8, 12, sigmoid=True)
    probability_model.set_weights(model.get_weights())
    mask_again, presence_again = inference.model_outputs(probability_model, x)
    np.testing.assert_allclose(mask_again, mask_logits, atol=1e-4)
    np.testing.assert_allclose(presence_again, presence_logits, atol=1e-4)
    single = keras.Model(probability_model.input, probability_model.outputs[0])
    mask_only, none = inference.model_outputs(single, x)
    assert none is None
    np.testing.assert_allclose(mask_only, mask_logits, atol=1e-4)
    # Two outputs with other names break the contract: said so, naming them.
    renamed = keras.Model(model.input, {"masks": model.outputs[0], "classes": model.outputs[1]})
    with pytest.raises(Exception, match="'mask' and 'presence'"):
        inference.model_outputs(renamed, x)


def test_flip_tta_averages_presence_probabilities_too():
    import keras

    keras.utils.set_random_seed(1)
    model = _two_output_model(8, 12)
    images = np.random.default_rng(1).integers(0, 255, (3, 8, 12, 3), dtype=np.uint8)
    plain = inference.predict_maps(model, images, progress=False)
    hflip = inference.predict_maps(model, images[:, :, ::-1], progress=False)
    vflip = inference.predict_maps(model, images[:, ::-1], progress=False)
    tta = inference.predict_maps(model, images, tta="flips", progress=False)
    np.testing.assert_allclose(tta.presence, (plain.presence + hflip.presence + vflip.presence) / 3, atol=1e-6)
    np.testing.assert_allclose(tta.probabilities,
                               (plain.probabilities + hflip.probabilities[:, :, ::-1] + vflip.probabilities[:, ::-1]) / 3,
                               atol=1e-6)


@pytest.fixture(scope="session")
def second_run(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path, prepared_cache: Path) -> Path:
    """A second tiny run on the same split as `trained_run` (another model: 2 base filters). Read-only."""
    return train_tiny(tmp_path_factory, synth_dir, prepared_cache, "second", filters=2)


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint", "tb"))
    return target


@pytest.fixture
def presence_run(trained_run: Path, tmp_path: Path) -> Path:
    """The trained run's folder with best.keras replaced by a two-output (presence head) model."""
    import keras

    run_dir = _copy_run(trained_run, tmp_path / "single" / "presence")
    keras.utils.set_random_seed(2)
    _two_output_model().save(run_dir / "best.keras")
    return run_dir


@pytest.mark.slow
def test_presence_logits_are_cached_beside_the_validation_logits_and_searched(presence_run: Path, synth_dir: Path, tmp_path: Path):
    result = _invoke("postprocess", presence_run, "--keep-top")
    assert result.exit_code == 0, result.output
    document = json.loads((presence_run / "postprocess.json").read_text())
    assert document["presence_head"] is True
    assert set(document["presence"]["searched"]) == {"pixels", "classifier", "mean"}
    assert document["presence"]["keep_top"] is True
    cached = sorted(path.name.split("-")[1] for path in (presence_run / "cache").glob("val-*.npy"))
    assert cached == ["logits", "presence"]
    # The cache answers without the model, presence included.
    run = inference.load_run(presence_run)
    validation = inference.validation_split(run.config)

    def no_model():
        raise AssertionError("the model was loaded although the cache holds its predictions")

    maps = inference.validation_maps(presence_run, validation, model_loader=no_model)
    fresh = inference.predict_maps(inference.load_model(presence_run), validation.images, progress=False)
    np.testing.assert_allclose(maps.presence, fresh.presence, atol=1e-6)
    # The submission uses the presence head too: recompute one image's rows by hand.
    out = tmp_path / "submission.csv"
    result = _invoke("predict", presence_run, "--images", synth_dir / "test_images", "--out", out)
    assert result.exit_code == 0, result.output
    _check_submission_image(out, [inference.load_model(presence_run)], synth_dir / "test_images", document)


@pytest.mark.slow
def test_a_run_trained_with_the_presence_head_is_tuned_on_its_classifier_evaluated_and_predicted(
        trained_presence_run: Path, synth_dir: Path, tmp_path: Path):
    """The whole chain on a model the trainer built and trained with the head (not a hand-built one):
    postprocess gates on the head's probabilities, evaluate reuses the tuning, predict writes them."""
    run_dir = _copy_run(trained_presence_run, tmp_path / "single" / "head")
    result = _invoke("postprocess", run_dir, "--presence", "classifier", "--keep-top", "--folds", "2", "--repeats", "2")
    assert result.exit_code == 0, result.output
    document = json.loads((run_dir / "postprocess.json").read_text())
    assert document["presence_head"] is True and document["presence"]["source"] == "classifier"
    assert document["holdout"]["folds"] == 2 and len(document["holdout"]["per_fold"]) == 4  # 2 folds x 2 splits
    assert document["mean"]["dice_held_out"] == pytest.approx(np.mean(document["holdout"]["per_split"]), abs=1e-12)
    assert "the mean of 2 splits" in result.output
    # The gate's scores are the trained head's own probabilities on the validation images.
    run = inference.load_run(run_dir)
    validation = inference.validation_split(run.config)
    model = inference.load_model(run_dir)
    maps = inference.validation_maps(run_dir, validation, model_loader=lambda: None)  # from the cache
    fresh = inference.predict_maps(model, validation.images, progress=False)
    assert fresh.presence is not None and fresh.presence.shape == (len(validation.images), 4)
    np.testing.assert_allclose(maps.presence, fresh.presence, atol=1e-6)
    masks = postprocess.apply_postprocess(maps.probabilities, document, maps.presence)
    scores = postprocess.dice_by_class(masks, validation.masks)
    for channel, name in enumerate(CLASSES):
        entry = document["classes"][name]
        assert scores[channel] == pytest.approx(entry["dice_after"], abs=1e-9)  # what tuning reported is what applying gives
        assert entry["dice_after"] >= entry["dice_empty"] - 1e-12  # never below predicting nothing
    result = _invoke("evaluate", run_dir, "--augment", "none", "--overlays", "2")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["postprocess"]["presence"]["source"] == "classifier"
    assert evaluation["results"]["plain"]["kaggle_dice_post"] == pytest.approx(document["mean"]["dice_after"], abs=1e-6)
    out = tmp_path / "submission.csv"
    result = _invoke("predict", run_dir, "--images", synth_dir / "test_images", "--out", out)
    assert result.exit_code == 0, result.output
    _check_submission_image(out, [model], synth_dir / "test_images", document)


def _check_submission_image(out: Path, models: list, images_dir: Path, document: dict, tta: str = "none") -> None:
    """The CSV rows of one test image are the post-processed average of the models' maps, resized."""
    from harness.data import cache

    image = sorted(path.name for path in images_dir.iterdir())[1]
    batch = cache.load_image(images_dir / image, CACHE_SIZE)[None]
    maps = ensemble.average([inference.predict_maps(model, batch, tta=tta, progress=False) for model in models])
    expected = predict.resize_masks(postprocess.apply_postprocess(maps.probabilities, document, maps.presence)[0])
    rows = dict(line.split(",", 1) for line in out.read_text().splitlines()[1:])
    for channel, name in enumerate(CLASSES):
        np.testing.assert_array_equal(rle.decode(rows[f"{image}_{name}"], 350, 525, name), expected[..., channel])


@pytest.mark.slow
def test_an_ensemble_of_two_runs_tunes_on_averaged_maps_and_writes_one_submission(
    trained_run: Path, second_run: Path, synth_dir: Path, tmp_path: Path
):
    first = _copy_run(trained_run, tmp_path / "single" / "smoke")
    second = _copy_run(second_run, tmp_path / "single" / "second")
    folder = tmp_path / "ensemble"
    result = _invoke("postprocess", first, second, "--out-dir", folder, "--tta", "flips")
    assert result.exit_code == 0, result.output
    assert "members share the validation split" in result.output
    members = json.loads((folder / "ensemble.json").read_text())
    assert members["run_ids"] == ["smoke", "second"]
    document = json.loads((folder / "postprocess.json").read_text())
    assert document["tta"] == "flips" and len(document["members"]) == 2
    # Tuned on the mean of the members' own (cached) TTA maps.
    validation = inference.validation_split(inference.load_run(first).config)
    each = [inference.validation_maps(run_dir, validation, tta="flips", model_loader=lambda: None) for run_dir in (first, second)]
    assert not np.allclose(each[0].probabilities, each[1].probabilities, atol=1e-3)  # two different models
    averaged = (each[0].probabilities + each[1].probabilities) / 2
    for name, channel in zip(CLASSES, range(4)):
        raw = postprocess.dice_by_class((averaged > 0.5).astype(np.uint8), validation.masks)[channel]
        assert document["classes"][name]["dice_before"] == pytest.approx(raw, abs=1e-12)
        assert document["classes"][name]["dice_after"] >= document["classes"][name]["dice_empty"] - 1e-12
    assert (folder / "plots" / "postprocess_search.png").exists()

    # evaluate and predict take the ensemble's folder and reuse what postprocess tuned.
    result = _invoke("evaluate", folder, "--augment", "none", "--overlays", "2")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["members"] == members["members"] and evaluation["postprocess"]["source"] == "postprocess.json"
    assert evaluation["postprocess"]["tuning"]["mean"]["dice_held_out"] == document["mean"]["dice_held_out"]
    assert "held-out" in result.output
    out = tmp_path / "submission.csv"
    result = _invoke("predict", folder, "--images", synth_dir / "test_images", "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 model(s), tta flips" in result.output
    _check_submission_image(out, [inference.load_model(first), inference.load_model(second)], synth_dir / "test_images",
                            document, tta="flips")


@pytest.mark.slow
def test_sweep_top_k_picks_the_best_finished_runs_by_the_sweeps_metric(trained_run: Path, second_run: Path, tmp_path: Path):
    spec = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"filters": {"values": [4, 2, 3]}}}
    metric = {4: 0.30, 2: 0.50, 3: 0.10}  # best: filters 2, then 4; the third is never picked
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(spec, name="ensemble-test")
        while (run := store.claim_run(sweep_id, agent="test", host="here")) is not None:
            store.record_history(run.id, [{"epoch": 1, "val_dice_coef": metric[run.config["filters"]]}])
            store.finish_run(run.id, "finished", {"epochs_completed": 1})
            source = second_run if run.config["filters"] == 2 else trained_run
            _copy_run(source, tmp_path / sweep_id / run.id)
        ranked = sorted(store.runs(sweep_id), key=lambda run: -metric[run.config["filters"]])
    result = _invoke("postprocess", "--sweep", sweep_id, "--top", "2", "--root", tmp_path, "--folds", "0", "--repeats", "2")
    assert result.exit_code == 2 and "--repeats needs a held-out estimate" in result.output
    result = _invoke("postprocess", "--sweep", sweep_id, "--top", "2", "--root", tmp_path, "--folds", "0")
    assert result.exit_code == 0, result.output
    folder = tmp_path / sweep_id / "ensemble-top2"
    members = json.loads((folder / "ensemble.json").read_text())
    assert [Path(path).name for path in members["members"]] == [ranked[0].id, ranked[1].id]
    assert members["sweep_id"] == sweep_id
    assert json.loads((folder / "postprocess.json").read_text())["mean"]["dice_held_out"] is None  # --folds 0


@pytest.mark.slow
def test_rank_by_held_out_tunes_the_untuned_runs_and_ranks_by_their_own_post_processed_score(
        trained_run: Path, second_run: Path, tmp_path: Path):
    """On real data the sweep's raw metric ranks runs unlike their post-processed scores (docs/evaluation.md):
    --rank-by held-out picks by each run's own held-out estimate, tuning the runs without one first."""
    spec = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"filters": {"values": [4, 2, 3]}}}
    metric = {4: 0.30, 2: 0.50, 3: 0.10}
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(spec, name="rank-test")
        while (run := store.claim_run(sweep_id, agent="test", host="here")) is not None:
            store.record_history(run.id, [{"epoch": 1, "val_dice_coef": metric[run.config["filters"]]}])
            store.finish_run(run.id, "finished", {"epochs_completed": 1})
            _copy_run(second_run if run.config["filters"] == 2 else trained_run, tmp_path / sweep_id / run.id)
        by_filters = {run.config["filters"]: run.id for run in store.runs(sweep_id)}
    # The sweep's worst run by its metric was tuned already and has the best held-out score of all.
    worst = tmp_path / sweep_id / by_filters[3]
    io.atomic_write_json(worst / "postprocess.json", {"mean": {"dice_held_out": 0.999}, "classes": {}})
    # evaluate and predict only read scores: two runs without one are an error naming them.
    result = _invoke("evaluate", "--sweep", sweep_id, "--top", "2", "--root", tmp_path, "--rank-by", "held-out")
    assert result.exit_code == 2, result.output
    assert "2 run(s) have no held-out score yet" in result.output and by_filters[4] in result.output
    result = _invoke("postprocess", "--sweep", sweep_id, "--top", "2", "--root", tmp_path, "--rank-by", "held-out",
                     "--out-dir", tmp_path / "ranked")
    assert result.exit_code == 0, result.output
    tuned = {filters: postprocess_file.held_out_score(tmp_path / sweep_id / run_id) for filters, run_id in by_filters.items()}
    assert tuned[3] == 0.999 and all(0.0 <= tuned[filters] <= 1.0 for filters in (2, 4))  # both tuned by the command
    second_best = max((2, 4), key=lambda filters: (tuned[filters], metric[filters]))  # a tie keeps the metric order
    members = json.loads((tmp_path / "ranked" / "ensemble.json").read_text())
    assert [Path(path).name for path in members["members"]] == [by_filters[3], by_filters[second_best]]
    assert "ranked by held-out: " + by_filters[3] + " 0.9990" in result.output


@pytest.mark.slow
def test_members_that_do_not_share_the_split_stop_with_exit_2(trained_run: Path, tmp_path: Path):
    first = _copy_run(trained_run, tmp_path / "single" / "a")
    other = _copy_run(trained_run, tmp_path / "single" / "b")
    saved = io.read_json(other / "config.json")
    io.atomic_write_json(other / "config.json", {**saved, "val_fraction": 0.5})
    for command in ("postprocess", "evaluate"):
        result = _invoke(command, first, other, "--out-dir", tmp_path / "ensemble")
        assert result.exit_code == 2, result.output
        assert "do not share the validation split: val_fraction" in result.output and str(other) in result.output
    result = _invoke("predict", first, other, "--out-dir", tmp_path / "ensemble", "--images", tmp_path)
    assert result.exit_code == 2 and "val_fraction" in result.output
    assert not (tmp_path / "ensemble" / "ensemble.json").exists()
    result = _invoke("postprocess", first, other)
    assert result.exit_code == 2 and "--out-dir" in result.output
    result = _invoke("postprocess", first, "--sweep", "local-x")
    assert result.exit_code == 2 and "not both" in result.output
