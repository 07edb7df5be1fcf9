"""The SQLite store and the engine bridge: claims, resumes, states, heartbeats, and many processes
claiming at once (real SQLite files, real `sweeps` engine; nothing mocked)."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from harness.errors import SweepError
from harness import runfolder
from harness.sweep import engine, outcome
from harness.sweep.states import ACTIVE_STATES
from harness.sweep.store import Store

GRID = {
    "method": "grid",
    "metric": {"name": "val_dice_coef", "goal": "maximize"},
    "parameters": {"learning_rate": {"values": [0.01, 0.001]}, "filters": {"values": [4, 8]}},
    "command": ["${env}", "${interpreter}", "-m", "harness.train", "${args}"],
}
RANDOM = {**GRID, "method": "random", "run_cap": 3}
BAYES = {
    "method": "bayes",
    "metric": {"name": "val_dice_coef", "goal": "maximize"},
    "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
                   "dropout": {"min": 0.0, "max": 0.5}},
    "command": GRID["command"],
}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "runs") as opened:
        yield opened


def _claim(store: Store, sweep_id: str, agent: str = "a1", **kwargs):
    return store.claim_run(sweep_id, agent=agent, host="h", gpu="0", **kwargs)


def test_create_and_read_a_sweep(store: Store, tmp_path: Path):
    sweep_id = store.create_sweep(GRID, workdir=tmp_path)
    assert re.fullmatch(r"local-[a-z0-9]{8}", sweep_id)
    sweep = store.get_sweep(sweep_id)
    assert (sweep.spec, sweep.state, sweep.workdir) == (GRID, "running", str(tmp_path))
    assert (sweep.metric_name, sweep.goal, sweep.method, sweep.run_cap) == ("val_dice_coef", "maximize", "grid", None)
    assert (store.root / "sweeps.db").exists()
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(SweepError, match=rf"unknown sweep id 'local-nope'.*known: {sweep_id}"):
        store.get_sweep("local-nope")


def test_outside_kills_and_claims_that_made_progress_spend_no_attempt(store: Store):
    """Attempts bound a run's own failures: claims that ended without a new epoch by the run's doing. A run
    whose holder was lost (or got a forwarded signal) 10 times, or that progressed each time, stays resumable."""
    sweep_id = store.create_sweep(GRID)
    run = _claim(store, sweep_id)
    for claim in range(2, 12):
        store.finish_run(run.id, "crashed", own_failure=False)  # e.g. its agent was killed -9
        again = _claim(store, sweep_id, max_attempts=3)
        assert (again.id, again.attempts, again.failures) == (run.id, claim, 0)
    for epoch in range(1, 6):  # killed by itself each time, but after a new epoch every time
        store.record_history(run.id, [{"epoch": index, "val_dice_coef": 0.1} for index in range(1, epoch + 1)])
        store.finish_run(run.id, "preempted")
        assert store.get_run(run.id).failures == 0
        assert _claim(store, sweep_id, max_attempts=3).id == run.id
    for failure in range(1, 4):  # no progress, its own doing: these count
        store.finish_run(run.id, "crashed")
        assert store.get_run(run.id).failures == failure
        if failure < 3:
            assert _claim(store, sweep_id, max_attempts=3).id == run.id
    assert _claim(store, sweep_id, max_attempts=3).id != run.id
    # --resume (the user's explicit request) gives the run its attempts back.
    assert store.revive(sweep_id) == [run.id]
    assert store.get_run(run.id).failures == 0


def test_a_store_of_the_first_schema_gets_the_new_columns(tmp_path: Path):
    import sqlite3

    from harness.sweep import store as store_module

    old_schema = store_module._SCHEMA.replace(",\n    failures INTEGER NOT NULL DEFAULT 0,\n    epochs_at_claim INTEGER NOT NULL DEFAULT 0", "")
    assert "failures" not in old_schema
    database = sqlite3.connect(tmp_path / "sweeps.db")
    database.executescript(old_schema)
    database.close()
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(GRID)
        run = _claim(store, sweep_id)
        store.finish_run(run.id, "crashed")
        assert store.get_run(run.id).failures == 1


def test_grid_hands_out_each_cell_once_and_finishes_only_when_nothing_runs(store: Store):
    sweep_id = store.create_sweep(GRID)
    runs = [_claim(store, sweep_id) for _ in range(4)]
    assert all(re.fullmatch(r"[a-z0-9]{8}", run.id) for run in runs)
    cells = {(run.config["learning_rate"], run.config["filters"]) for run in runs}
    assert cells == {(0.01, 4), (0.01, 8), (0.001, 4), (0.001, 8)}
    assert [run.seq for run in runs] == [1, 2, 3, 4]
    assert all(run.state == "running" and run.attempts == 1 and run.gpu == "0" for run in runs)
    assert _claim(store, sweep_id) is None
    assert store.get_sweep(sweep_id).state == "running"  # runs are still going
    for run in runs[:3]:
        store.finish_run(run.id, "finished", {"status": "finished"}, exit_code=0)
    store.finish_run(runs[3].id, "failed", exit_code=1)
    assert _claim(store, sweep_id) is None
    assert store.get_sweep(sweep_id).state == "finished"
    assert store.counts(sweep_id) == {"pending": 0, "running": 0, "finished": 3, "failed": 1, "crashed": 0,
                                      "preempted": 0, "stopped": 0}


def test_preempted_and_crashed_runs_are_resumed_first_with_same_id_and_config(store: Store):
    sweep_id = store.create_sweep(GRID)
    first, second = _claim(store, sweep_id), _claim(store, sweep_id)
    store.set_job_id(first.id, "1234")
    store.finish_run(first.id, "preempted", {"status": "preempted"}, exit_code=143)
    store.finish_run(second.id, "finished", exit_code=0)
    resumed = _claim(store, sweep_id, agent="a2")
    assert (resumed.id, resumed.config, resumed.attempts, resumed.agent) == (first.id, first.config, 2, "a2")
    assert resumed.state == "running" and resumed.job_id is None and resumed.exit_code is None
    fresh = _claim(store, sweep_id)
    assert fresh.id not in (first.id, second.id)


def test_a_run_out_of_attempts_is_not_resumed(store: Store):
    sweep_id = store.create_sweep(GRID)
    run = _claim(store, sweep_id)
    for attempt in range(2, 4):
        store.finish_run(run.id, "crashed")
        again = _claim(store, sweep_id, max_attempts=3)
        assert (again.id, again.attempts) == (run.id, attempt)
    store.finish_run(run.id, "crashed")
    others = [_claim(store, sweep_id, max_attempts=3) for _ in range(3)]
    assert run.id not in {other.id for other in others}
    for other in others:
        store.finish_run(other.id, "finished", exit_code=0)
    assert _claim(store, sweep_id, max_attempts=3) is None
    assert store.get_sweep(sweep_id).state == "finished"


def test_run_cap_limits_random_runs(store: Store):
    sweep_id = store.create_sweep(RANDOM)
    runs = [_claim(store, sweep_id) for _ in range(3)]
    assert all(runs) and _claim(store, sweep_id) is None
    assert store.get_sweep(sweep_id).state == "running"
    for run in runs:
        store.finish_run(run.id, "finished", exit_code=0)
    assert _claim(store, sweep_id) is None and store.get_sweep(sweep_id).state == "finished"
    with pytest.raises(SweepError, match="is finished"):
        store.set_sweep_state(sweep_id, "running")


def test_paused_and_stopped_sweeps_hand_out_nothing(store: Store):
    sweep_id = store.create_sweep(GRID)
    for state in ("paused", "stopped"):
        store.set_sweep_state(sweep_id, state)
        assert _claim(store, sweep_id) is None
        assert store.get_sweep(sweep_id).state == state
    store.set_sweep_state(sweep_id, "running")
    assert _claim(store, sweep_id) is not None
    with pytest.raises(SweepError, match="not one of"):
        store.set_sweep_state(sweep_id, "sleeping")


def test_mark_stale_crashes_only_runs_without_a_recent_heartbeat(store: Store):
    sweep_id = store.create_sweep(GRID)
    old, fresh = _claim(store, sweep_id), _claim(store, sweep_id)
    store._db.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time() - 100, old.id))
    assert store.mark_stale(sweep_id, timeout_s=30) == [old.id]
    assert store.get_run(old.id).state == "crashed" and store.get_run(fresh.id).state == "running"
    assert store.mark_stale(sweep_id, timeout_s=30) == []


def test_mark_stale_crashes_at_once_the_runs_of_an_agent_gone_from_this_host(store: Store):
    """A local agent's id is HOST:PID: on its own host a dead agent's run is crashed at once (its
    heartbeat is fresh); a live one's, another host's and a non-local holder's (SLURM) are left alone."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process (a reused pid would only delay this to the timeout)
    sweep_id = store.create_sweep(GRID)
    dead = _claim(store, sweep_id, agent=f"box1:{gone.pid}")
    alive = _claim(store, sweep_id, agent=f"box1:{os.getpid()}")
    elsewhere = _claim(store, sweep_id, agent=f"box2:{gone.pid}")
    cluster = _claim(store, sweep_id, agent="slurm")
    assert store.mark_stale(sweep_id, timeout_s=120) == []  # without host: heartbeats only
    assert store.mark_stale(sweep_id, timeout_s=120, host="box1") == [dead.id]
    states = {run.id: run.state for run in store.runs(sweep_id)}
    assert states == {dead.id: "crashed", alive.id: "running", elsewhere.id: "running", cluster.id: "running"}
    assert store.get_run(dead.id).failures == 0  # a kill from outside is not the run's failure


