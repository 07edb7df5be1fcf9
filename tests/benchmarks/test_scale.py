"""benchmarks/scale.py in its --quick mode: a 50-run sweep per method through the real launcher, agents
and store, and the JSON rows the docs' table is made of."""

from __future__ import annotations

import json

import pytest

from benchmarks import scale

pytestmark = [pytest.mark.slow]

METRICS = {"claims_per_s", "controller_cpu_ms_per_run", "status_ms", "store_bytes_per_run", "claim_ms"}


def test_quick_scale_run_writes_every_figure_for_every_method(tmp_path):
    out = tmp_path / "scale.json"
    assert scale.main(["--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    for method in scale.METHODS:
        found = {row["metric"]: row for row in rows if row["method"] == method}
        assert set(found) == METRICS, (method, sorted(found))
        for row in found.values():
            assert row["benchmark"] == "scale" and row["runs"] == scale.QUICK_SIZES[0]
            assert isinstance(row["value"], float) and row["value"] > 0 and row["unit"], row
        assert found["claims_per_s"]["reference"] > 0  # the last tenth's rate
        assert found["claim_ms"]["reference"] > 0  # the engine alone on the same runs
    assert "status ms" in scale.scale_table(rows)


def test_the_instant_trainer_sweeps_fit_their_run_counts():
    assert scale.GRID_SHAPE[0] * scale.GRID_SHAPE[1] >= max(scale.SIZES)
    spec = scale.sweep_spec("grid", 10, scale.REPO / "trainer.sh")
    assert spec["run_cap"] == 10 and spec["command"][-1] == "${args}"
