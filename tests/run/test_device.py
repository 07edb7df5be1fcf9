"""harness.run.device: the device facts, the GPU check (exit 2), the memory share, the precision policy,
and the config keys that drive them. This machine has no GPU: the GPU paths are driven through a fake
nvidia-smi on $PATH and TensorFlow's device listing patched to show GPUs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import config as config_module
from harness.errors import ConfigError, DeviceError, HarnessError
from harness.run import device

REPO = Path(__file__).resolve().parents[2]
# What `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits` prints on an H100 box.
FAKE_NVIDIA_SMI = """#!/bin/sh
ids=""
for arg in "$@"; do case "$arg" in --id=*) ids="${arg#--id=}";; esac; done
for gpu in 0 1; do
  case ",$ids," in ",,"|*",$gpu,"*) echo "$gpu, NVIDIA H100 80GB HBM3, 81559";; esac
done
"""


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """A nvidia-smi that lists two H100s (honouring --id), first on $PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return script


@pytest.fixture
def no_nvidia_smi(tmp_path, monkeypatch):
    """$PATH without nvidia-smi (as on this machine, made sure of)."""
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))


@pytest.fixture
def tensorflow_sees_gpus(monkeypatch):
    """TensorFlow's physical device listing shows two GPUs; records what the memory share configures."""
    import tensorflow as tf

    gpus = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{index}", device_type="GPU") for index in (0, 1)]
    calls: dict[str, list] = {"limits": [], "growth": []}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "set_logical_device_configuration",
                        lambda gpu, configs: calls["limits"].append((gpu.name, [c.memory_limit for c in configs])))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda gpu, on: calls["growth"].append((gpu.name, on)))
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda gpu: {"device_name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)})
    return calls


# --- the environment ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    (None, None), ("", []), ("-1", []), ("0", ["0"]), ("0,1", ["0", "1"]), (" 2 , 3 ", ["2", "3"]),
    ("0,-1,1", ["0"]), ("GPU-1b2c3d4e,MIG-5f6a", ["GPU-1b2c3d4e", "MIG-5f6a"]),
])
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(text, expected):
    environ = {} if text is None else {"CUDA_VISIBLE_DEVICES": text}
    assert device.visible_gpus(environ) == expected


def test_configured_backend_reads_the_environment_then_keras_json(tmp_path):
    assert device.configured_backend({"KERAS_BACKEND": "jax", "HOME": str(tmp_path)}) == "jax"
    assert device.configured_backend({"HOME": str(tmp_path)}) == "tensorflow"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert device.configured_backend({"KERAS_HOME": str(tmp_path)}) == "torch"


# --- the memory share -----------------------------------------------------------------------------
@pytest.mark.parametrize("agents, fraction", [(1, 0.9), (2, 0.45), (3, 0.3), (4, 0.22), (8, 0.11)])
def test_memory_fraction_splits_nine_tenths_of_the_card(agents, fraction):
    assert device.memory_fraction(agents) == fraction
    assert device.memory_fraction(agents) * agents <= device.SHARED_MEMORY_TOTAL + 1e-9


def test_one_run_per_gpu_gets_the_whole_card():
    for backend in device.BACKENDS:
        assert device.memory_share_environment(1, backend) == {}


