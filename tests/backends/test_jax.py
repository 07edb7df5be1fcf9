"""The harness under Keras' JAX backend (KERAS_BACKEND=jax): train, resume exactly, evaluate, launch.

This pytest process imported Keras on TensorFlow, and Keras picks its backend once per process: every
test here runs the harness in its own child processes with KERAS_BACKEND=jax. They share one JAX
compilation cache ($HARNESS_JAX_CACHE, a session folder), so only the first child compiles the tiny
UNet's programs (about 15 s on two cores) and the others load them. The steps are combined into few
processes (tests/backends/jax_program.py trains, interrupts, resumes, post-processes and predicts in
one); docs/backends.md says what is supported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import io
from harness.sweep.store import Store
from tests.conftest import tiny_overrides
from tests.launch.conftest import create_sweep, launch
from tests.run.test_exact_resume import _weights

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.jax,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="jax is not installed (the `jax` extra: pip install -e '.[jax]', or make venv)"),
]

PROGRAM_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def jax_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a JAX child: the backend, W&B off, one compilation cache for the whole module."""
    environment = dict(os.environ)
    environment.update(KERAS_BACKEND="jax", WANDB_MODE="disabled", WANDB_SILENT="true", PYTHONUNBUFFERED="1",
                       HARNESS_JAX_CACHE=str(tmp_path_factory.mktemp("jax-cache")))
    environment.pop("HARNESS_PAUSE_AT", None)
    environment.pop("CUDA_VISIBLE_DEVICES", None)
    return environment


@pytest.fixture(scope="module")
def jax_program(jax_environment, synth_dir, prepared_cache, tmp_path_factory) -> tuple[Path, dict]:
    """tests/backends/jax_program.py run once under JAX: its work folder and result.json."""
    workdir = tmp_path_factory.mktemp("jax-program")
    environment = {**jax_environment, "HARNESS_ROOT": str(workdir / "runs")}
    done = subprocess.run([sys.executable, "-m", "tests.backends.jax_program", str(workdir), str(synth_dir),
                           str(prepared_cache)], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=PROGRAM_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return workdir, json.loads((workdir / "result.json").read_text())


def test_the_unet_trains_on_jax_and_its_summary_says_so(jax_program):
    workdir, result = jax_program
    assert result["backend"] == "jax"
    device = result["straight"]["device"]
    assert (device["backend"], device["backend_version"]) == ("jax", importlib.metadata.version("jax"))
    assert device["device"] == "CPU" and device["jit_compile_resolved"] is True  # JAX always compiles (XLA)
    summary = json.loads((workdir / "runs" / "single" / "straight" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["device"]["backend"] == "jax"
    assert summary["device"]["compilation_cache"] and any(Path(summary["device"]["compilation_cache"]).iterdir())


def test_a_jax_run_interrupted_mid_epoch_resumes_exactly(jax_program):
    workdir, result = jax_program
    runs = workdir / "runs" / "single"
    assert (result["interrupted"]["status"], result["interrupted"]["exit_code"]) == ("preempted", 128 + signal.SIGTERM)
    assert result["resumed"]["status"] == "finished"
    rows = io.read_jsonl(runs / "interrupted" / "metrics.jsonl")
    reference = io.read_jsonl(runs / "straight" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [row["step"] for row in reference] == [5, 10]
    for row, expected in zip(rows, reference):
        for name in ("loss", "dice_coef", "val_loss", "val_dice_coef"):
            assert row[name] == pytest.approx(expected[name], rel=1e-6), name
    # XLA on a CPU is deterministic: the resumed run ends with the uninterrupted one's weights.
    for mine, theirs in zip(_weights(runs / "interrupted"), _weights(runs / "straight"), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_jax_run_postprocesses_and_predicts(jax_program, synth_dir):
    workdir, result = jax_program
    assert result["postprocess"]["exit_code"] == 0, result["postprocess"]["output"]
    assert result["predict"]["exit_code"] == 0, result["predict"]["output"]
    assert (workdir / "runs" / "single" / "straight" / "postprocess.json").is_file()
    rows = (workdir / "submission.csv").read_text().splitlines()
    assert len(rows) - 1 == 4 * len(list((synth_dir / "test_images").iterdir()))


def test_one_agent_of_the_local_launcher_trains_a_sweep_run_on_jax(jax_program, jax_environment, synth_dir,
                                                                   prepared_cache, tmp_path):
    """`harness launch --gpus none` with the real trainer: the agent's run inherits the backend, and loads
    the programs the first child compiled from the shared cache instead of compiling them again."""
    root = tmp_path / "root"
    root.mkdir()
    fixed = {key: value for key, value in tiny_overrides(synth_dir, prepared_cache, val_fraction=0.25).items()}
    fixed.update(epochs=2, deterministic=True)
    spec = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"learning_rate": {"values": [0.001]}, **{key: {"value": value} for key, value in fixed.items()}},
            "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"]}
    sweep_id = create_sweep(root, spec)
    cache = Path(jax_environment["HARNESS_JAX_CACHE"])
    cached_before = set(cache.iterdir())
    log = tmp_path / "launch.log"
    process = launch(["--gpus", "none", "--agents", "1", "--count", "1", "--stagger", "0", "--sweep", sweep_id],
                     root, log, env={**jax_environment, "HARNESS_ROOT": str(root)})
    assert process.wait(timeout=PROGRAM_TIMEOUT_S) == 0, log.read_text()
    with Store(root) as store:
        (run,) = store.runs(sweep_id)
    summary = json.loads((root / sweep_id / run.id / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert summary["device"]["backend"] == "jax" and summary["device"]["compilation_cache"] == str(cache)
    assert [row["step"] for row in io.read_jsonl(root / sweep_id / run.id / "metrics.jsonl")] == [5, 10]
    # The same programs as jax_program's straight run: every one came from the cache (JAX writes each
    # program it compiles there: none was added).
    assert cached_before and set(cache.iterdir()) == cached_before


def test_the_library_model_under_jax_is_a_clear_error_before_anything_heavy(jax_environment, synth_dir,
                                                                            prepared_cache, tmp_path):
    values = tiny_overrides(synth_dir, prepared_cache, model="sm_unet_resnet34")
    arguments = [f"--{key.replace('_', '-')}={value}" for key, value in values.items()]
    done = subprocess.run([sys.executable, "-m", "harness.train", "--run-id", "library", "--root", str(tmp_path),
                           *arguments], cwd=REPO, env=jax_environment, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'sm_unet_resnet34' runs only on the Keras backend tensorflow" in done.stderr
    assert "KERAS_BACKEND=tensorflow" in done.stderr and "model: unet" in done.stderr
    # Failed at the device check: before the run's config, its summary or any checkpoint was written.
    run_dir = tmp_path / "single" / "library"
    assert not (run_dir / "config.json").exists() and not (run_dir / "summary.json").exists()
