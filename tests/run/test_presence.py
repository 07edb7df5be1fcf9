"""The presence head's losses and metrics: golden values on tiny hand-made arrays, Keras = NumPy, save/load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from harness import config as config_module
from harness.errors import ConfigError
from harness.run import checkpoint, losses, metrics
from tests.run.test_losses import PROBABILITIES, TRUTH

REPO = Path(__file__).resolve().parents[2]
LN3 = math.log(3.0)

# Two 2x2 images, four classes: image 0 has classes 0 and 1, image 1 has class 3 (one pixel, 0.6 > 0.5).
MASKS = np.zeros((2, 2, 2, 4), dtype="float32")
MASKS[0, 0, 0, 0] = 1.0
MASKS[0, :, :, 1] = 1.0
MASKS[1, 1, 1, 3] = 0.6
MASKS[1, 0, 0, 2] = 0.4  # below 0.5: not present
# sigmoid(ln 3) = 3/4, sigmoid(0) = 1/2, sigmoid(-ln 3) = 1/4
LOGITS = np.array([[0.0, LN3, LN3, -LN3], [-LN3, 0.0, -LN3, LN3]], dtype="float32")
# BCE per pair: target 1 at 1/2: ln 2; target 1 at 3/4: ln 4/3; target 0 at 3/4: ln 4; target 0 at 1/4: ln 4/3
GOLDEN_BCE = np.mean([math.log(2), math.log(4 / 3), math.log(4), math.log(4 / 3),
                      math.log(4 / 3), math.log(2), math.log(4 / 3), math.log(4 / 3)])


def test_presence_targets_are_any_pixel_above_one_half():
    np.testing.assert_array_equal(metrics.presence_targets(MASKS), [[1, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(losses.presence_targets(MASKS)), [[1, 1, 0, 0], [0, 0, 0, 1]])


def test_presence_bce_golden_value_in_numpy_and_keras():
    assert metrics.presence_bce(MASKS, LOGITS) == pytest.approx(GOLDEN_BCE, rel=1e-7)  # ln 3 in float32
    assert float(losses.presence_loss(MASKS, LOGITS)) == pytest.approx(GOLDEN_BCE, rel=1e-6)
    # Large logits stay finite (the stable form), and a confident right answer costs about nothing.
    confident = np.where(metrics.presence_targets(MASKS) > 0, 80.0, -80.0)
    assert metrics.presence_bce(MASKS, confident) == pytest.approx(0.0, abs=1e-30)
    assert float(losses.presence_loss(MASKS, confident)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="presence logits shape"):
        metrics.presence_bce(MASKS, LOGITS[:, :3])


def test_presence_accuracy_and_auc_golden_values():
    # predicted (logit > 0): [0 1 1 0] vs [1 1 0 0]; [0 0 0 1] vs [0 0 0 1]
    np.testing.assert_allclose(np.asarray(losses.presence_accuracy(MASKS, LOGITS)), [0.5, 1.0])
    auc = losses.PresenceAUC()
    # Positives score 2 and -1, negatives 0 and -2: 3 of the 4 (positive, negative) pairs are in order.
    truth = np.zeros((1, 1, 1, 4), "float32")
    truth[0, 0, 0, :2] = 1.0
    auc.update_state(truth, np.array([[2.0, -1.0, 0.0, -2.0]], "float32"))
    assert float(auc.result()) == pytest.approx(0.75, abs=0.01)


def test_present_pairs_overlap_loss_golden_values():
    # (rel 1e-7: the fixtures are float32.) Present pairs of TRUTH: classes 0 and 3. Class 0: intersection 1.1, sums 2 and 1.3; class 3: 3.0, 4 and 3.0.
    dice = 1 - (3.2 / 4.3 + 7 / 8) / 2
    jaccard = 1 - (2.1 / 3.2 + 4 / 5) / 2
    assert metrics.present_pairs_overlap_loss(PROBABILITIES, TRUTH, "dice") == pytest.approx(dice, rel=1e-7)
    assert metrics.present_pairs_overlap_loss(PROBABILITIES, TRUTH, "jaccard") == pytest.approx(jaccard, rel=1e-7)
    assert float(losses.present_pairs_overlap_loss(TRUTH, PROBABILITIES, "dice")) == pytest.approx(dice, rel=1e-6)
    assert float(losses.present_pairs_overlap_loss(TRUTH, PROBABILITIES, "jaccard")) == pytest.approx(jaccard, rel=1e-6)
    empty = np.zeros_like(TRUTH)
    assert metrics.present_pairs_overlap_loss(PROBABILITIES, empty) == 0.0
    assert float(losses.present_pairs_overlap_loss(empty, PROBABILITIES)) == 0.0


def test_mask_loss_weightings_and_logits():
    bce = metrics.binary_cross_entropy(PROBABILITIES, TRUTH)
    present = losses.MaskLoss("bce_dice", "present")
    expected = bce + metrics.present_pairs_overlap_loss(PROBABILITIES, TRUTH, "dice")
    assert float(present(TRUTH, PROBABILITIES)) == pytest.approx(expected, rel=1e-5)
    # weighting none is the config's loss function itself; from_logits applies the sigmoid first.
    plain = losses.MaskLoss("bce_jaccard")
    assert float(plain(TRUTH, PROBABILITIES)) == pytest.approx(float(losses.bce_jaccard_loss(TRUTH, PROBABILITIES)), rel=1e-6)
    logits = np.log(PROBABILITIES.clip(1e-4, 1 - 1e-4)) - np.log1p(-PROBABILITIES.clip(1e-4, 1 - 1e-4))
    on_logits = losses.MaskLoss("bce_jaccard", from_logits=True)
    assert float(on_logits(TRUTH, logits)) == pytest.approx(
        float(losses.bce_jaccard_loss(TRUTH, PROBABILITIES.clip(1e-4, 1 - 1e-4))), rel=1e-5)
    assert float(losses.kaggle_dice_on_logits(TRUTH, logits)[0]) == pytest.approx((2 / 3 + 1 + 0 + 1) / 4, rel=1e-6)
    with pytest.raises(ConfigError, match="loss_weighting"):
        losses.MaskLoss("dice", "present")


def test_config_keys_of_the_head_and_the_loss_weighting():
    config = config_module.build_config(overrides={"presence_head": "true", "monitor": "val_presence_auc"})
    assert config.presence_head and config.presence_loss_weight == 0.5
    with pytest.raises(ConfigError, match="monitor.*presence_head"):
        config_module.build_config(overrides={"monitor": "val_presence_auc"})
    with pytest.raises(ConfigError, match="loss_weighting.*bce_dice or bce_jaccard"):
        config_module.build_config(overrides={"loss_weighting": "present", "loss": "dice"})
    with pytest.raises(ConfigError, match="presence_loss_weight"):
        config_module.build_config(overrides={"presence_loss_weight": -1})


def _headed_model(config: config_module.Config):
    from harness.model import build_model
    from harness.run import optim

    model = build_model(config)
    model.compile(optimizer=optim.make_optimizer(config, steps_per_epoch=3), **losses.compile_arguments(config))
    return model


@pytest.mark.slow
def test_a_headed_model_trains_keeps_the_metric_names_and_survives_save_and_load(tmp_path: Path):
    config = config_module.build_config(overrides={
        "image_size": "32x48", "filters": 2, "depth": 3, "presence_head": True, "presence_loss_weight": 0.25,
        "optimizer": "adamw", "lr_schedule": "cosine", "epochs": 2, "loss_weighting": "present",
    })
    keras.utils.set_random_seed(0)
    model = _headed_model(config)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 32, 48, 3)).astype("float32")
    masks = (rng.random((6, 32, 48, 4)) > 0.7).astype("float32")
    masks[:, :, :, 2] = 0.0  # one class absent everywhere
    aliases = losses.metric_aliases(config)
    history = model.fit(images, {"mask": masks, "presence": masks}, validation_data=(images, {"mask": masks, "presence": masks}),
                        batch_size=2, epochs=1, verbose=0, callbacks=[aliases])
    logs = {key: values[-1] for key, values in history.history.items()}
    for name in ("dice_coef", "kaggle_dice", "val_dice_coef", "val_kaggle_dice", "loss", *config_module.PRESENCE_METRICS):
        assert name in logs, name
    assert not any(key.startswith(("mask_dice", "mask_kaggle", "val_mask_dice", "val_mask_kaggle")) for key in logs)
    # loss = mask loss + presence_loss_weight * presence loss (evaluated once, so the means are exact)
    evaluated = model.evaluate(images, {"mask": masks, "presence": masks}, batch_size=6, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(evaluated["mask_loss"] + 0.25 * evaluated["presence_loss"], rel=1e-5)
    out = model.predict(images, verbose=0)
    assert float(evaluated["presence_loss"]) == pytest.approx(metrics.presence_bce(masks, out["presence"]), rel=1e-4)

    checkpoint.stage_best(tmp_path, model, 1)
    checkpoint.commit_best(tmp_path, 1)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "mask.npy", out["mask"])
    np.save(tmp_path / "presence.npy", out["presence"])
    # A fresh process: the custom objects must be found by registration alone, uncompiled (load_best) and compiled.
    script = f"""
