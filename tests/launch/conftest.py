"""Launcher fixtures: the real single-node SLURM (session), and small sweeps of a fast training program.

`slurm_cluster` uses a running test SLURM as it is, else starts one with scripts/test_slurm.sh when it
can (root on Debian) and stops it at the end of the session; elsewhere it skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_TRAIN = Path(__file__).resolve().parent / "fake_train.py"
TEST_SLURM = REPO / "scripts" / "test_slurm.sh"
PARTITION = "debug"  # scripts/test_slurm.sh's partition, the `local` profile's


def _slurm_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return states.returncode == 0 and any(state.startswith(("idle", "mix", "alloc")) for state in states.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster() -> Any:
    """A real SLURM with partition `debug` and 4 schedulable fake GPUs."""
    if _slurm_ready():
        yield PARTITION
        return
    if os.geteuid() != 0:
        pytest.skip("the test SLURM needs root to start (scripts/test_slurm.sh), and none is running")
    if not Path("/etc/debian_version").exists():
        pytest.skip("the test SLURM script installs Debian packages; this is not Debian, and no SLURM is running")
    if os.environ.get("CLOUDSWEEP_NO_SLURM"):
        pytest.skip("CLOUDSWEEP_NO_SLURM is set")
    started = subprocess.run(["bash", str(TEST_SLURM), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.fail(f"scripts/test_slurm.sh start failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield PARTITION
    finally:
        subprocess.run(["bash", str(TEST_SLURM), "stop"], capture_output=True, text=True, timeout=120)


def fake_sweep_spec(values: list[float], epochs: int = 3, epoch_s: float = 0.5, **extra: Any) -> dict[str, Any]:
    """A grid sweep over `quality` whose runs are tests/launch/fake_train.py (a real child program)."""
    parameters: dict[str, Any] = {"quality": {"values": values}, "epochs": {"value": epochs},
                                  "epoch_s": {"value": epoch_s}}
    parameters.update({key: {"value": value} for key, value in extra.items()})
    return {
        "method": "grid",
        "metric": {"name": "val_dice_coef", "goal": "maximize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", str(FAKE_TRAIN), "${args}"],
    }


def create_sweep(root: Path, spec: dict[str, Any]) -> str:
    from harness.sweep.store import Store

    with Store(root) as store:
        return store.create_sweep(spec, workdir=root)


def starts(root: Path, sweep_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every process start of a run (fake_train's starts.jsonl)."""
    path = root / sweep_id / run_id / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def epochs_logged(root: Path, sweep_id: str, run_id: str) -> list[int]:
    path = root / sweep_id / run_id / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def launch(args: list[str], root: Path, log: Path, **popen: Any) -> subprocess.Popen:
    """`python -m harness.launch ARGS --root ROOT` as a real process, output to `log`."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    handle = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "harness.launch", *args, "--root", str(root)],
                            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=root, **popen)


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
