"""TensorFlow's start-up lines stay out of every harness command's output; real warnings do not.

harness/__init__.py sets TF_CPP_MIN_LOG_LEVEL (unless the user did) and drops the two lines that
TensorFlow writes while it loads whatever the level says (absl's and oneDNN's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_LINES = (
    "This TensorFlow binary is optimized",  # cpu_feature_guard
    "cpu_feature_guard",
    "All log messages before absl::InitializeLog()",
    "oneDNN",  # "custom operations are on", "supports DT_INT32 only on platforms with AVX-512"
    "generator_dataset_op",
    "Local rendezvous is aborting",
)
# What TensorFlow writes while it loads: the stand-in package below writes the same.
LOAD_LINES = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
              "I0000 00:00:1796622815.018783    8168 port.cc:153] oneDNN custom operations are on. You may see "
              "slightly different numerical results.\n")


def _environment(**changes: str) -> dict[str, str]:
    """This environment without a TF_CPP_MIN_LOG_LEVEL (this process's own `import harness` set one)."""
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(changes)
    return env


@pytest.mark.slow
def test_harness_train_prints_no_tensorflow_startup_lines(synth_dir: Path, prepared_cache: Path, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "harness", "train", f"--data-dir={synth_dir}", f"--cache-dir={prepared_cache}",
         "--image-size=64x96", "--epochs=1", "--batch-size=4", "--filters=4", "--depth=3", "--workers=1",
         "--run-id", "quiet", "--root", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600, env=_environment(), cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "val_dice_coef" in output  # it trained, and its own lines are there
    shown = [line for line in output.splitlines() if any(noise in line for noise in STARTUP_LINES)]
    assert not shown, "TensorFlow start-up lines printed:\n" + "\n".join(shown)


def _import_stand_in(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`import harness; import tensorflow` where `tensorflow` is a stand-in that writes the load lines to
    file descriptor 2 (as TensorFlow's C++ code does), a real error line, and warns twice."""
    package = tmp_path / "stand_in" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os, warnings\n"
        f"os.write(2, {LOAD_LINES.encode()!r})\n"
        "os.write(2, b'E0000 a real error from C++\\n')\n"
        "warnings.warn('a real warning while TensorFlow loads')\n"
        "LEVEL = os.environ.get('TF_CPP_MIN_LOG_LEVEL')\n")
    program = ("import harness, warnings, sys\n"
               "import tensorflow\n"
               "print('level', tensorflow.LEVEL)\n"
               "warnings.warn('a real warning after')\n")
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=_environment(PYTHONPATH=f"{tmp_path / 'stand_in'}{os.pathsep}{REPO}", **env))


def test_the_load_lines_are_dropped_and_everything_else_tensorflow_writes_is_kept(tmp_path: Path):
    done = _import_stand_in(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "level 3"
    assert "absl::InitializeLog" not in done.stderr and "oneDNN" not in done.stderr, done.stderr
    kept = done.stderr
    assert kept.index("E0000 a real error from C++") < kept.index("a real warning while TensorFlow loads") \
        < kept.index("a real warning after"), kept


@pytest.mark.parametrize("level", ["0", "1"])
def test_a_users_own_log_level_wins(tmp_path: Path, level: str):
    done = _import_stand_in(tmp_path, TF_CPP_MIN_LOG_LEVEL=level)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"level {level}"
    # 0: everything TensorFlow prints is shown; any other level still drops the load lines.
    assert ("oneDNN custom operations are on" in done.stderr) == (level == "0"), done.stderr
    assert "a real warning while TensorFlow loads" in done.stderr