import json, keras, numpy as np
from harness.run import checkpoint
folder = {str(tmp_path)!r}
images = np.load(folder + '/images.npy')
model = checkpoint.load_best(folder)
out = model.predict(images, verbose=0)
compiled = keras.models.load_model(folder + '/best.keras')
print(json.dumps({{'names': sorted(model.output_names),
    'mask': float(np.abs(out['mask'] - np.load(folder + '/mask.npy')).max()),
    'presence': float(np.abs(out['presence'] - np.load(folder + '/presence.npy')).max()),
    'schedule': type(compiled.optimizer._learning_rate).__name__, 'optimizer': type(compiled.optimizer).__name__,
    'loss': type(compiled.loss['mask']).__name__ if isinstance(compiled.loss, dict) else str(compiled.loss)}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["names"] == ["mask", "presence"]
    assert loaded["mask"] == 0.0 and loaded["presence"] == 0.0
    assert loaded["loss"] == "MaskLoss"
    assert loaded["optimizer"] == "AdamW" and loaded["schedule"] == "WarmupCosine"


def test_compile_arguments_without_the_head_are_the_loss_as_before_unless_weighted():
    plain = losses.compile_arguments(config_module.build_config(overrides={"loss": "bce_jaccard"}))
    assert plain["loss"] is losses.bce_jaccard_loss and "loss_weights" not in plain
    assert [metric.name for metric in plain["metrics"]] == ["dice_coef", "kaggle_dice"]
    weighted = losses.compile_arguments(config_module.build_config(overrides={"loss_weighting": "present"}))
    assert isinstance(weighted["loss"], losses.MaskLoss) and not weighted["loss"].from_logits
    headed = losses.compile_arguments(config_module.build_config(overrides={"presence_head": True, "presence_loss_weight": 2}))
    assert set(headed["loss"]) == {"mask", "presence"} and headed["loss_weights"] == {"mask": 1.0, "presence": 2.0}
    assert headed["loss"]["mask"].from_logits
