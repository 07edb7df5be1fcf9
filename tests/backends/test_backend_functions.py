"""harness.run.device's backend functions that need no second backend: where JAX's compilation cache goes,
and what they do in this (TensorFlow) process. Under JAX itself: tests/backends/test_jax.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import config as config_module
from harness.errors import DeviceError
from harness.run import device


def test_the_compilation_cache_is_the_variable_else_under_the_runs_root(tmp_path: Path):
    assert device.compilation_cache_dir(tmp_path / "root", environ={}) == tmp_path / "root" / ".jax-cache"
    assert device.compilation_cache_dir(None, environ={"HARNESS_ROOT": str(tmp_path / "r")}) == tmp_path / "r" / ".jax-cache"
    chosen = {"HARNESS_JAX_CACHE": str(tmp_path / "shared"), "HARNESS_ROOT": str(tmp_path / "r")}
    assert device.compilation_cache_dir(tmp_path / "root", environ=chosen) == tmp_path / "shared"
    for word in ("off", "none", " OFF "):
        assert device.compilation_cache_dir(tmp_path, environ={"HARNESS_JAX_CACHE": word}) is None


def test_under_tensorflow_nothing_is_cached_and_the_library_model_passes_the_check(tmp_path: Path):
    import keras

    assert keras.config.backend() == "tensorflow"
    config = config_module.Config(model="sm_unet_resnet34")
    device.check_model_backend(config)  # no error: the library model's own backend
    run_dir = tmp_path / "root" / "single" / "run"
    assert device.prepare_backend(config_module.Config(), run_dir) is None
    assert not (tmp_path / "root" / ".jax-cache").exists()
    assert device.describe(config_module.Config())["compilation_cache"] is None


def test_a_model_on_a_backend_it_does_not_run_on_is_a_device_error(monkeypatch: pytest.MonkeyPatch):
    # This process runs TensorFlow; the check reads the backend from Keras, so pretend Keras said jax.
    monkeypatch.setattr(device, "current_backend", lambda environ=None: "jax")
    with pytest.raises(DeviceError, match=r"'sm_unet_resnet34' runs only on the Keras backend tensorflow.*'jax'.*"
                                          r"KERAS_BACKEND=tensorflow, or use model: unet"):
        device.check(config_module.Config(model="sm_unet_resnet34"), environ={})
    device.check(config_module.Config(model="unet"), environ={})  # the UNet runs on every backend
