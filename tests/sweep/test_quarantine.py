"""The bad-place quarantine rule (harness.sweep.quarantine, pure, over attempt records) and the store's
use of it: one transaction with the run's final state, runs given back, kept across restarts, lifted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from harness.sweep import quarantine, store as store_module
from harness.sweep.attempts import Attempt, Segment
from harness.sweep.quarantine import newly_quarantined, place_of, runs_to_give_back
from harness.sweep.store import Store
from tests.sweep.conftest import fake_spec

SWEEP = "local-test0000"


def attempt(run_id: str, host: str, ended: float, outcome: str = "failed", new_epochs: int = 0,
            own_failure: bool = True, launcher: str = "slurm", gpu: str | None = None, number: int = 1) -> Attempt:
    return Attempt(SWEEP, run_id, number, launcher, host, gpu, None, outcome, 1 if outcome == "failed" else 0,
                   own_failure, new_epochs, 1.0, (Segment(ended - 1.0, ended, host),), 1.0, 1.0)


def ok(run_id: str, host: str, ended: float, **extra) -> Attempt:
    return attempt(run_id, host, ended, outcome="finished", new_epochs=3, **extra)


def test_three_failures_at_start_in_a_row_quarantine_a_node_while_another_succeeds():
    failures = [attempt(run, "node1", when) for run, when in (("a", 1), ("b", 2), ("c", 3))]
    assert newly_quarantined(failures, 3) == []  # no success anywhere: could be the sweep or the setup
    found = newly_quarantined(failures + [ok("d", "node2", 5)], 3)
    assert [(item.place, item.host, item.gpu, item.runs) for item in found] == [("node1", "node1", None, ("a", "b", "c"))]
    assert found[0].since == 5  # when the rule held: the third failure and a success elsewhere
    assert newly_quarantined(failures + [ok("d", "node2", 5)], 3, quarantined=["node1"]) == []
    assert newly_quarantined(failures[:2] + [ok("d", "node2", 5)], 3) == []  # two are not three
    assert newly_quarantined(failures + [ok("d", "node2", 5)], 0) == []  # 0: never


def test_a_success_on_the_node_ends_its_streak_and_outside_causes_count_for_nothing():
    records = [attempt("a", "node1", 1), attempt("b", "node1", 2), ok("c", "node1", 3), attempt("d", "node1", 4),
               attempt("e", "node1", 5), ok("f", "node2", 6)]
    assert newly_quarantined(records, 3) == []  # the streak since the success is 2
    # A stop, a lost node (own_failure False), a claim given back: neither failure nor success.
    neutral = [attempt("g", "node1", 7, outcome="stopped"), attempt("h", "node1", 8, outcome="preempted", own_failure=False),
               attempt("i", "node1", 9, outcome="released", own_failure=False)]
    assert newly_quarantined(records + neutral, 3) == []
    found = newly_quarantined(records + neutral + [attempt("j", "node1", 10, outcome="crashed")], 3)
    assert [item.runs for item in found] == [("d", "e", "j")]
    # A failure after logging an epoch is a success for the node (it trained there).
    assert attempt("k", "node1", 11, new_epochs=1).kind == "success"


def test_a_run_that_failed_at_start_elsewhere_first_is_the_suspect_not_the_node():
    records = [attempt("a", "node2", 1), attempt("a", "node1", 2, number=2), attempt("b", "node1", 3),
               attempt("c", "node1", 4), ok("d", "node3", 5)]
    assert newly_quarantined(records, 3) == []  # a's failure on node1 is a's: the streak is b, c
    assert [item.runs for item in newly_quarantined(records + [attempt("e", "node1", 6)], 3)] == [("b", "c", "e")]


def test_places_on_a_box_are_gpus_and_cpu_agents_have_none():
    assert place_of(attempt("a", "box", 1, launcher="agent", gpu="2")) == "box GPU 2"
    assert place_of(attempt("a", "box", 1, launcher="agent", gpu=None)) is None
    assert place_of(attempt("a", "box", 1, launcher="agent", gpu="")) is None
    assert place_of(attempt("a", "node7", 1, gpu="0")) == "node7"  # SLURM: the node, whatever GPU
    records = [attempt(run, "box", when, launcher="agent", gpu="2") for run, when in (("a", 1), ("b", 2), ("c", 3))]
    records.append(ok("d", "box", 4, launcher="agent", gpu="0"))
    (found,) = newly_quarantined(records, 3)
    assert (found.place, found.host, found.gpu) == ("box GPU 2", "box", "2")
    cpu = [attempt(run, "box", when, launcher="agent") for run, when in (("a", 1), ("b", 2), ("c", 3))]
    assert newly_quarantined(cpu + [ok("d", "box", 4, launcher="agent")], 3) == []


def test_runs_are_given_back_only_when_every_failure_at_start_was_at_a_quarantined_place():
    records = [attempt("a", "node1", 1), attempt("b", "node2", 2), attempt("b", "node1", 3, number=2),
               attempt("c", "node1", 4), ok("c", "node2", 5, number=2)]
    assert runs_to_give_back(records, ["node1"]) == ["a"]  # b also failed on node2; c succeeded since
    assert runs_to_give_back(records, ["node1", "node2"]) == ["a", "b"]


# --- the store ---------------------------------------------------------------------------------------
def _claimed(store: Store, sweep_id: str, count: int) -> list:
    return [store.claim_run(sweep_id, agent="slurm", host="login") for _ in range(count)]


def _ended(store: Store, run, host: str, outcome: str, when: float, epochs: int = 0):
    record = Attempt(run.sweep_id, run.id, run.attempts, "slurm", host, "0", "1", outcome, 1 if outcome == "failed" else 0,
                     True, epochs, 1.0, (Segment(when - 2.0, when, host),), 2.0, 0.0 if epochs else 2.0, accounting="sacct")
    return store.finish_attempt(run.id, outcome, record, exit_code=record.exit_code, agent="slurm")


def test_the_store_quarantines_gives_runs_back_in_the_same_transaction_and_keeps_it(tmp_path: Path):
    spec = fake_spec(parameters={"learning_rate": {"values": [0.1, 0.01, 0.001, 0.0001, 0.00001]}})
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(spec)
        a, b, c, d, e = _claimed(store, sweep_id, 5)
        for run, when in ((a, 1.0), (b, 2.0), (c, 3.0)):
            result = _ended(store, run, "node1", "failed", when)
            assert result.finished and result.quarantined == [] and result.given_back == []
        assert [run.state for run in store.runs(sweep_id)][:3] == ["failed"] * 3  # no evidence yet: as today
        result = _ended(store, d, "node2", "finished", 4.0, epochs=3)
        assert [found.place for found in result.quarantined] == ["node1"] and result.given_back == [a.id, b.id, c.id]
        states = {run.id: (run.state, run.failures) for run in store.runs(sweep_id)}
        assert states[a.id] == states[b.id] == states[c.id] == ("crashed", 0)  # resumable, no failure counted
        # A job sent there before the exclusion fails too: given back at once.
        late = _ended(store, e, "node1", "failed", 5.0)
        assert late.at_quarantined_place and late.given_back == [e.id] and late.quarantined == []
        again = store.claim_run(sweep_id, agent="slurm", host="login")
        assert again.id == a.id and again.attempts == 2
        assert [item.kind for item in store.attempts(sweep_id)] == ["start_failure"] * 3 + ["success", "start_failure"]
    with Store(tmp_path, read_only=True) as store:  # a restarted launcher, `harness status`
        (found,) = store.quarantined(sweep_id)
        assert found.place == "node1" and found.gpu is None and found.runs == (a.id, b.id, c.id)


def test_a_lifted_quarantine_forgets_the_old_failures(tmp_path: Path):
    spec = fake_spec(parameters={"learning_rate": {"values": [0.1, 0.01, 0.001, 0.0001, 0.00001, 0.2]}})
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(spec)
        runs = _claimed(store, sweep_id, 6)
        _ended(store, runs[0], "node2", "finished", 1.0, epochs=3)
        for index, run in enumerate(runs[1:4], start=2):
            _ended(store, run, "node1", "failed", float(index))
        assert [found.place for found in store.quarantined(sweep_id)] == ["node1"]
        assert store.lift_quarantine(sweep_id, "node1") and not store.lift_quarantine(sweep_id, "node1")
        assert store.quarantined(sweep_id) == []
        assert _ended(store, runs[4], "node1", "failed", 1e12).quarantined == []  # a new streak of one
        assert store.get_run(runs[4].id).state == "failed"


def test_an_old_store_gets_the_attempts_tables_and_a_read_only_look_at_one_without_them_works(tmp_path: Path):
    path = tmp_path / "sweeps.db"
    old_schema = store_module._SCHEMA.split("CREATE TABLE IF NOT EXISTS attempts")[0]
    database = sqlite3.connect(path)
    database.executescript(old_schema)
    database.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    database.execute("INSERT INTO sweeps (id, name, spec, state, created, updated, workdir) VALUES "
                     "('local-old00000', 'old', '{\"method\": \"grid\"}', 'running', 0, 0, '')")
    database.commit()
    database.close()
    with Store(tmp_path, read_only=True) as store:  # `harness status` before any writer opened it
        assert store.attempts("local-old00000") == [] and store.quarantined("local-old00000") == []
    with Store(tmp_path) as store:
        tables = {row[0] for row in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"attempts", "quarantine"} <= tables
        version = store._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == store_module._SCHEMA_VERSION == "2"


def test_exit_retired_is_not_a_restartable_or_usage_code():
    from harness.launch.local import NO_RESTART_CODES

    assert quarantine.EXIT_RETIRED not in NO_RESTART_CODES and quarantine.EXIT_RETIRED not in (75, 2)


@pytest.mark.parametrize("after", [0, 1])
def test_one_failure_quarantines_with_after_1_and_none_with_0(after: int):
    records = [attempt("a", "node1", 1), ok("b", "node2", 2)]
    assert len(newly_quarantined(records, after)) == after


def test_harness_sweep_unquarantine_lists_and_lifts(tmp_path: Path):
    from click.testing import CliRunner

    from harness.cli import main

    spec = fake_spec(parameters={"learning_rate": {"values": [0.1, 0.01, 0.001, 0.0001]}})
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(spec)
        runs = _claimed(store, sweep_id, 4)
        _ended(store, runs[0], "node2", "finished", 1.0, epochs=3)
        for index, run in enumerate(runs[1:], start=2):
            _ended(store, run, "node1", "failed", float(index))

    def invoke(*args: str):
        return CliRunner().invoke(main, ["sweep", "unquarantine", "--sweep", sweep_id, "--root", str(tmp_path), *args])

    listed = invoke()
    assert listed.exit_code == 0 and "node1: 3 run(s) in a row failed at start there" in listed.output
    unknown = invoke("node9")
    assert unknown.exit_code == 2 and "'node9' is not quarantined" in unknown.output and "'node1'" in unknown.output
    lifted = invoke("node1")
    assert lifted.exit_code == 0 and "node1 is given back" in lifted.output
    assert "nothing is quarantined" in invoke().output
