"""Where the sweep store lives: `--store` / $HARNESS_STORE apart from the runs root, no store on a network
filesystem, and read-only commands that never create one. Real SQLite files and real agent processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import SweepError
from harness.sweep import store as store_module
from harness.sweep.store import Store
from tests.sweep.conftest import FAST, fake_spec

# Local filesystems statfs(2) reports on Linux test machines (ext4, tmpfs, overlayfs, xfs, btrfs).
LOCAL_MAGICS = {0xEF53, 0x01021994, 0x794C7630, 0x58465342, 0x9123683E}


def _harness(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("HARNESS_ROOT", "HARNESS_STORE")}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          env={**environment, **(env or {})}, timeout=120)


def test_store_path_is_the_argument_then_the_environment_then_the_runs_root(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("HARNESS_STORE", raising=False)
    assert store_module.store_path(tmp_path / "runs") == tmp_path / "runs" / "sweeps.db"
    monkeypatch.setenv("HARNESS_STORE", str(tmp_path / "env.db"))
    assert store_module.store_path(tmp_path / "runs") == tmp_path / "env.db"
    assert store_module.store_path(tmp_path / "runs", tmp_path / "arg.db") == tmp_path / "arg.db"
    (tmp_path / "folder").mkdir()
    assert store_module.store_path(tmp_path / "runs", tmp_path / "folder") == tmp_path / "folder" / "sweeps.db"


def test_a_store_apart_from_the_runs_root_holds_the_sweep_while_runs_go_to_the_root(tmp_path: Path):
    root, store_file = tmp_path / "shared-runs", tmp_path / "local-disk" / "sweeps.db"
    spec_file = tmp_path / "sweep.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(fake_spec(parameters={"learning_rate": {"values": [0.01]}})))
    created = _harness("sweep", "create", str(spec_file), "--root", str(root), "--store", str(store_file), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    sweep_id = created.stdout.strip()
    assert store_file.is_file() and not (root / "sweeps.db").exists()

    agent = _harness("agent", sweep_id, "--root", str(root), "--store", str(store_file), "--count", "1", *FAST,
                     cwd=tmp_path, env={"FAKE_EPOCH_SECONDS": "0.01"})
    assert agent.returncode == 0, agent.stdout + agent.stderr
    assert not (root / "sweeps.db").exists()  # the agent and its run used the same store, not the root's
    with Store(root, path=store_file, read_only=True) as store:
        (run,) = store.runs(sweep_id)
    assert run.state == "finished" and (root / sweep_id / run.id / "metrics.jsonl").is_file()

    # $HARNESS_STORE is the same thing as --store.
    listed = _harness("status", sweep_id, "--root", str(root), cwd=tmp_path, env={"HARNESS_STORE": str(store_file)})
    assert listed.returncode == 0 and run.id in listed.stdout, listed.stderr
    # Without it, the root's (missing) store is named, and not created.
    missing = _harness("status", sweep_id, "--root", str(root), cwd=tmp_path)
    assert missing.returncode == 2 and str(root / "sweeps.db") in missing.stderr
    assert not (root / "sweeps.db").exists()


def test_read_only_commands_never_create_a_store(tmp_path: Path):
    for command in (["status"], ["status", "local-abcdefgh"], ["sweep", "report", "local-abcdefgh"]):
        result = _harness(*command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"no sweep store at {tmp_path / 'runs' / 'sweeps.db'}" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_read_only_store_reads_while_a_writer_holds_the_lock_and_refuses_writes(tmp_path: Path):
    with Store(tmp_path) as writer:
        sweep_id = writer.create_sweep(fake_spec())
        writer._db.execute("BEGIN IMMEDIATE")  # an agent in the middle of a claim
        try:
            with Store(tmp_path, read_only=True, timeout_s=1) as reader:
                assert reader.get_sweep(sweep_id).state == "running"
                with pytest.raises(SweepError, match="opened read-only"):
                    reader.set_sweep_state(sweep_id, "paused")
                with pytest.raises(sqlite3.OperationalError, match="readonly"):
                    reader._db.execute("UPDATE sweeps SET state = 'paused'")  # SQLite itself refuses too
        finally:
            writer._db.execute("ROLLBACK")
        assert writer.get_sweep(sweep_id).state == "running"


def test_filesystem_type_reads_statfs_of_a_real_local_filesystem(tmp_path: Path):
    if not sys.platform.startswith("linux"):
        pytest.skip("statfs f_type is Linux's")
    magic = store_module.filesystem_type(tmp_path)
    assert magic in LOCAL_MAGICS, hex(magic or 0)
    # A path that does not exist yet is judged by its nearest existing folder.
    assert store_module.filesystem_type(tmp_path / "not" / "yet" / "sweeps.db") == magic
    store_module.check_local_filesystem(tmp_path / "sweeps.db")  # local: accepted


@pytest.mark.parametrize("magic, name", [(0x6969, "NFS"), (0x0BD00BD0, "Lustre"), (0x47504653, "GPFS"),
                                         (0xFF534D42, "CIFS"), (0x00C36400, "CephFS")])
def test_a_store_on_a_network_filesystem_is_refused_naming_the_path_and_the_fix(tmp_path: Path, monkeypatch,
                                                                                   magic: int, name: str):
    # No NFS/Lustre server can run on these machines: the statfs answer is the one thing replaced here.
    monkeypatch.setattr(store_module, "filesystem_type", lambda path: magic)
    target = tmp_path / "nfs" / "sweeps.db"
    with pytest.raises(SweepError, match=rf"{target}.*{name}.*--store /local/disk/sweeps.db"):
        Store(tmp_path / "nfs")
    assert not target.exists()  # refused before SQLite created anything
