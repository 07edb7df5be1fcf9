"""`harness sweep report`: a real local sweep store (SQLite, the sweeps engine's grid) with known metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from harness import io
from harness.cli import main
from harness.evaluate import reports
from harness.sweep.store import Store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metric(config: dict) -> float:
    # Only the learning rate matters (monotonically); the optimizer has no effect at all.
    return 0.5 + 0.1 * math.log10(config["learning_rate"])


def test_sweep_report_ranks_runs_and_finds_the_parameter_that_matters(tmp_path):
    spec = {
        "method": "grid",
        "metric": {"name": "val_dice_coef", "goal": "maximize"},
        "parameters": {
            "learning_rate": {"values": [0.0001, 0.001, 0.01]},
            "optimizer": {"values": ["sgd", "adam"]},
            "filters": {"value": 8},
        },
    }
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(spec, name="report-test")
        while (run := store.claim_run(sweep_id, agent="test", host="here")) is not None:
            value = _metric(run.config)
            store.record_history(run.id, [{"epoch": 1, "val_dice_coef": value - 0.05}, {"epoch": 2, "val_dice_coef": value}])
            store.finish_run(run.id, "finished", {"epochs_completed": 2})
        runs = store.runs(sweep_id)
    assert len(runs) == 6
    best = max(runs, key=lambda run: _metric(run.config))
    io.atomic_write_json(tmp_path / sweep_id / best.id / "postprocess.json", {"mean": {"dice_after": 0.777}})

    result = CliRunner().invoke(main, ["sweep", "report", sweep_id, "--root", str(tmp_path), "--top", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = tmp_path / sweep_id / "report"
    for name in ("best_runs.png", "parallel_coordinates.png", "parameter_importance.png"):
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC, name
    table = [line.split() for line in result.output.splitlines()[1:5]]
    best_ids = {run.id for run in runs if run.config["learning_rate"] == 0.01}
    assert {table[0][1], table[1][1]} == best_ids  # the two runs with the best learning rate come first
    assert [float(row[3]) for row in table] == sorted((float(row[3]) for row in table), reverse=True)
    assert float(table[0][3]) == pytest.approx(0.3)
    markdown = (folder / "report.md").read_text()
    assert "0.7770" in markdown and "filters" not in markdown  # fixed parameters are left out
    importance = reports.sweep_report(sweep_id, root=tmp_path)["importance"]
    by_name = {row["parameter"]: row for row in importance}
    assert by_name["learning_rate"]["importance"] == pytest.approx(1.0)
    assert by_name["learning_rate"]["correlation"] == pytest.approx(1.0)  # metric is linear in log10(lr)
    assert by_name["optimizer"]["importance"] == pytest.approx(0.0, abs=1e-9)
    assert importance[0]["parameter"] == "learning_rate"


def test_encode_parameters_log_scale_categories_and_fixed_values():
    configs = [
        {"learning_rate": 1e-4, "optimizer": "adam", "batchnorm": True, "filters": 8},
        {"learning_rate": 1e-2, "optimizer": "sgd", "batchnorm": False, "filters": 8},
        {"learning_rate": 1e-3, "optimizer": "nadam", "batchnorm": True, "filters": 8},
    ]
    spec = {"optimizer": {"values": ["sgd", "nadam", "adam"]}}
    parameters = {parameter.name: parameter for parameter in reports.encode_parameters(configs, spec)}
    assert set(parameters) == {"learning_rate", "optimizer", "batchnorm"}
    assert parameters["learning_rate"].log and np.allclose(parameters["learning_rate"].values, [-4, -2, -3])
    assert parameters["optimizer"].levels == ["sgd", "nadam", "adam"]
    assert parameters["optimizer"].values.tolist() == [2.0, 0.0, 1.0]
    assert parameters["batchnorm"].kind == "categorical"
    # Three unordered categories: no correlation sign, but an importance (correlation ratio).
    pearson, weight = reports.importance(parameters["optimizer"], np.array([0.1, 0.9, 0.5]))
    assert math.isnan(pearson) and weight == pytest.approx(1.0)


def test_report_of_an_unknown_sweep_is_a_usage_error(tmp_path):
    Store(tmp_path).close()
    result = CliRunner().invoke(main, ["sweep", "report", "local-nothere", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "local-nothere" in result.output
