"""`harness status` shows each run's device (issue 21): an ended run's from the store's copy of its
summary.json, an active run's from the summary.json in its folder (the store's copy is that of its
previous attempt). The records are hand-made: a GPU's cannot come from this machine."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from harness import cli, runfolder
from harness.sweep.store import Store

from .conftest import fake_spec

H100 = {"backend": "tensorflow", "device": "GPU", "device_name": "NVIDIA H100 80GB HBM3", "gpu_memory_gb": 79.6,
        "precision": "mixed_bfloat16", "memory_share": 0.45, "cpu_fallback": False}
CPU = {"backend": "tensorflow", "device": "CPU", "device_name": "Some CPU (2 CPUs)", "gpu_memory_gb": None,
       "precision": "float32", "memory_share": None, "cpu_fallback": False}


def test_status_shows_the_device_of_ended_and_active_runs(tmp_path: Path):
    root = tmp_path / "runs"
    spec = fake_spec(parameters={"learning_rate": {"values": [0.1, 0.01, 0.001]}, "epochs": {"value": 1}})
    with Store(root) as store:
        sweep_id = store.create_sweep(spec)
        ended, active, before = (store.claim_run(sweep_id, agent="h:1", host="box", gpu="0") for _ in range(3))
        store.finish_run(ended.id, "finished", {"status": "finished", "device": H100}, exit_code=0)
        # The active run: its store summary is an earlier attempt's (on the GPU); its folder says CPU now.
        store.finish_run(active.id, "preempted", {"status": "preempted", "device": H100}, exit_code=143)
        store.claim_run(sweep_id, agent="h:2", host="box", gpu=None)
        folder = runfolder.run_dir(root, sweep_id, active.id)
        folder.mkdir(parents=True)
        runfolder.write_summary(folder, {"status": "running", "device": CPU})
    result = CliRunner().invoke(cli.main, ["status", sweep_id, "--root", str(root)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    column = header.index("device")

    def device_cell(run_id: str) -> str:
        line = next(line for line in lines if f" {run_id} " in line)
        return line[column:].split("  ")[0].strip()

    assert device_cell(ended.id) == "gpu:H100 80GB HBM3 bf16 45%"
    assert device_cell(active.id) == "cpu"
    assert device_cell(before.id) == ""  # active, no summary.json yet
