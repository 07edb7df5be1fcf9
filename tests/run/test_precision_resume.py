"""Every precision trains, checkpoints and resumes exactly (tiny runs, CPU): a mixed-precision run
interrupted mid-epoch ends with the step count, metric rows and weights of an uninterrupted one
(the loss-scale state of mixed_float16 included: it is an optimizer variable of the checkpoint)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from harness import config as config_module
from harness import io
from harness.run import checkpoint, train
from tests.conftest import tiny_overrides
from tests.run.test_exact_resume import _interrupt_at, _weights


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_run_resumes_exactly(precision, synth_dir, prepared_cache, tmp_path, monkeypatch):
    values = tiny_overrides(synth_dir, prepared_cache, epochs=2, deterministic=True, val_fraction=0.25,
                            precision=precision)
    config = config_module.build_config(overrides=values)
    monkeypatch.delenv("HARNESS_PAUSE_AT", raising=False)
    straight = train.train(config, tmp_path / "straight", "straight", verbose=0)
    assert straight["status"] == "finished"

    run_dir = tmp_path / "interrupted"
    watcher = _interrupt_at(run_dir, "1:2", monkeypatch)
    summary = train.train(config, run_dir, "interrupted", verbose=0)
    watcher.join(timeout=30)
    assert (summary["status"], summary["exit_code"]) == ("preempted", 128 + signal.SIGTERM)
    monkeypatch.delenv("HARNESS_PAUSE_AT")
    assert train.train(config, run_dir, "interrupted", verbose=0)["status"] == "finished"

    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    reference = io.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [row["step"] for row in reference]
    for row, expected in zip(rows, reference):
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    for mine, theirs in zip(_weights(run_dir), _weights(tmp_path / "straight")):
        np.testing.assert_array_equal(mine, theirs)
    assert checkpoint.load_state(run_dir).epoch == 2