def test_heartbeat_replies_carry_on_stop_or_lost(store: Store):
    sweep_id = store.create_sweep(GRID)
    run = _claim(store, sweep_id, agent="a1")
    before = store.get_run(run.id).heartbeat
    time.sleep(0.01)
    assert store.heartbeat(run.id, agent="a1") is None
    assert store.get_run(run.id).heartbeat > before
    assert store.heartbeat(run.id, agent="someone-else") == "lost"
    store.request_stop(run.id)
    assert store.heartbeat(run.id, agent="a1") == "stop"
    other = _claim(store, sweep_id, agent="a1")
    store.set_sweep_state(sweep_id, "stopped")
    assert store.heartbeat(other.id, agent="a1") == "stop"
    store.finish_run(other.id, "crashed")
    assert store.heartbeat(other.id, agent="a1") == "lost"


def test_finish_run_by_an_agent_that_lost_the_run_changes_nothing(store: Store):
    sweep_id = store.create_sweep(GRID)
    run = _claim(store, sweep_id, agent="a1")
    store.finish_run(run.id, "crashed")
    taken = _claim(store, sweep_id, agent="a2")
    assert taken.id == run.id
    assert store.finish_run(run.id, "failed", agent="a1") is False
    assert store.get_run(run.id).state == "running"
    assert store.finish_run(run.id, "finished", {"status": "finished"}, exit_code=0, agent="a2") is True
    with pytest.raises(SweepError, match="state must be one of"):
        store.finish_run(run.id, "running")


