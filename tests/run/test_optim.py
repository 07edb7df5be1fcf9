"""Optimizers and LR schedules: golden schedule values, Keras = NumPy, AdamW's decay, the lr_patience rule,
and a run with the presence head and a schedule that is stopped by a signal mid-epoch and resumed."""

from __future__ import annotations

import dataclasses
import math
import os
import signal

import keras
import numpy as np
import pytest

from harness import config as config_module
from harness import io
from harness.errors import ConfigError
from harness.run import callbacks, checkpoint, optim, train
from harness.run.main import main


def test_schedule_golden_values():
    # cosine: warmup 0 -> 1 over 2 steps, then cosine 1 -> 0 over the remaining 4
    values = optim.schedule_value(np.arange(8), peak=1.0, total_steps=6, warmup_steps=2)
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                        (1 + math.cos(3 * math.pi / 4)) / 2, 0.0, 0.0], atol=1e-15)
    # one-cycle shape: from `start` up to the peak, then down to `end`
    values = optim.schedule_value(np.array([0, 1, 2, 4]), peak=1.0, total_steps=4, warmup_steps=2, start=0.2, end=0.1)
    np.testing.assert_allclose(values, [0.2, 0.6, 1.0, 0.1])


def test_schedule_parameters_follow_the_config():
    config = config_module.build_config(overrides={"lr_schedule": "cosine", "warmup_epochs": 0.5, "epochs": 4,
                                                   "learning_rate": 0.01})
    assert optim.schedule_parameters(config, 10) == {"peak": 0.01, "total_steps": 40, "warmup_steps": 5,
                                                     "start": 0.0, "end": 0.0}
    onecycle = dataclasses.replace(config, lr_schedule="onecycle")
    assert optim.schedule_parameters(onecycle, 10) == {"peak": 0.01, "total_steps": 40, "warmup_steps": 12,
                                                       "start": 0.01 / 25, "end": 0.01 / 25e4}
    assert optim.make_schedule(dataclasses.replace(config, lr_schedule="constant"), 10) is None


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_the_keras_schedule_is_the_numpy_math(schedule):
    config = config_module.build_config(overrides={"lr_schedule": schedule, "warmup_epochs": 1, "epochs": 3})
    parameters = optim.schedule_parameters(config, 7)
    keras_schedule = optim.make_schedule(config, 7)
    steps = np.arange(0, 25)
    got = np.array([float(keras_schedule(step)) for step in steps])
    np.testing.assert_allclose(got, optim.schedule_value(steps, **parameters), rtol=2e-6, atol=1e-12)
    again = optim.WarmupCosine.from_config(keras_schedule.get_config())
    assert float(again(10)) == float(keras_schedule(10))


def test_adamw_decays_weights_and_takes_the_schedule():
    config = config_module.build_config(overrides={"optimizer": "adamw", "weight_decay": 0.1, "learning_rate": 0.5})
    optimizer = optim.make_optimizer(config)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == pytest.approx(0.1)
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer.apply([keras.ops.zeros(3)], [variable])  # zero gradient: only the decoupled decay acts
    np.testing.assert_allclose(variable.numpy(), 1.0 - 0.5 * 0.1, rtol=1e-6)
    scheduled = optim.make_optimizer(dataclasses.replace(config, lr_schedule="cosine"), steps_per_epoch=5)
    assert isinstance(scheduled._learning_rate, optim.WarmupCosine)


def test_lr_patience_with_a_schedule_is_refused_naming_both_keys(capsys):
    with pytest.raises(ConfigError, match="lr_patience.*lr_schedule"):
        config_module.build_config(overrides={"lr_patience": 2, "lr_schedule": "cosine"})
    assert main(["--lr_patience=2", "--lr_schedule=onecycle", "--data_dir=/nonexistent"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "'lr_patience'" in error and "'lr_schedule'" in error
    # constant keeps LR-on-plateau
    assert config_module.build_config(overrides={"lr_patience": 2}).lr_schedule == "constant"


def _signal_at(epoch_index: int, batch_index: int):
    """make_log_extras wrapped so the run sends itself SIGTERM after one given training batch (a real signal)."""
    original = callbacks.make_log_extras

    def make(monitor: str):
        callback = original(monitor)
        seen = {"epoch": -1}
        callback.on_epoch_begin = lambda epoch, logs=None: seen.update(epoch=epoch)

        def on_train_batch_end(batch, logs=None):
            if seen["epoch"] == epoch_index and batch == batch_index:
                os.kill(os.getpid(), signal.SIGTERM)

        callback.on_train_batch_end = on_train_batch_end
        return callback

    return make


@pytest.mark.slow
def test_a_run_with_the_head_and_a_schedule_resumes_the_schedule_where_it_stopped(tiny_config, tmp_path, monkeypatch):
    config = dataclasses.replace(
        tiny_config, presence_head=True, optimizer="adamw", lr_schedule="onecycle", learning_rate=0.01, epochs=2,
        monitor="val_kaggle_dice",
    ).validate()
    run_dir = tmp_path / "single" / "headed"
    monkeypatch.setattr(callbacks, "make_log_extras", _signal_at(epoch_index=1, batch_index=1))
    stopped = train.train(config, run_dir, "headed", verbose=0)
    assert stopped["status"] == "preempted" and stopped["exit_code"] == 128 + signal.SIGTERM
    state = checkpoint.load_state(run_dir)
    batches = io.read_jsonl(run_dir / "metrics.jsonl")[0]["step"]  # steps of one epoch
    assert state.mid_epoch and state.epoch == 1 and state.iterations == batches + 2
    parameters = optim.schedule_parameters(config, batches)

    # The checkpoint holds the head and the optimizer's step: a fresh model restored from it is at that
    # step of the schedule, not at its start.
    from harness.model import build_model
    from harness.run import losses

    model = build_model(config)
    model.compile(optimizer=optim.make_optimizer(config, batches), **losses.compile_arguments(config))
    checkpoint.restore_weights(run_dir, model)
    assert int(model.optimizer.iterations.numpy()) == state.iterations
    expected = float(optim.schedule_value(state.iterations, **parameters))
    assert float(model.optimizer.learning_rate) == pytest.approx(expected, rel=1e-5)
    assert expected > 2 * parameters["start"]  # clearly not the schedule's first value

    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    finished = train.train(config, run_dir, "headed", verbose=0)
    assert finished["status"] == "finished" and finished["epochs_completed"] == 2
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(parameters["start"], rel=1e-5)
    assert rows[1]["lr"] == pytest.approx(expected, rel=1e-5)  # epoch 2 went on from the saved step
    for name in ("dice_coef", "kaggle_dice", "val_dice_coef", "val_kaggle_dice", *config_module.PRESENCE_METRICS):
        assert name in rows[1], name
    final = checkpoint.load_state(run_dir)
    assert final.learning_rate == pytest.approx(float(optim.schedule_value(final.iterations, **parameters)), rel=1e-5)
    best = checkpoint.load_best(run_dir)
    assert sorted(best.output_names) == ["mask", "presence"]
