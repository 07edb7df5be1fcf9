"""Fixtures shared by every test area: a tiny generated dataset, its cache, a shrunken config.

The dataset is generated once per session (about 0.3 s); tests must not modify it (copy it first).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

import harness
from harness import config as config_module
from tests.fakes.wandb_backend import wandb_backend  # noqa: F401  (the fixture, for every test area)

SYNTH_IMAGES = 24
SYNTH_TEST_IMAGES = 4
SYNTH_SIZE = (96, 144)  # HxW of the generated JPEGs
CACHE_SIZE = (64, 96)  # HxW of the prepared cache


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test talks to W&B or writes run folders into the repository."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HARNESS_ROOT", str(tmp_path_factory.mktemp("runs")))


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test() -> Any:
    """A run trained in this process sets Keras' global dtype policy (mixed precision): one run per process
    in real use, but here the next test would inherit it. Reset only where Keras is already imported."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated challenge-layout dataset: 24 train + 4 test images at 96x144, seed 0 (read-only)."""
    from harness.data import synth

    out = tmp_path_factory.mktemp("synth") / "data"
    return synth.synthesize(out, images=SYNTH_IMAGES, test_images=SYNTH_TEST_IMAGES, size=SYNTH_SIZE, seed=0)


@pytest.fixture(scope="session")
def prepared_cache(synth_dir: Path) -> Path:
    """The cache root of `synth_dir` prepared at 64x96 (`open_cache(prepared_cache, "64x96")`)."""
    from harness.data import cache

    return cache.prepare(synth_dir, CACHE_SIZE, workers=1, progress=False)


def tiny_overrides(synth_dir: Path, cache_dir: Path, **changes: object) -> dict[str, object]:
    """Config values that train in seconds on `synth_dir` (64x96, 2 epochs, a 3-level UNet of 4 filters)."""
    return {
        "data_dir": str(synth_dir),
        "cache_dir": str(cache_dir),
        "image_size": f"{CACHE_SIZE[0]}x{CACHE_SIZE[1]}",
        "epochs": 2,
        "batch_size": 4,
        "filters": 4,
        "depth": 3,
        "workers": 1,
        "augment": "flips",
        "steps_per_epoch": 0,
        **changes,
    }


@pytest.fixture
def tiny_config(synth_dir: Path, prepared_cache: Path) -> config_module.Config:
    """A config that trains in seconds on `synth_dir` (see `tiny_overrides`)."""
    return config_module.build_config(overrides=tiny_overrides(synth_dir, prepared_cache))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """/work/shared/data (or $HARNESS_SHARED_DATA): the real challenge data; skips where absent."""
    configured = os.environ.get("HARNESS_SHARED_DATA")
    path = Path(configured) if configured else Path(harness.__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set HARNESS_SHARED_DATA to its folder)")
    return path
