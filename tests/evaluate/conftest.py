"""Fixtures of the evaluation tests: ONE smoke-trained run (real training on the tiny generated data)
shared by every test of this folder; tests that write into a run folder get their own copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import config as config_module
from tests.conftest import tiny_overrides

SMOKE_RUN_ID = "smoke"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path, prepared_cache: Path) -> Path:
    """A run folder trained for 2 epochs on the generated data (64x96, a 3-level UNet of 4 filters). Read-only."""
    return train_tiny(tmp_path_factory, synth_dir, prepared_cache, SMOKE_RUN_ID)


def train_tiny(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path, prepared_cache: Path, run_id: str,
               **changes: object) -> Path:
    """Train a tiny run (`tiny_overrides` with a 0.25 validation share, + `changes`) into its own folder
    `<tmp>/single/<run_id>`, W&B off; returns the folder."""
    from harness.run import train

    config = config_module.build_config(overrides=tiny_overrides(synth_dir, prepared_cache, val_fraction=0.25, **changes))
    run_dir = tmp_path_factory.mktemp(f"evaluate-{run_id}") / "single" / run_id
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        summary = train.train(config, run_dir, run_id, verbose=0)
    assert summary["status"] == "finished", summary
    return run_dir


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run (tests that write postprocess.json, evaluation.json, plots)."""
    target = tmp_path / "single" / SMOKE_RUN_ID
    shutil.copytree(trained_run, target, ignore=shutil.ignore_patterns("checkpoint", "tb"))
    return target


@pytest.fixture(scope="session")
def tuned_run(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> tuple[Path, str]:
    """A copy of the trained run after `harness postprocess` (postprocess.json and the cached validation
    probabilities), with the command's output. Read-only: copy it (`tuned_copy`) to write into it."""
    from click.testing import CliRunner

    from harness.cli import main

    run_dir = tmp_path_factory.mktemp("evaluate-tuned") / "single" / SMOKE_RUN_ID
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("checkpoint", "tb"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        result = CliRunner().invoke(main, ["postprocess", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run_dir, result.output


@pytest.fixture
def tuned_copy(tuned_run: tuple[Path, str], tmp_path: Path) -> Path:
    target = tmp_path / "tuned" / SMOKE_RUN_ID
    shutil.copytree(tuned_run[0], target)
    return target


@pytest.fixture(scope="session")
def trained_presence_run(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path, prepared_cache: Path) -> Path:
    """A run trained with `presence_head: true` (the same tiny recipe, AdamW with a cosine schedule, as a
    CPU recipe run would use). Read-only."""
    return train_tiny(tmp_path_factory, synth_dir, prepared_cache, "head", presence_head=True, optimizer="adamw",
                      lr_schedule="cosine", warmup_epochs=0.5, monitor="val_kaggle_dice")
