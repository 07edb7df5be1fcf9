"""`harness status SWEEP --best`: the folder of the best finished run, for scripts such as `make demo`."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from harness import cli
from harness.sweep import status
from harness.sweep.store import Store

GRID = {
    "method": "grid",
    "metric": {"name": "val_dice_coef", "goal": "maximize"},
    "parameters": {"learning_rate": {"values": [0.01, 0.001, 0.0001]}},
    "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"],
}


def test_best_is_the_finished_run_with_the_best_metric(tmp_path: Path):
    root = tmp_path / "runs"
    runner = CliRunner()
    with Store(root) as store:
        sweep_id = store.create_sweep(GRID)
        result = runner.invoke(cli.main, ["status", sweep_id, "--root", str(root), "--best"])
        assert result.exit_code == 2 and "no finished run" in result.output

        runs = [store.claim_run(sweep_id, agent="a", host="h") for _ in range(3)]
        # The best metric belongs to a run that failed: it must not be chosen.
        for run, value, state in zip(runs, (0.4, 0.6, 0.9), ("finished", "finished", "failed")):
            store.record_history(run.id, [{"epoch": 1, "val_dice_coef": value}])
            store.finish_run(run.id, state)
        assert status.best_run(store, sweep_id).id == runs[1].id

    result = runner.invoke(cli.main, ["status", sweep_id, "--root", str(root), "--best"])
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == root.absolute() / sweep_id / runs[1].id
