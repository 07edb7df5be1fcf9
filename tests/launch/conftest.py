"""Launcher fixtures: the real SLURM test clusters (session), and small sweeps of a fast training program.

`slurm_cluster` (single node) and `slurm_multinode` (3 nodes, each `slurmd` in its own network
namespace) use a running test cluster as it is, else start one with scripts/test_slurm.sh when they
can (root on Debian) and stop it at the end of the session; elsewhere they skip with the reason.
The multi-node cluster is reached only through its own SLURM_CONF, passed in the environment of the
commands that need it (`MultiNodeCluster.env`), never set in this process.
"""

from __future__ import annotations

import dataclasses
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
FAKE_TRAIN = Path(__file__).resolve().parents[1] / "fakes" / "fake_train.py"
TEST_SLURM = REPO / "scripts" / "test_slurm.sh"
PARTITION = "debug"  # scripts/test_slurm.sh's partition (both modes), the `local` profile's
MULTINODE_STATE = Path(os.environ.get("CLOUDSWEEP_MULTINODE_STATE", "/tmp/cloudsweep-slurm-multinode"))
MULTINODE_NODES = ("node1", "node2", "node3")


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


@dataclasses.dataclass(frozen=True)
class MultiNodeCluster:
    """The multi-node test cluster: its SLURM_CONF, and the node-level actions of scripts/test_slurm.sh."""

    state_dir: Path
    nodes: tuple[str, ...] = MULTINODE_NODES
    partition: str = PARTITION

    @property
    def conf(self) -> Path:
        return self.state_dir / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus this cluster's SLURM_CONF: for sbatch/sacct/squeue/scancel, submitit, launchers."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def controller_address(self) -> str:
        """The controller's address on the nodes' bridge (what a node reaches the host at)."""
        for line in self.conf.read_text().splitlines():
            if line.startswith("AccountingStorageHost="):
                return line.split("=", 1)[1].strip()
        raise AssertionError(f"no AccountingStorageHost in {self.conf}")

    def slurm(self, *argv: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; its stdout."""
        done = subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def script(self, *argv: str) -> str:
        """`scripts/test_slurm.sh multinode ARGV... STATE_DIR`; its output (fails the test if it fails)."""
        done = subprocess.run(["bash", str(TEST_SLURM), "multinode", *argv, str(self.state_dir)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"test_slurm.sh multinode {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def node_state(self, node: str) -> str:
        return self.slurm("sinfo", "-h", "-N", "-n", node, "-o", "%T", check=False).strip()

    def node_states(self) -> dict[str, str]:
        listing = self.slurm("sinfo", "-h", "-N", "-o", "%N|%T", check=False)
        return dict(line.split("|", 1) for line in listing.split() if "|" in line)

    def heal(self) -> None:
        """Every node up and idle, no job left: what each test starts from (a failed test may leave a node down)."""
        jobs = self.slurm("squeue", "-h", "-o", "%A", check=False).split()
        if jobs:
            self.slurm("scancel", *jobs, check=False)
            wait_until(lambda: not self.slurm("squeue", "-h", "-o", "%A", check=False).split(), 60,
                       "the multi-node queue to empty")
        for node, state in self.node_states().items():
            if not state.startswith(("idle", "mix", "alloc")):
                self.script("start-node", node)
                self.script("link-up", node)
                self.slurm("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        wait_until(lambda: all(state.startswith("idle") for state in self.node_states().values())
                   and len(self.node_states()) == len(self.nodes), 60, "every node idle")


def _multinode_ready(cluster: MultiNodeCluster) -> bool:
    if shutil.which("sinfo") is None or not cluster.conf.exists():
        return False
    try:
        states = cluster.node_states()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return sorted(states) == list(cluster.nodes) and all(state != "unknown" for state in states.values())


@pytest.fixture(scope="session")
def slurm_multinode_session() -> Any:
    cluster = MultiNodeCluster(MULTINODE_STATE)
    if _multinode_ready(cluster):
        yield cluster
        return
    if os.environ.get("CLOUDSWEEP_NO_SLURM"):
        pytest.skip("CLOUDSWEEP_NO_SLURM is set")
    if os.geteuid() != 0:
        pytest.skip("the multi-node test SLURM needs root (network namespaces, scripts/test_slurm.sh multinode)")
    if not Path("/etc/debian_version").exists():
        pytest.skip("the test SLURM script installs Debian packages; this is not Debian")
    for tool in ("nsenter", "unshare"):  # util-linux; the script installs iproute2 (`ip`) itself
        if shutil.which(tool) is None:
            pytest.skip(f"the multi-node test SLURM needs `{tool}` (network namespaces), which is missing")
    started = subprocess.run(["bash", str(TEST_SLURM), "multinode", "start", str(cluster.state_dir)],
                             capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        reason = started.stderr.strip().splitlines()[-1] if started.stderr.strip() else started.stdout[-500:]
        subprocess.run(["bash", str(TEST_SLURM), "multinode", "stop", str(cluster.state_dir)],
                       capture_output=True, text=True, timeout=120)
        if "cannot create" in reason:  # no network namespaces or bridges in this sandbox
            pytest.skip(f"no multi-node test SLURM here: {reason}")
        pytest.fail(f"scripts/test_slurm.sh multinode start failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(TEST_SLURM), "multinode", "stop", str(cluster.state_dir)],
                       capture_output=True, text=True, timeout=120)


@pytest.fixture
def slurm_multinode(slurm_multinode_session: MultiNodeCluster) -> MultiNodeCluster:
    """The multi-node cluster (3 nodes x 2 fake GPUs, partition `debug`), every node idle, no job queued."""
    slurm_multinode_session.heal()
    return slurm_multinode_session


def fake_sweep_spec(values: list[float], epochs: int = 3, epoch_s: float = 0.5, **extra: Any) -> dict[str, Any]:
    """A grid sweep over `quality` whose runs are tests/fakes/fake_train.py (a real child program)."""
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


def launch(args: list[str], root: Path, log: Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """`python -m harness.launch ARGS --root ROOT` as a real process, output to `log` (`env`: its environment)."""
    env = dict(os.environ if env is None else env)
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


def real_trainer_spec(tiny_config: Any) -> dict[str, Any]:
    """A one-run grid sweep of the real `python -m harness.train` on the tiny generated data: 3 epochs of
    2 steps (plus 1 validation step), so a test can interrupt it at a known batch."""
    fixed = {key: tiny_config.to_dict()[key] for key in ("data_dir", "cache_dir", "image_size", "batch_size",
                                                         "filters", "depth", "workers", "augment")}
    # allow_cpu: SLURM hands the job one of its fake GPUs; without it the trainer exits 2 (no GPU here).
    fixed.update({"epochs": 3, "steps_per_epoch": 2, "validation_steps": 1, "allow_cpu": True})
    return {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"learning_rate": {"values": [0.001]}, **{key: {"value": value} for key, value in fixed.items()}},
            "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"]}
