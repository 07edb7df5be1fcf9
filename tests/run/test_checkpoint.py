"""Checkpoints: a round trip keeps weights and optimizer state; a kill at any point leaves a usable one."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from harness import io
from harness.errors import HarnessError
from harness.model.unet import build_unet
from harness.run import checkpoint, losses


@pytest.fixture(scope="module")
def trained() -> keras.Model:
    """A tiny UNet after three Adam steps (applied directly: tracing a train step would take seconds)."""
    model = build_unet((16, 16, 3), filters=2, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_loss("bce_dice"))
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for _ in range(3):
        gradients = [rng.normal(size=variable.shape).astype("float32") for variable in model.trainable_variables]
        model.optimizer.apply(gradients, model.trainable_variables)
    assert int(model.optimizer.iterations.numpy()) == 3
    return model


def _fresh_model() -> keras.Model:
    model = build_unet((16, 16, 3), filters=2, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_loss("bce_dice"))
    return model


def test_round_trip_restores_weights_optimizer_and_state(tmp_path, trained):
    model = trained
    model.optimizer.learning_rate = 2.5e-4  # as LR-on-plateau would have cut it
    state = checkpoint.TrainState(epoch=2, batch=0, iterations=3, best_value=0.4, best_epoch=2, learning_rate=2.5e-4,
                                  callbacks={"reduce_lr": {"wait": 1, "best": 0.4, "cooldown_counter": 0}})
    checkpoint.save_checkpoint(tmp_path, model, state)

    restored_model = _fresh_model()
    restored = checkpoint.restore_weights(tmp_path, restored_model)
    assert restored is not None
    assert (restored.epoch, restored.best_value, restored.best_epoch, restored.callbacks) == (2, 0.4, 2, state.callbacks)
    assert int(restored_model.optimizer.iterations.numpy()) == 3
    assert float(restored_model.optimizer.learning_rate.numpy()) == pytest.approx(2.5e-4)
    for saved, loaded in zip(model.weights, restored_model.weights):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))
    # Adam's moments came back too: the next step is the same step.
    for saved, loaded in zip(model.optimizer.variables, restored_model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))


def test_a_run_without_checkpoint_has_no_state(tmp_path):
    assert checkpoint.load_state(tmp_path) is None
    assert checkpoint.restore_weights(tmp_path, _fresh_model()) is None


def test_leftovers_of_a_killed_save_are_ignored_and_cleaned(tmp_path, trained):
    model = trained
    checkpoint.save_checkpoint(tmp_path, model, checkpoint.TrainState(epoch=1, iterations=2))
    root = checkpoint.checkpoint_root(tmp_path)
    # A save killed before its commit: a half-written staging folder and a renamed folder LATEST does not name.
    (root / ".tmp-ckpt-000002-999").mkdir()
    (root / ".tmp-ckpt-000002-999" / "model.weights.h5").write_bytes(b"torn")
    (root / "ckpt-000003").mkdir()
    (root / "ckpt-000003" / "state.json").write_text(json.dumps({"epoch": 9}))
    assert checkpoint.load_state(tmp_path).epoch == 1

    checkpoint.save_checkpoint(tmp_path, model, checkpoint.TrainState(epoch=2, iterations=4))
    assert checkpoint.load_state(tmp_path).epoch == 2
    # The new checkpoint and the one in force before it (to fall back to); the leftovers are gone.
    assert sorted(path.name for path in root.iterdir()) == ["LATEST", "ckpt-000001", "ckpt-000004"]
    checkpoint.save_checkpoint(tmp_path, model, checkpoint.TrainState(epoch=3, iterations=6))
    assert sorted(path.name for path in root.iterdir()) == ["LATEST", "ckpt-000004", "ckpt-000005"]


@pytest.mark.parametrize("damage", ["missing folder", "no weights", "torn state", "bad weights"])
def test_damaged_checkpoint_stops_the_run_naming_the_file_and_the_way_out(tmp_path, trained, damage):
    checkpoint.save_checkpoint(tmp_path, trained, checkpoint.TrainState(epoch=1, iterations=2))
    checkpoint.save_checkpoint(tmp_path, trained, checkpoint.TrainState(epoch=2, iterations=4))
    root = checkpoint.checkpoint_root(tmp_path)
    current = root / "ckpt-000002"
    if damage == "missing folder":
        (root / "LATEST").write_text("ckpt-000007\n")
        expected = "LATEST names ckpt-000007, which is missing"
    elif damage == "no weights":
        (current / checkpoint.WEIGHTS_FILE).unlink()
        expected = "lacks model.weights.h5"
    elif damage == "torn state":
        (current / checkpoint.STATE_FILE).write_text('{"epoch": 2, "bat')
        expected = "state.json does not parse"
    else:
        (current / checkpoint.WEIGHTS_FILE).write_bytes(b"not hdf5")
        expected = "model.weights.h5 does not load"
    with pytest.raises(checkpoint.CheckpointError, match=expected) as raised:
        checkpoint.load_state(tmp_path) if damage != "bad weights" else checkpoint.restore_weights(tmp_path, _fresh_model())
    # Never "no checkpoint" (which would restart the run from epoch 0): the way out is named, with
    # the newest complete checkpoint other than the broken one.
    fallback = "'ckpt-000002'" if damage == "missing folder" else "'ckpt-000001'"
    assert fallback in str(raised.value) and "--restart" in str(raised.value)
    assert raised.value.exit_code == 1


def test_staged_best_model_is_promoted_only_when_the_checkpoint_vouches_for_it(tmp_path, trained):
    model = trained
    (tmp_path / "best.keras").write_bytes(b"model of epoch 2")
    checkpoint.stage_best(tmp_path, model, epoch=3)  # killed before the epoch-3 checkpoint was committed
    checkpoint.recover_best(tmp_path, checkpoint.TrainState(epoch=2, best_epoch=2))
    assert (tmp_path / "best.keras").read_bytes() == b"model of epoch 2"
    assert not list(tmp_path.glob(".best-*"))

    checkpoint.stage_best(tmp_path, model, epoch=3)  # killed after the commit, before the rename
    checkpoint.recover_best(tmp_path, checkpoint.TrainState(epoch=3, best_epoch=3))
    loaded = checkpoint.load_best(tmp_path)
    images = np.random.default_rng(1).normal(size=(1, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(model(images)), rtol=1e-5)


def test_load_best_names_the_missing_file(tmp_path):
    with pytest.raises(HarnessError, match="best.keras"):
        checkpoint.load_best(tmp_path)


def test_a_torn_line_hides_no_later_epoch_and_truncation_rewrites_exactly(tmp_path, capsys):
    """The issue's reproduction: a torn epoch-3 row, truncate to 2, append epochs 3 and 4."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 0.9}\n{"epoch": 2, "loss": 0.8}\n{"epoch": 3, "lo')
    assert checkpoint.truncate_metrics(tmp_path, epochs_completed=2) == [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.8}]
    assert path.read_text() == '{"epoch": 1, "loss": 0.9}\n{"epoch": 2, "loss": 0.8}\n'  # exactly the rows in force
    checkpoint.append_metrics(tmp_path, {"epoch": 3, "loss": 0.7})
    checkpoint.append_metrics(tmp_path, {"epoch": 4, "loss": 0.6})
    assert [row["epoch"] for row in io.read_jsonl(path)] == [1, 2, 3, 4]

    # A torn or foreign line in the middle (not only the last): skipped and reported, later rows kept.
    path.write_text('{"epoch": 1}\n{"epoch": 2, "lo\n[1, 2]\n{"epoch": 3}\n')
    skipped: list[str] = []
    assert io.read_jsonl(path, skipped) == [{"epoch": 1}, {"epoch": 3}]
    assert len(skipped) == 2 and "line 2" in skipped[0] and "line 3" in skipped[1] and str(path) in skipped[0]
    assert io.read_jsonl(path) == [{"epoch": 1}, {"epoch": 3}]
    assert "line 2 skipped" in capsys.readouterr().err  # without a list, reported on stderr

    from harness import runfolder

    assert [row["epoch"] for row in runfolder.read_history(tmp_path, [])] == [1, 3]