def test_history_keeps_every_row_and_the_metric_values(store: Store):
    sweep_id = store.create_sweep({**GRID, "metric": {"name": "val_loss", "goal": "minimize"}})
    run = _claim(store, sweep_id)
    rows = [{"epoch": 1, "val_loss": 0.9, "loss": np.float32(1.0)}, {"epoch": 2, "val_loss": 0.5},
            {"epoch": 3, "val_loss": float("nan")}, {"epoch": 4, "val_loss": 0.7}]
    store.record_history(run.id, rows)
    saved = store.get_run(run.id, with_history=True)
    assert saved.metric_values == [0.9, 0.5, 0.7] and saved.best_metric == 0.5
    assert [row["epoch"] for row in saved.history] == [1, 2, 3, 4] and saved.history[0]["loss"] == 1.0
    assert store.get_run(run.id).history is None  # the light read skips it


def test_pending_claims_job_ids_and_reattaching(store: Store):
    sweep_id = store.create_sweep(GRID)
    queued = _claim(store, sweep_id, state="pending")
    assert queued.state == "pending"
    store.set_job_id(queued.id, "4242")
    assert [run.id for run in store.runs(sweep_id, states=ACTIVE_STATES) if run.job_id] == [queued.id]
    store.mark_started(queued.id, pid=99, host="node7", gpu="2")
    started = store.get_run(queued.id)
    assert (started.state, started.pid, started.host, started.gpu, started.job_id) == \
        ("running", 99, "node7", "2", "4242")
    store.finish_run(queued.id, "finished", exit_code=0)
    assert [run for run in store.runs(sweep_id, states=ACTIVE_STATES) if run.job_id] == []


