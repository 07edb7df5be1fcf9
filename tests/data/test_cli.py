"""The data commands as a user runs them: `harness synth`, `harness prepare`, `harness eda`."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.data import cache


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_synth_prepare_eda_as_a_newcomer(runner, tmp_path):
    data_dir = tmp_path / "data"
    result = runner.invoke(main, ["synth", str(data_dir), "--images", "6", "--test-images", "2", "--size", "48x72", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 train + 2 test images (48x72)" in result.output
    result = runner.invoke(main, ["prepare", str(data_dir), "--size", "32x48", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "cache ready: 6 images at 32x48" in result.output
    assert len(cache.open_cache(data_dir / "cache", "32x48", data_dir=data_dir)) == 6
    result = runner.invoke(main, ["eda", str(data_dir), "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output and (tmp_path / "plots" / "class_frequency.png").exists()


def test_prepare_with_separate_cache_folder(runner, synth_dir, tmp_path):
    result = runner.invoke(main, ["prepare", str(synth_dir), "--size", "16x24", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "16x24" / "index.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["prepare", "{missing}", "--size", "32x48"], "data folder not found"),
        (["prepare", "{data}", "--size", "32by48"], "--size: expected HxW"),
        (["synth", "{out}", "--images", "2", "--size", "0x10"], "--size: expected HxW"),
        (["eda", "{missing}"], "data folder not found"),
        (["prepare", "{broken}", "--size", "32x48"], "unknown class 'Cumulus'"),
    ],
)
def test_bad_input_exits_2_with_one_line(runner, synth_dir, tmp_path, args, message):
    broken = tmp_path / "broken"
    shutil.copytree(synth_dir, broken, ignore=shutil.ignore_patterns("cache"))
    csv_path = broken / "train.csv"
    csv_path.write_text(csv_path.read_text().replace("_Sugar,", "_Cumulus,", 1))
    names = {"missing": tmp_path / "missing", "data": synth_dir, "out": tmp_path / "out", "broken": broken}
    result = runner.invoke(main, [arg.format(**names) for arg in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_synth_requires_images(runner, tmp_path):
    result = runner.invoke(main, ["synth", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--images" in result.output
