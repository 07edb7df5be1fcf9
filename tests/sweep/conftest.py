"""Helpers for the sweep tests: sweeps whose runs are tests/fakes/fake_train.py (a real, fast child
program that follows the run-folder contract), and agents started as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.sweep.store import Store

FAKE_TRAIN = Path(__file__).resolve().parents[1] / "fakes" / "fake_train.py"
FAKE_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
# Fast agent timings for tests: heartbeats and checks well under a second.
FAST = ["--heartbeat", "0.2", "--poll", "0.05"]


def fake_spec(method: str = "grid", parameters: dict | None = None, **extra: Any) -> dict:
    return {
        "method": method,
        "metric": {"name": "val_dice_coef", "goal": "maximize"},
        "program": str(FAKE_TRAIN),
        "parameters": parameters or {"learning_rate": {"values": [0.01, 0.001]}},
        "command": FAKE_COMMAND,
        **extra,
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def make_sweep(root: Path, tmp_path: Path) -> Callable[..., str]:
    def make(spec: dict, workdir: Path | None = None) -> str:
        with Store(root) as store:
            return store.create_sweep(spec, workdir=workdir or tmp_path)

    return make


@pytest.fixture
def start_agent(root: Path, tmp_path: Path):
    """Start `harness agent` processes; all are killed (by pid) at the end of the test if still alive."""
    started: list[subprocess.Popen] = []

    def start(sweep_id: str, *args: str, epoch_seconds: float = 0.05, env: dict | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"agent-{len(started)}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "harness", "agent", sweep_id, "--root", str(root), *FAST, *args],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "FAKE_EPOCH_SECONDS": str(epoch_seconds), **(env or {})},
        )
        process.log_path = log.name  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def fork_agents(root: Path, tmp_path: Path):
    """Start N agent processes forked from this test process (`run_agent` in each).

    Forked after the engine is imported here, so 8 agents do not each pay its import (1 to 3 s of CPU
    on a busy 2-core machine); each is still its own process with its own store connection. The
    `harness agent` command line itself is covered by the tests that start agents with `start_agent`.
    """
    import multiprocessing

    from harness.sweep import agent, engine

    engine.load_engine()
    context = multiprocessing.get_context("fork")
    started: list = []

    def start(sweep_id: str, count: int = 1, epoch_seconds: float = 0.05, **agent_options):
        os.environ["FAKE_EPOCH_SECONDS"] = str(epoch_seconds)
        processes = []
        for index in range(count):
            log_path = tmp_path / f"forked-{len(started)}.log"

            def target(log_path=log_path) -> None:
                with open(log_path, "a") as log:
                    options = {"heartbeat_s": 0.2, "poll_s": 0.05, **agent_options}
                    sys.exit(agent.run_agent(sweep_id, root=root, **options,
                                             echo=lambda line: print(line, file=log, flush=True)))

            process = context.Process(target=target)
            process.start()
            process.log_path = log_path
            started.append(process)
            processes.append(process)
        return processes

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join()


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def agent_log(process) -> str:
    """What an agent printed (a `start_agent` or `fork_agents` process)."""
    return Path(process.log_path).read_text(errors="replace")