def _race(root: str, sweep_id: str, agent: str, start: float, queue) -> None:
    store = Store(root)
    while time.time() < start:
        time.sleep(0.001)
    claimed = []
    while True:
        run = store.claim_run(sweep_id, agent=agent, host="h")
        if run is None:
            break
        claimed.append((run.id, run.config["learning_rate"], run.config["filters"], run.config["dropout"]))
    queue.put(claimed)


def test_many_processes_claiming_at_once_never_get_the_same_run(tmp_path: Path):
    spec = {**GRID, "parameters": {"learning_rate": {"values": [0.01, 0.001, 0.0001]},
                                   "filters": {"values": [4, 8]}, "dropout": {"values": [0.0, 0.1, 0.2, 0.3]}}}
    root = str(tmp_path / "runs")
    with Store(root) as store:
        sweep_id = store.create_sweep(spec)
    engine.propose(spec, [])  # import the engine once, before forking
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start = time.time() + 0.5
    workers = [context.Process(target=_race, args=(root, sweep_id, f"a{i}", start, queue)) for i in range(8)]
    for worker in workers:
        worker.start()
    claimed = [item for _ in workers for item in queue.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=30)
    assert len(claimed) == 24
    assert len({item[0] for item in claimed}) == 24
    assert len({item[1:] for item in claimed}) == 24  # every cell exactly once


# --- the engine bridge -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exit_code", "status", "stop", "preempt", "expected"),
    [
        (0, "finished", False, False, "finished"),
        (0, None, False, False, "finished"),  # a program that writes no summary.json
        (0, "preempted", False, False, "preempted"),
        (143, "preempted", False, False, "preempted"),
        (-9, None, False, False, "preempted"),
        (137, "running", False, False, "preempted"),
        (143, "preempted", True, False, "stopped"),
        (0, "finished", True, False, "finished"),  # it finished before the stop arrived
        (1, "failed", False, True, "preempted"),  # we forwarded a signal; its checkpoint decides later
        (1, "failed", False, False, "failed"),
        (2, None, False, False, "failed"),
    ],
)
def test_final_state(exit_code, status, stop, preempt, expected):
    summary = {"status": status} if status else None
    assert outcome.final_state(exit_code, summary, stop_requested=stop, preempt_requested=preempt) == expected


def test_engine_states(store: Store):
    sweep_id = store.create_sweep(GRID)
    run = _claim(store, sweep_id)
    mapping = {}
    for state in ("running", "finished", "failed", "crashed", "preempted", "stopped"):
        store._db.execute("UPDATE runs SET state = ? WHERE id = ?", (state, run.id))
        mapping[state] = engine.engine_state(store.get_run(run.id), max_attempts=5)
    assert mapping == {"running": "running", "finished": "finished", "failed": "failed", "crashed": "pending",
                       "preempted": "pending", "stopped": "killed"}
    store.record_history(run.id, [{"epoch": 1, "val_dice_coef": 0.3}])
    assert engine.engine_state(store.get_run(run.id), max_attempts=5) == "finished"  # stopped with a metric
    store._db.execute("UPDATE runs SET state = 'crashed', failures = 5 WHERE id = ?", (run.id,))
    assert engine.engine_state(store.get_run(run.id), max_attempts=5) == "crashed"


def _quality(learning_rate: float) -> float:
    return 1.0 / (1.0 + abs(math.log10(learning_rate) + 3.0))


def test_bayes_proposals_use_the_metrics_of_finished_runs(store: Store):
    """Same runs and same random seed: with their metrics fed back the engine proposes near the best
    observed learning rate; without them it predicts nothing and proposes elsewhere."""
    points = [(3e-2, 0.45), (1e-5, 0.1), (1e-4, 0.4), (1e-3, 0.2), (3e-3, 0.3), (1e-2, 0.0), (1e-1, 0.5),
              (3e-4, 0.25)]
    proposals = {}
    for informed in (True, False):
        sweep_id = store.create_sweep(BAYES)
        for index, (learning_rate, dropout) in enumerate(points):
            run = _claim(store, sweep_id)
            if index == 0:
                assert "no valid samples" in run.search_info["warnings"]
            # Fixed configs (not the engine's random first picks) keep the test deterministic.
            store._db.execute("UPDATE runs SET config = ? WHERE id = ?",
                              (json.dumps({"learning_rate": learning_rate, "dropout": dropout}), run.id))
            if informed:
                store.record_history(run.id, [{"epoch": 1, "val_dice_coef": _quality(learning_rate)}])
            store.finish_run(run.id, "finished", exit_code=0)
        np.random.seed(7)
        proposals[informed] = _claim(store, sweep_id)
    with_metrics, without = proposals[True], proposals[False]
    assert "no valid samples" not in with_metrics.search_info["warnings"]
    assert with_metrics.config != without.config
    # Fed back, the metrics peak at learning_rate 1e-3: the GP predicts a high value and proposes near it.
    assert -with_metrics.search_info["predicted_value"] > 0.5  # the engine minimises the negated metric
    assert abs(math.log10(with_metrics.config["learning_rate"]) + 3.0) < 1.0
    # Without them every run looks the same to the engine: it predicts nothing.
    assert without.search_info["predicted_value"] == 0.0