def test_metrics_are_cut_back_to_the_checkpoint_with_each_epoch_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.8}, {"epoch": 3, "loss": 0.7}, {"epoch": 2, "loss": 0.75}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"epoch": 4, "lo')  # torn last line
    kept = checkpoint.truncate_metrics(tmp_path, epochs_completed=2)
    assert kept == [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.75}]
    assert io.read_jsonl(path) == kept
    checkpoint.append_metrics(tmp_path, {"epoch": 3, "loss": 0.6})
    assert [row["epoch"] for row in io.read_jsonl(path)] == [1, 2, 3]


def test_restart_moves_the_training_state_aside_and_keeps_it(tmp_path, trained):
    checkpoint.save_checkpoint(tmp_path, trained, checkpoint.TrainState(epoch=1, iterations=2))
    checkpoint.append_metrics(tmp_path, {"epoch": 1, "loss": 0.9})
    (tmp_path / "best.keras").write_bytes(b"best")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint" / "LATEST").write_text("ckpt-000099\n")  # damaged: the reason to restart
    moved = checkpoint.discard(tmp_path)
    assert moved is not None and moved.parent == tmp_path and moved.name.startswith("discarded-")
    assert sorted(path.name for path in moved.iterdir()) == ["best.keras", "checkpoint", "metrics.jsonl"]
    assert checkpoint.load_state(tmp_path) is None  # a fresh start at epoch 0
    assert (tmp_path / "config.json").exists()  # the run keeps its config (and id)
    assert checkpoint.discard(tmp_path) is None  # nothing left to move
