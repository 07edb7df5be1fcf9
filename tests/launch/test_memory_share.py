"""GPU memory shares from the box launcher (issue 21): with `--agents-per-gpu N` > 1 every run started on
a shared GPU gets its 0.9/N share of the card in its environment (harness.run.device), through the real
launcher, its agents and their runs (tests/fakes/fake_train.py records what it was given; GPU ids are only
CUDA_VISIBLE_DEVICES here)."""

from __future__ import annotations

import json

from harness.launch import local
from harness.run import device
from harness.sweep.store import Store
from tests.launch.conftest import create_sweep, fake_sweep_spec, launch


def test_two_agents_on_one_gpu_give_each_run_its_memory_share(tmp_path):
    root = tmp_path / "runs"
    sweep_id = create_sweep(root, fake_sweep_spec([0.1, 0.2], epochs=1, epoch_s=0.05))
    log = tmp_path / "launch.log"
    process = launch(["--gpus", "0", "--agents-per-gpu", "2", "--sweep", sweep_id, "--stagger", "0"], root, log)
    assert process.wait(timeout=120) == 0, log.read_text()
    with Store(root) as store:
        runs = store.runs(sweep_id)
    assert [run.state for run in runs] == ["finished", "finished"]
    expected = device.memory_share_environment(2, "tensorflow")
    assert expected == {device.MEMORY_FRACTION_ENV: "0.45", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    for run in runs:
        received = json.loads((root / sweep_id / run.id / "fake_env.json").read_text())
        assert received["CUDA_VISIBLE_DEVICES"] == "0"
        assert {name: received.get(name) for name in expected} == expected, received


def test_a_gpu_of_its_own_or_the_cpu_gets_no_share(tmp_path, monkeypatch):
    monkeypatch.delenv(device.MEMORY_FRACTION_ENV, raising=False)
    whole = local.plan_agents("local-abcd1234", ["0", "1"], tmp_path, python="/py")
    cpu = local.plan_agents("local-abcd1234", None, tmp_path, agents=2, python="/py")
    for slot in whole + cpu:
        assert device.MEMORY_FRACTION_ENV not in slot.env and "TF_FORCE_GPU_ALLOW_GROWTH" not in slot.env
    shared = local.plan_agents("local-abcd1234", ["0"], tmp_path, agents_per_gpu=3, python="/py")
    assert [slot.env[device.MEMORY_FRACTION_ENV] for slot in shared] == ["0.30"] * 3
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the backend the agents' runs will use decides the switches
    [jax_slot, _] = local.plan_agents("local-abcd1234", ["0"], tmp_path, agents_per_gpu=2, python="/py")
    assert jax_slot.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45" and "TF_FORCE_GPU_ALLOW_GROWTH" not in jax_slot.env
