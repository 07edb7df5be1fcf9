"""What a run trains on, checked at its start and recorded (issue 21): a run handed a GPU its framework cannot
see exits 2 before writing anything (unless allow_cpu), and every run records its device in summary.json,
the W&B config and the TensorBoard HParams. Real runs on this GPU-less machine (TensorFlow on CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from harness.run import device, summary as summary_module, tracking, train

REPO = Path(__file__).resolve().parents[2]


def _no_gpu_here() -> bool:
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


@pytest.mark.slow
def test_a_gpu_pinned_run_without_a_gpu_exits_2_with_the_fix_and_allow_cpu_trains_on_the_cpu(synth_dir, prepared_cache,
                                                                                            tmp_path):
    if not _no_gpu_here():
        pytest.skip("TensorFlow sees a GPU here: CUDA_VISIBLE_DEVICES=0 is a usable GPU")
    command = [sys.executable, "-m", "harness", "train", f"--data-dir={synth_dir}", f"--cache-dir={prepared_cache}",
               "--image-size=64x96", "--epochs=1", "--steps-per-epoch=2", "--validation-steps=1", "--filters=4",
               "--depth=3", "--batch-size=4", "--root", str(tmp_path), "--run-id=pinned1"]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    refused = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "CUDA_VISIBLE_DEVICES=0 but TensorFlow" in refused.stderr and "sees no GPU: " in refused.stderr
    assert device.GPU_INSTALL_FIX in refused.stderr and "allow_cpu: true" in refused.stderr
    assert "Traceback" not in refused.stderr
    folder = tmp_path / "single" / "pinned1"
    # Nothing of the run was written (only the lease's own journal): the same command can train it later.
    assert not [path.name for path in folder.iterdir() if path.name != "lease.journal"]

    trained = subprocess.run([*command, "--allow-cpu"], env=environment, capture_output=True, text=True, timeout=300,
                             cwd=REPO)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "training on the CPU (allow_cpu: true)" in trained.stderr
    recorded = json.loads((folder / "summary.json").read_text())
    assert recorded["status"] == "finished"
    record = recorded["device"]
    assert (record["device"], record["gpus_seen"], record["visible_gpus"]) == ("CPU", 0, ["0"])
    assert (record["allow_cpu"], record["cpu_fallback"]) == (True, True)
    assert f"run pinned1: training on cpu fallback ({record['device_name']})" in trained.stdout


@pytest.mark.slow
def test_a_cpu_run_records_backend_device_and_precision_in_summary_wandb_and_tensorboard(tiny_config, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the real W&B client, writing files only
    # What `--agents-per-gpu 2` gives each agent: recorded by the run; nothing to apply without a GPU.
    monkeypatch.setenv(device.MEMORY_FRACTION_ENV, "0.45")
    config = dataclasses.replace(tiny_config, epochs=1, steps_per_epoch=2, validation_steps=1,
                                 precision="mixed_bfloat16")
    run_dir = tmp_path / "single" / "cpu1"
    # A W&B run started by the caller, as under a sweep; read back after the run.
    wandb_run = tracking.start_wandb(config.to_dict(), run_dir, "cpu1", config.wandb_project)
    with device.precision_policy("float32"):  # the run sets its policy globally: restored for later tests
        result = train.train(config, run_dir, "cpu1", wandb_run=wandb_run, verbose=0)
    assert result["status"] == "finished"

    record = json.loads((run_dir / "summary.json").read_text())["device"]
    import tensorflow as tf

    assert (record["backend"], record["backend_version"]) == ("tensorflow", tf.__version__)
    assert (record["device"], record["device_name"]) == ("CPU", device.cpu_name())
    assert (record["precision"], record["jit_compile"], record["jit_compile_resolved"]) == ("mixed_bfloat16", "auto", False)
    assert (record["memory_share"], record["memory_share_applied"]) == (0.45, None)
    assert (record["visible_gpus"], record["cpu_fallback"], record["allow_cpu"]) == (None, False, False)
    assert summary_module.device_label(record) == "cpu bf16"

    assert dict(wandb_run.config)[tracking.DEVICE_KEY] == record

    accumulator = event_accumulator.EventAccumulator(str(run_dir / tracking.TB_DIR))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["device.device"].string_value == "CPU" and hparams["device.backend"].string_value == "tensorflow"
    assert hparams["device.precision"].string_value == "mixed_bfloat16"
    assert hparams["device.memory_share"].number_value == pytest.approx(0.45)


def test_the_short_device_label_of_status():
    """Hand-made records: a GPU's cannot come from this machine (what describe would say on an H100)."""
    gpu = {"device": "GPU", "device_name": "NVIDIA H100 80GB HBM3", "gpu_memory_gb": 79.6, "precision": "float32",
           "memory_share": None}
    assert summary_module.device_label(gpu) == "gpu:H100 80GB HBM3"
    shared = {**gpu, "device_name": "Tesla V100-SXM2", "gpu_memory_gb": 16.0, "precision": "mixed_float16",
              "memory_share": 0.45}
    assert summary_module.device_label(shared) == "gpu:Tesla V100-SXM2 16GB fp16 45%"
    assert summary_module.device_label({"device": "CPU", "precision": "float32", "memory_share": 0.45}) == "cpu"
    assert summary_module.device_label({"device": "CPU", "cpu_fallback": True, "precision": "float32"}) == "cpu fallback"
    assert summary_module.device_label(None) == ""
