"""SLURM accounting of a sweep's jobs (harness.launch.accounting, no cluster needed): sacct's rows -> an attempt's
segments, node and GPUs; the quarantine key of a profile; the --exclude the next job is submitted with."""

from __future__ import annotations

from datetime import datetime

import pytest

from harness.errors import ConfigError
from harness.launch import accounting, profiles
from harness.sweep.attempts import Attempt, Segment
from harness.sweep.store import Store
from tests.sweep.conftest import fake_spec


def _local(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


SACCT = """\
4711|cs-abc12345|NODE_FAIL|node2|2026-12-06T10:00:00|2026-12-06T10:00:23|23|billing=1,cpu=1,gres/gpu=1,mem=2G,node=1
4711|cs-abc12345|COMPLETED|node1|2026-12-06T10:00:40|2026-12-06T10:01:00|20|billing=1,cpu=1,gres/gpu=1,mem=2G,node=1
4712|cs-def67890|CANCELLED by 0|None assigned|None|2026-12-06T10:02:00|0|billing=1,cpu=1,mem=2G,node=1
4713|allocation|RUNNING|node3|2026-12-06T10:03:00|Unknown|5|cpu=1,gres/gpu:a100=2,node=1
"""


def test_sacct_rows_become_segments_node_and_gpus():
    jobs = accounting.parse_sacct(SACCT)
    assert sorted(jobs) == ["4711", "4712", "4713"] and len(jobs["4711"]) == 2
    assert accounting.settled(jobs["4711"]) and accounting.settled(jobs["4712"])
    assert not accounting.settled(jobs["4713"]) and not accounting.settled([])  # a placeholder, still running
    segments, host, gpus = accounting.job_segments(jobs["4711"])
    assert segments == (Segment(_local("2026-12-06T10:00:00"), _local("2026-12-06T10:00:23"), "node2"),
                        Segment(_local("2026-12-06T10:00:40"), _local("2026-12-06T10:01:00"), "node1"))
    assert host == "node1" and gpus == 1
    assert accounting.job_segments(jobs["4712"]) == ((), None, None)  # cancelled while queued: it cost nothing
    assert accounting.job_segments(jobs["4713"])[2] == 2  # a typed GPU (gres/gpu:a100=2)


def test_the_profile_key_quarantine_after(tmp_path):
    assert profiles.load_profile("local").quarantine_after == 3
    path = tmp_path / "slurm.yaml"
    path.write_text("profiles:\n  mine:\n    quarantine_after: 0\n  bad:\n    quarantine_after: -1\n")
    with pytest.raises(ConfigError, match="'quarantine_after' must be >= 0"):
        profiles.load_profiles(path)
    path.write_text("profiles:\n  mine:\n    quarantine_after: 0\n")
    assert profiles.load_profile("mine", path).quarantine_after == 0
    path.write_text("profiles:\n  mine:\n    quarantine_after: three\n")
    with pytest.raises(ConfigError, match="'quarantine_after' must be a whole number"):
        profiles.load_profiles(path)


def test_quarantined_nodes_join_the_profiles_own_exclude_in_the_job_script(tmp_path):
    import submitit.slurm.slurm

    profile = profiles.Profile("site", sbatch={"exclude": "node[01-02]", "constraint": "a100"})
    assert profile.exclude() == "node[01-02]" and profile.exclude(["node9", "node3"]) == "node[01-02],node3,node9"
    assert profiles.Profile("plain").exclude(["node3"]) == "node3" and profiles.Profile("plain").exclude() == ""
    with Store(tmp_path) as store:
        sweep_id = store.create_sweep(fake_spec(parameters={"learning_rate": {"values": [0.1, 0.01, 0.001, 0.0001]}}))
        ledger = accounting.Ledger(store, sweep_id, profile, echo=lambda line: None)
        assert ledger.submit_parameters() == {"slurm_additional_parameters": {"exclude": "node[01-02]", "constraint": "a100"}}
        runs = [store.claim_run(sweep_id, agent="slurm", host="login") for _ in range(4)]
        for index, run in enumerate(runs):
            host, outcome, epochs = ("node3", "finished", 2) if index == 0 else ("node9", "failed", 0)
            store.finish_attempt(run.id, outcome, Attempt(sweep_id, run.id, 1, "slurm", host, "0", str(index), outcome,
                                                          0, True, epochs, 1.0, (Segment(index, index + 1.0),), 1.0, 0.0),
                                 agent="slurm")
        lines: list[str] = []
        accounting.Ledger(store, sweep_id, profile, echo=lines.append)  # a restarted launcher
        assert lines and "node node9 is quarantined for this sweep" in lines[0]
        parameters = ledger.submit_parameters()
    assert parameters["slurm_additional_parameters"]["exclude"] == "node[01-02],node9"
    # submitit's own sbatch script writer (its executor needs srun, which this machine may lack).
    script = submitit.slurm.slurm._make_sbatch_string(
        "python -c pass", tmp_path / "slurm", **{key.removeprefix("slurm_"): value for key, value in parameters.items()})
    # (submitit shell-quotes a value with brackets; sbatch reads the quotes off)
    assert "#SBATCH --exclude='node[01-02],node9'" in script and "#SBATCH --constraint=a100" in script