def test_hyperband_picks_the_lagging_running_run(store: Store):
    spec = {**GRID, "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2}}
    sweep_id = store.create_sweep(spec)
    good1, good2, lagging = (_claim(store, sweep_id) for _ in range(3))
    store.record_history(good1.id, [{"epoch": 1, "val_dice_coef": 0.5}, {"epoch": 2, "val_dice_coef": 0.6}])
    store.record_history(good2.id, [{"epoch": 1, "val_dice_coef": 0.45}])
    store.record_history(lagging.id, [{"epoch": 1, "val_dice_coef": 0.1}])
    store.finish_run(good1.id, "finished", exit_code=0)
    assert engine.runs_to_stop(spec, store.runs(sweep_id)) == {lagging.id}
    assert engine.runs_to_stop(GRID, store.runs(sweep_id)) == set()  # no early_terminate: never


def test_read_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path: Path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "v": 1}\n{"epoch": 2, "v": 2}\n{"epoch": 2, "v": 3}\n'
                                            '{"epoch": 3, "v": 4')  # a torn last line
    assert runfolder.read_history(tmp_path) == [{"epoch": 1, "v": 1}, {"epoch": 2, "v": 3}]
    assert runfolder.read_summary(tmp_path) is None


def test_claims_reuse_a_runs_engine_conversion_only_while_its_row_is_unchanged(store: Store):
    """The store keeps each run's `SweepRun` between claims (benchmarks/scale.py): what it hands the engine
    must always equal a fresh conversion, whatever changed in between (metrics, state, failures, config)."""
    sweep_id = store.create_sweep(BAYES)
    runs = [_claim(store, sweep_id) for _ in range(3)]
    sweep = store.get_sweep(sweep_id)

    def kept(max_attempts: int = 3) -> list:
        converted = store._converted_runs(store._db, sweep, max_attempts)
        assert converted == engine.engine_runs(store.runs(sweep_id), sweep.metric_name, max_attempts)
        return converted

    first = kept()
    store.record_history(runs[0].id, [{"epoch": 1, "val_dice_coef": 0.4}])
    store.finish_run(runs[0].id, "finished", exit_code=0)
    store.finish_run(runs[1].id, "crashed", exit_code=1)  # one failure of its own: pending to the engine
    second = kept()
    assert second[2] is first[2] and second[0] is not first[0]  # only changed rows are converted again
    assert second[1].state == "pending" and kept(max_attempts=1)[1].state == "crashed"
    store._db.execute("UPDATE runs SET config = ? WHERE id = ?",
                      (json.dumps({"learning_rate": 0.01, "dropout": 0.1}), runs[2].id))
    assert kept()[2].config == {"learning_rate": {"value": 0.01}, "dropout": {"value": 0.1}}


def test_unfinished_counts_active_runs_and_those_left_to_resume(store: Store):
    sweep_id = store.create_sweep(GRID)
    runs = [_claim(store, sweep_id) for _ in range(4)]
    assert store.unfinished(sweep_id) == (4, 0)
    store.finish_run(runs[0].id, "finished", exit_code=0)
    store.finish_run(runs[1].id, "crashed", exit_code=1)
    store.finish_run(runs[2].id, "preempted", exit_code=None, own_failure=False)
    assert store.unfinished(sweep_id) == (1, 2)
    assert store.unfinished(sweep_id, max_attempts=1) == (1, 1)  # the crashed run's one failure uses it up
    assert store.unfinished(store.create_sweep(GRID)) == (0, 0)
