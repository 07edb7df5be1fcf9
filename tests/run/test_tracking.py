"""TensorBoard logging: one point per epoch, also when a resumed run logs an epoch the killed one had logged."""

from __future__ import annotations

from tensorboard.backend.event_processing import event_accumulator

from harness.run import tracking


def _scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    accumulator = event_accumulator.EventAccumulator(str(run_dir / tracking.TB_DIR))
    accumulator.Reload()
    return [(event.step, round(event.value, 6)) for event in accumulator.Scalars(tag)]


def test_scalars_and_hparams_are_written_per_epoch(tmp_path):
    log = tracking.TensorBoardLog(tmp_path, {"loss": "bce", "filters": 8, "batchnorm": True, "lr": 0.001}, "single/run1")
    log.log(1, {"val_dice_coef": 0.25, "loss": 1.5})
    log.log(2, {"val_dice_coef": 0.5, "loss": 1.0})
    log.close()
    assert _scalars(tmp_path, "val_dice_coef") == [(1, 0.25), (2, 0.5)]
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / tracking.TB_DIR))
    accumulator.Reload()
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.group_name == "single/run1"
    assert (info.hparams["loss"].string_value, info.hparams["filters"].number_value, info.hparams["batchnorm"].bool_value) == ("bce", 8, True)


def test_a_resumed_log_replaces_points_the_killed_run_left_past_its_checkpoint(tmp_path):
    first = tracking.TensorBoardLog(tmp_path, {"loss": "bce"}, "single/run1")
    for epoch, value in ((1, 0.1), (2, 0.2), (3, 0.3)):  # killed after logging epoch 3, before its checkpoint
        first.log(epoch, {"val_dice_coef": value})
    first.close()
    resumed = tracking.TensorBoardLog(tmp_path, {"loss": "bce"}, "single/run1", resume_epoch=2)
    resumed.log(3, {"val_dice_coef": 0.35})
    resumed.log(4, {"val_dice_coef": 0.4})
    resumed.close()
    assert _scalars(tmp_path, "val_dice_coef") == [(1, 0.1), (2, 0.2), (3, 0.35), (4, 0.4)]
