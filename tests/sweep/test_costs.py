"""Cost accounting (harness.sweep.attempts, pure): wall time, GPU-hours, work lost to interruptions, the
best metric against the GPU-hours spent; and what `harness status` says of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sweep import status
from harness.sweep.attempts import Attempt, Segment, best_by_cost, cost_axis, gpu_count, segment_costs, sweep_cost
from harness.sweep.store import Store
from tests.sweep.conftest import fake_spec


def test_gpu_count_of_cuda_visible_devices():
    assert [gpu_count(value) for value in ("0", "0,1", "", None, "-1", "3, 5")] == [1, 2, 0, 0, 0, 2]


def test_a_finished_segment_loses_nothing_an_interrupted_one_the_time_since_its_last_epoch():
    assert segment_costs([Segment(100.0, 130.0)], [110.0, 120.0, 129.5], finished=True) == (30.0, 0.0, 3)
    # Killed 7 s after its second epoch: 7 s lost; rows before the segment (an earlier attempt's) are not its.
    assert segment_costs([Segment(100.0, 127.0)], [90.0, 110.0, 120.0], finished=False) == (27.0, 7.0, 2)
    # No epoch at all: the whole segment is lost (a failure at start).
    assert segment_costs([Segment(100.0, 104.0)], [], finished=False) == (4.0, 4.0, 0)
    # A requeued job (node lost after epoch 2, resumed, finished): the first start lost its last 3 s.
    wall, lost, last = segment_costs([Segment(0.0, 23.0, "node2"), Segment(40.0, 60.0, "node1")],
                                     [10.0, 20.0, 50.0, 59.0], finished=True)
    assert (wall, lost, last) == (43.0, 3.0, 2)
    # sacct's End is cut to whole seconds: an epoch row just past it belongs to the segment.
    assert segment_costs([Segment(0.0, 10.0)], [10.4], finished=False) == (10.0, 0.0, 1)


def _attempt(run_id: str, gpus: float, wall: float, lost: float, ended: float, best: float | None) -> Attempt:
    return Attempt("local-x", run_id, 1, "agent", "box", "0" if gpus else None, None, "finished", 0, True, 1, gpus,
                   (Segment(ended - wall, ended),), wall, lost, best_metric=best)


def test_sweep_cost_useful_and_lost_gpu_hours_and_cpu_wall_hours():
    attempts = [_attempt("a", 1, 3600, 0, 3600, 0.5), _attempt("b", 2, 1800, 900, 5400, 0.4),
                _attempt("c", 0, 7200, 0, 9000, 0.7)]
    cost = sweep_cost(attempts)
    assert cost.gpu_hours == pytest.approx(2.0) and cost.lost_gpu_hours == pytest.approx(0.5)
    assert cost.useful_gpu_hours == pytest.approx(1.5) and cost.interrupted == 1
    assert cost.cpu_wall_hours == pytest.approx(2.0)  # a CPU attempt: 0 GPU-hours, its wall time shown apart
    # The best so far against the GPU-hours spent when it was reached (the CPU attempt spent none).
    assert best_by_cost(attempts, "maximize") == [(1.0, 0.5, "a"), (2.0, 0.7, "c")]
    assert best_by_cost(attempts, "minimize") == [(1.0, 0.5, "a"), (2.0, 0.4, "b")]
    assert cost_axis(attempts) == "GPU-h" and cost_axis(attempts[2:]) == "wall-h"
    assert best_by_cost(attempts[2:], "maximize") == [(2.0, 0.7, "c")]  # a CPU sweep: wall-hours


def test_status_shows_the_cost_and_the_quarantined_places(tmp_path: Path):
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(fake_spec(parameters={"learning_rate": {"values": [0.1, 0.01, 0.001, 0.0001]}}))
        runs = [store.claim_run(sweep_id, agent="h:1", host="box", gpu=gpu) for gpu in ("0", "2", "2", "2")]
        store.record_history(runs[0].id, [{"epoch": 1, "val_dice_coef": 0.6}])
        good = Attempt(sweep_id, runs[0].id, 1, "agent", "box", "0", None, "finished", 0, True, 1, 1.0,
                       (Segment(0.0, 36.0),), 36.0, 0.0)
        store.finish_attempt(runs[0].id, "finished", good, exit_code=0, agent="h:1")
        for index, run in enumerate(runs[1:], start=1):
            bad = Attempt(sweep_id, run.id, 1, "agent", "box", "2", None, "failed", 1, True, 0, 1.0,
                          (Segment(40.0 + index, 41.8 + index),), 1.8, 1.8)
            store.finish_attempt(run.id, "failed", bad, exit_code=1, agent="h:1")
        text = status.status_text(store, sweep_id)
    assert "cost: 0.0115 GPU-h in 4 attempt(s): 0.01 useful, 0.0015 lost (3 attempt(s) cut short)" in text, text
    assert f"best val_dice_coef by GPU-h spent: 0.6 at 0.01 (run {runs[0].id})" in text
    assert "quarantined: box GPU 2: 3 run(s) in a row failed at start there" in text and "its agents claim no runs" in text
    assert "runs: 1 finished, 3 crashed" in text  # given back
    # The lines come before the runs table (whose rows are the last lines).
    lines = text.splitlines()
    assert lines.index(next(line for line in lines if line.startswith("#"))) > lines.index(
        next(line for line in lines if line.startswith("quarantined:")))
