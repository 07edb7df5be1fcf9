"""SLURM profiles (jobs/slurm.yaml): what they submit, and errors that name the file, profile and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.launch import profiles


def test_repository_profiles_load_and_map_to_submitit_parameters():
    loaded = profiles.load_profiles()
    assert "local" in loaded
    local = loaded["local"]
    parameters = local.submitit_parameters(parallel=3)
    assert parameters["slurm_partition"] == "debug"
    assert parameters["gpus_per_node"] == 1 and parameters["cpus_per_task"] == 1
    assert parameters["timeout_min"] == local.time_min and parameters["slurm_array_parallelism"] == 3
    assert local.submitit_parameters()["slurm_array_parallelism"] == local.parallel
    assert local.executor_arguments() == {"slurm_max_num_timeout": local.max_requeues}


def test_the_commented_cluster_example_is_a_valid_profile(tmp_path):
    text = (profiles.DEFAULT_PROFILES).read_text()
    lines = text.split("  # example-gpu-cluster:", 1)[1].splitlines()
    # Uncommenting the example (as jobs/README.md says to) gives a profile that loads.
    example = ["  example-gpu-cluster:"] + [line.replace("  #", "", 1) for line in lines[1:] if line.startswith("  #")]
    path = tmp_path / "slurm.yaml"
    path.write_text("profiles:\n" + "\n".join(example) + "\n")
    cluster = profiles.load_profile("example-gpu-cluster", path)
    assert cluster.partition == "gpu" and cluster.gpus_per_job == 1 and cluster.setup
    assert cluster.submitit_parameters()["slurm_additional_parameters"]["constraint"] == "a100"


def test_unknown_key_is_rejected_listing_the_valid_ones(tmp_path):
    path = tmp_path / "slurm.yaml"
    path.write_text("profiles:\n  mine:\n    partition: gpu\n    gpu_per_job: 2\n")
    with pytest.raises(ConfigError) as error:
        profiles.load_profiles(path)
    message = str(error.value)
    assert str(path) in message and "'mine'" in message and "'gpu_per_job'" in message
    assert "gpus_per_job" in message and "time_min" in message and "setup" in message


@pytest.mark.parametrize("body, fragment", [
    ("    time_min: soon\n", "'time_min' must be a whole number"),
    ("    parallel: 0\n", "'parallel' must be > 0"),
    ("    setup: [1, 2]\n", "'setup' must be a list of shell lines"),
    ("    sbatch: exclusive\n", "'sbatch' must be a mapping"),
    ("    signal_delay_s: 10\n", "'signal_delay_s' must be at least 30"),
    ("    time_min: 1\n    signal_delay_s: 60\n", r"'signal_delay_s' \(60 s\) must be shorter than the time limit"),
])
def test_bad_values_name_the_key(tmp_path, body, fragment):
    path = tmp_path / "slurm.yaml"
    path.write_text("profiles:\n  mine:\n" + body)
    with pytest.raises(ConfigError, match=fragment):
        profiles.load_profiles(path)


def test_missing_file_and_profile_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        profiles.load_profiles(tmp_path / "nope.yaml")
    path = tmp_path / "slurm.yaml"
    path.write_text("profiles:\n  a: {}\n  b: {partition: x}\n")
    with pytest.raises(ConfigError, match="no SLURM profile 'c'.*profiles there: a, b"):
        profiles.load_profile("c", path)
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        profiles.load_profiles(path)


def test_a_job_gives_up_on_its_runs_save_before_slurm_kills_it():
    """SLURM kills a job signal_delay_s after its warning: the wait for the run's checkpoint must end first,
    leaving time to requeue (the old fixed 240 s outlasted the local profile's 30 s)."""
    from harness.launch import slurm

    for profile in profiles.load_profiles().values():
        assert 0 < profile.save_timeout_s() <= profile.signal_delay_s - profiles.REQUEUE_MARGIN_S
    local = profiles.load_profile("local")
    plan = slurm.wandb_array_plan("team/proj/abc123", local, Path("/tmp/runs"))
    assert plan.save_timeout_s == local.save_timeout_s() == local.signal_delay_s - profiles.REQUEUE_MARGIN_S


def test_agents_with_a_local_sweep_under_slurm_is_an_error(tmp_path):
    import subprocess
    import sys

    from harness.sweep.store import Store

    with Store(tmp_path) as store:
        sweep_id = store.create_sweep({"method": "grid", "parameters": {"x": {"values": [1]}}})
    result = subprocess.run([sys.executable, "-m", "harness.launch", "--slurm", "local", "--agents", "3", "--sweep",
                             sweep_id, "--root", str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--agents with --slurm" in result.stderr and "--parallel" in result.stderr


def test_an_agent_array_larger_than_max_array_size_is_split_and_shares_parallel():
    """SLURM rejects an array index >= MaxArraySize (submitit#1624): the W&B agent array is split into arrays
    of at most that many tasks, each task keeping its own agent number, and `parallel` shared between them."""
    from harness.launch import slurm

    assert slurm.split_array(10, 4, 10) == ((0, 4, 4), (4, 4, 4), (8, 2, 2))
    assert slurm.split_array(10, 4, 3) == ((0, 4, 1), (4, 4, 1), (8, 2, 1))
    assert slurm.split_array(3, 1001, 2) == ((0, 3, 2),)
    assert slurm.split_array(2002, 1001, 2002) == ((0, 1001, 1001), (1001, 1001, 1001))
    for tasks, size, parallel in ((1, 1, 1), (7, 4, 2), (9, 2, 5), (5000, 1001, 64), (12, 5, 12), (13, 12, 6)):
        parts = slurm.split_array(tasks, size, parallel)
        indices = [part.first + index for part in parts for index in range(part.tasks)]
        assert indices == list(range(tasks))  # every agent once, in order
        assert all(1 <= part.tasks <= size and 1 <= part.parallel <= part.tasks for part in parts)
        assert sum(part.parallel for part in parts) == max(min(parallel, tasks), len(parts))
    with pytest.raises(Exception, match="MaxArraySize=0"):
        slurm.split_array(3, 0, 3)


def test_max_array_size_comes_from_the_profile_else_scontrol_else_slurms_default(monkeypatch):
    import subprocess

    from harness.launch import slurm

    local = profiles.load_profile("local")
    shown = "Configuration data as of 2024-01-01T00:00:00\nMaxArraySize            = 4\nMaxJobCount = 10000\n"
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, shown, ""))
    assert slurm.max_array_size(local) == 4
    assert slurm.max_array_size(profiles.Profile("big", max_array_size=50)) == 50  # the profile overrides it
    plan = slurm.wandb_array_plan("team/proj/abc123", local, Path("/tmp/runs"), tasks=6, parallel=3,
                                  max_array_size=slurm.max_array_size(local))
    assert plan.tasks == 6 and plan.arrays == ((0, 4, 2), (4, 2, 1))

    def no_scontrol(*args, **kwargs):
        raise FileNotFoundError("scontrol")

    monkeypatch.setattr(subprocess, "run", no_scontrol)
    assert slurm.max_array_size(local) == slurm.DEFAULT_MAX_ARRAY_SIZE == 1001
    assert slurm.wandb_array_plan("team/proj/abc123", local, Path("/tmp/runs"), tasks=6).arrays == ((0, 6, 4),)