def test_shared_gpu_environment_per_backend():
    assert device.memory_share_environment(2, "tensorflow") == {
        "HARNESS_GPU_MEMORY_FRACTION": "0.45", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert device.memory_share_environment(3, "jax") == {
        "HARNESS_GPU_MEMORY_FRACTION": "0.30", "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.30", "XLA_CLIENT_MEM_FRACTION": "0.30"}
    assert device.memory_share_environment(4, "torch") == {
        "HARNESS_GPU_MEMORY_FRACTION": "0.22", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    with pytest.raises(DeviceError, match="'mxnet' is not supported"):
        device.memory_share_environment(2, "mxnet")
    with pytest.raises(ValueError):
        device.memory_share_environment(0, "tensorflow")


def test_memory_share_is_read_back_and_a_bad_value_is_named():
    assert device.memory_share({}) is None
    assert device.memory_share({"HARNESS_GPU_MEMORY_FRACTION": "0.45"}) == 0.45
    for bad in ("half", "0", "1.5", "-0.2"):
        with pytest.raises(DeviceError, match=r"\$HARNESS_GPU_MEMORY_FRACTION = .*\(0, 1\]"):
            device.memory_share({"HARNESS_GPU_MEMORY_FRACTION": bad})


def test_apply_memory_share_does_nothing_without_a_share_or_without_a_gpu():
    assert device.apply_memory_share({}) is None
    assert device.apply_memory_share({"HARNESS_GPU_MEMORY_FRACTION": "0.45"}) is None  # this CPU: no GPU


def test_apply_memory_share_limits_each_visible_gpu_to_its_fraction(fake_nvidia_smi, tensorflow_sees_gpus):
    applied = device.apply_memory_share({"HARNESS_GPU_MEMORY_FRACTION": "0.45", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert applied == 0.45
    limit = int(0.45 * 81559)
    assert tensorflow_sees_gpus["limits"] == [("/physical_device:GPU:0", [limit]), ("/physical_device:GPU:1", [limit])]
    assert tensorflow_sees_gpus["growth"] == []


def test_apply_memory_share_falls_back_to_growth_when_the_card_size_is_unknown(no_nvidia_smi, tensorflow_sees_gpus):
    assert device.apply_memory_share({"HARNESS_GPU_MEMORY_FRACTION": "0.3"}) == 0.3
    assert tensorflow_sees_gpus["limits"] == []
    assert tensorflow_sees_gpus["growth"] == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]


# --- describe -------------------------------------------------------------------------------------
def test_describe_on_this_cpu_names_backend_device_and_speed_settings():
    config = config_module.Config(precision="float32", jit_compile="false", steps_per_execution=4)
    facts = device.describe(config, environ={"CUDA_VISIBLE_DEVICES": "", "HARNESS_GPU_MEMORY_FRACTION": "0.45"})
    import tensorflow as tf

    assert facts["backend"] == "tensorflow" and facts["backend_version"] == tf.__version__
    assert facts["device"] == "CPU" and facts["gpus_seen"] == 0 and facts["gpu_memory_gb"] is None
    assert facts["device_name"].endswith("CPUs)") and len(facts["device_name"]) > len(" (2 CPUs)")
    assert facts["visible_gpus"] == [] and facts["memory_share"] == 0.45
    assert (facts["precision"], facts["jit_compile"], facts["steps_per_execution"]) == ("float32", "false", 4)
    assert json.loads(json.dumps(facts)) == facts  # goes into summary.json as it is


def test_describe_a_gpu_names_the_card_and_its_memory(fake_nvidia_smi, tensorflow_sees_gpus):
    facts = device.describe(config_module.Config(), environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert facts["device"] == "GPU" and facts["gpus_seen"] == 2 and facts["visible_gpus"] == ["1"]
    assert facts["device_name"] == "NVIDIA H100 80GB HBM3" and facts["gpu_memory_gb"] == 79.6
    assert facts["memory_share"] is None
    assert tensorflow_sees_gpus["limits"] == [] and tensorflow_sees_gpus["growth"] == []  # configures nothing


def test_describe_with_the_compiled_model_says_what_auto_became():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse", **device.compile_options(config_module.Config(jit_compile="auto")))
    facts = device.describe(config_module.Config(), environ={}, model=model)
    assert facts["jit_compile"] == "auto" and facts["jit_compile_resolved"] is False  # Keras: no XLA on a CPU


# --- check ----------------------------------------------------------------------------------------
def test_check_passes_when_no_gpu_was_handed_over():
    for environ in ({}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}):
        device.check(config_module.Config(), environ)


def test_check_fails_a_gpu_pinned_run_with_the_cause_and_the_fix(no_nvidia_smi):
    with pytest.raises(DeviceError) as raised:
        device.check(config_module.Config(), {"CUDA_VISIBLE_DEVICES": "0"})
    message = str(raised.value)
    assert isinstance(raised.value, HarnessError) and raised.value.exit_code == 2
    assert message.startswith("CUDA_VISIBLE_DEVICES=0 but TensorFlow 2.21.0 sees no GPU: ")
    assert "this venv has tensorflow-cpu" in message and "nvidia-smi not found" in message
    assert "`make venv CUDA=1`" in message and "pip install -e '.[cuda]'" in message and "allow_cpu: true" in message


def test_check_names_the_gpus_nvidia_smi_sees(fake_nvidia_smi):
    with pytest.raises(DeviceError, match="tensorflow-cpu"):
        device.check(config_module.Config(), {"CUDA_VISIBLE_DEVICES": "0,1"})


def test_allow_cpu_turns_the_failure_into_one_warning_line(no_nvidia_smi, capsys):
    device.check(config_module.Config(allow_cpu=True), {"CUDA_VISIBLE_DEVICES": "0"})
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("[run] warning: CUDA_VISIBLE_DEVICES=0 but TensorFlow")
    assert "training on the CPU (allow_cpu: true)" in warning


def test_a_fresh_process_pinned_to_gpu_0_exits_2_with_the_fix():
    """As a run would: a new interpreter with CUDA_VISIBLE_DEVICES=0 (TensorFlow reads it at start-up)."""
    code = ("import click, harness.run.device as d, harness.config as c\n"
            "from harness.cli_common import run_main\n"
            "run_main(click.Command('check', callback=lambda: d.check(c.Config())), [])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "0", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2, result.stderr
    assert "error: CUDA_VISIBLE_DEVICES=0 but TensorFlow" in result.stderr and "make venv CUDA=1" in result.stderr


# --- precision and compile options ----------------------------------------------------------------
@pytest.mark.parametrize("precision, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
@pytest.mark.parametrize("presence_head", [False, True])
def test_mixed_precision_computes_in_16_bits_and_outputs_float32(precision, compute, presence_head):
    import keras

    from harness.model import build_model

    config = config_module.Config(image_size="32x48", filters=4, depth=2, precision=precision, presence_head=presence_head)
    with device.precision_policy("float32"):
        assert device.apply_precision(config) == precision
        model = build_model(config)
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert model.get_layer("enc1_conv1").compute_dtype == compute
    outputs = model(np.zeros((1, 32, 48, 3), np.float32), training=False)
    outputs = outputs if isinstance(outputs, dict) else {"output": outputs}
    assert {name: keras.backend.standardize_dtype(tensor.dtype) for name, tensor in outputs.items()} == {
        name: "float32" for name in outputs}


def test_every_precision_trains_a_step_with_a_finite_loss():
    import keras

    from harness.model import build_model
    from harness.run import losses

    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 32, 48, 3)).astype(np.float32)
    masks = (rng.random((2, 32, 48, 4)) > 0.8).astype(np.float32)
    for precision in config_module.PRECISIONS:
        config = config_module.Config(image_size="32x48", filters=4, depth=2, precision=precision, batch_size=2)
        with device.precision_policy(precision):
            model = build_model(config)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), **losses.compile_arguments(config), **device.compile_options(config))
        loss = model.train_on_batch(images, masks, return_dict=True)["loss"]
        assert np.isfinite(loss), precision
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")


def test_library_model_outputs_float32_under_mixed_precision():
    from harness.model import build_model, library

    try:  # not importorskip: segmentation_models must be imported with SM_FRAMEWORK=tf.keras
        library.import_segmentation_models()
    except ConfigError as error:
        pytest.skip(f"the optional extra [library] is not installed: {error}")

    config = config_module.Config(model="sm_unet_resnet34", image_size="32x32", precision="mixed_float16")
    with device.precision_policy("mixed_float16"):
        model = build_model(config)
    assert model.get_layer("final_conv").compute_dtype == "float16"
    assert model.get_layer("sigmoid").compute_dtype == "float32" and model.outputs[0].dtype == "float32"


def test_compile_options_map_the_config_to_model_compile():
    assert device.compile_options(config_module.Config()) == {"jit_compile": "auto", "steps_per_execution": 1}
    assert device.compile_options(config_module.Config(jit_compile="true", steps_per_execution=8)) == {
        "jit_compile": True, "steps_per_execution": 8}
    assert device.compile_options(config_module.Config(jit_compile="false"))["jit_compile"] is False


# --- the config keys ------------------------------------------------------------------------------
def test_device_keys_default_to_the_measured_cpu_choices():
    config = config_module.Config()
    assert (config.precision, config.jit_compile, config.steps_per_execution, config.allow_cpu) == ("float32", "auto", 1, False)


@pytest.mark.parametrize("given, word", [(True, "true"), (False, "false"), ("True", "true"), ("off", "false"),
                                         ("1", "true"), ("AUTO", "auto"), ("auto", "auto")])
def test_jit_compile_accepts_what_sweeps_and_command_lines_write(given, word):
    assert config_module.build_config(overrides={"jit_compile": given}).jit_compile == word


@pytest.mark.parametrize("key, value, message", [
    ("precision", "float16", "'precision' = 'float16' is not one of: float32, mixed_float16, mixed_bfloat16"),
    ("jit_compile", "maybe", "'jit_compile' = 'maybe' is not one of: auto, true, false"),
    ("steps_per_execution", 0, "'steps_per_execution' must be >= 1, got 0"),
    ("steps_per_execution", 1.5, "'steps_per_execution': cannot use 1.5 as int"),
    ("allow_cpu", "perhaps", "'allow_cpu': cannot use 'perhaps' as bool"),
])
def test_bad_device_key_values_name_the_key_and_the_valid_values(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        config_module.build_config(overrides={key: value})


def test_device_keys_from_a_file_and_in_the_generated_reference(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("precision: mixed_bfloat16\njit_compile: true\nsteps_per_execution: 4\nallow_cpu: yes\n")
    config = config_module.build_config(file)
    assert (config.precision, config.jit_compile, config.steps_per_execution, config.allow_cpu) == (
        "mixed_bfloat16", "true", 4, True)
    documented = {row["key"]: row for row in config_module.field_docs()}
    for key in ("precision", "jit_compile", "steps_per_execution", "allow_cpu"):
        assert documented[key]["help"], key


def test_a_sweep_can_search_the_device_keys_and_a_bad_value_is_caught_at_creation():
    from harness.sweep import spec

    sweep = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
             "parameters": {"jit_compile": {"values": [True, False, "auto"]},
                            "precision": {"values": ["float32", "mixed_bfloat16"]},
                            "steps_per_execution": {"values": [1, 4]}, "allow_cpu": {"value": True}},
             "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"]}
    assert spec.validate_spec(sweep) == []
    sweep["parameters"]["precision"] = {"values": ["float32", "bfloat16"]}
    assert spec.validate_spec(sweep) == [
        "parameters.precision: value 'bfloat16': config key 'precision' = 'bfloat16' is not one of: "
        "float32, mixed_float16, mixed_bfloat16"]
