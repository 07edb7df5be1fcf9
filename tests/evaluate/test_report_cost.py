"""`harness sweep report` shows what the sweep cost: GPU-hours useful and lost, the best metric against GPU-hours."""

from __future__ import annotations

from harness.evaluate import reports
from harness.sweep.attempts import Attempt, Segment
from harness.sweep.store import Store


def test_the_report_has_the_sweeps_cost_and_the_best_metric_by_gpu_hours(tmp_path):
    spec = {"method": "grid", "metric": {"name": "val_dice_coef", "goal": "maximize"},
            "parameters": {"learning_rate": {"values": [0.01, 0.001]}}}
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(spec)
        for value, (gpus, start, wall, lost) in zip((0.4, 0.6), ((1, 0.0, 3600.0, 0.0), (2, 3600.0, 1800.0, 900.0))):
            run = store.claim_run(sweep_id, agent="h:1", host="box", gpu="0")
            store.record_history(run.id, [{"epoch": 1, "val_dice_coef": value}])
            attempt = Attempt(sweep_id, run.id, 1, "agent", "box", "0,1"[: 2 * gpus - 1], None, "finished", 0, True, 1,
                              float(gpus), (Segment(start, start + wall),), wall, lost)
            store.finish_attempt(run.id, "finished", attempt, exit_code=0, agent="h:1")
    report = reports.sweep_report(sweep_id, root=tmp_path)
    markdown = (tmp_path / sweep_id / "report" / "report.md").read_text()
    assert "## Cost" in markdown and "| 2 | 2 | 1.5 | 0.5 | 1 | 0 |" in markdown, markdown
    assert "| 1 | 0.4000 |" in markdown and "| 2 | 0.6000 |" in markdown  # best so far at 1 and 2 GPU-h
    text = reports.format_best_runs(report)
    assert "cost: 2 GPU-h in 2 attempt(s): 1.5 useful, 0.5 lost" in text
