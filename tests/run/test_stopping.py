"""What a signal means to a run: preempt (come back) or stop (W&B is done with it), and SIGHUP/SIGQUIT
handled like SIGTERM (issue 13, defects 4 and 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.run import checkpoint, stopping
from tests.conftest import tiny_overrides
from tests.launch.conftest import wait_until

UNDER_WANDB_AGENT = {"WANDB_SWEEP_ID": "abc123"}
UNDER_LOCAL_AGENT = {"WANDB_RUN_GROUP": "local-1", "HARNESS_SWEEP_ID": "local-1"}


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGQUIT"])
def test_the_wandb_agents_terminating_signals_mean_stop_and_exit_0(name):
    signum = getattr(signal, name)
    assert stopping.meaning(signum, UNDER_WANDB_AGENT) == stopping.STOP
    assert stopping.exit_code(signum, UNDER_WANDB_AGENT) == 0


@pytest.mark.parametrize("name", ["SIGUSR1", "SIGUSR2", "SIGINT"])
def test_the_launchers_and_slurms_signals_mean_preempt_even_under_wandb(name):
    signum = getattr(signal, name)
    assert stopping.meaning(signum, UNDER_WANDB_AGENT) == stopping.PREEMPT
    assert stopping.exit_code(signum, UNDER_WANDB_AGENT) == 128 + signum


@pytest.mark.parametrize("environ", [{}, UNDER_LOCAL_AGENT], ids=["by-hand", "local-agent"])
def test_outside_wandb_every_signal_means_preempt_as_before(environ):
    for name in stopping.SIGNALS:
        signum = getattr(signal, name)
        assert stopping.meaning(signum, environ) == stopping.PREEMPT
        assert stopping.exit_code(signum, environ) == 128 + signum


def test_hup_and_quit_are_handled_and_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    # SIGQUIT at its default, as in a terminal: a shell without job control starts background commands
    # (a CI runner's, say) with SIGQUIT and SIGINT ignored, and the run rightly keeps those ignored.
    previous_quit = signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    try:
        stop = stopping.stop_flag().install()
        try:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGQUIT)
            assert stop.first == signal.SIGQUIT
        finally:
            stop.restore()
    finally:
        signal.signal(signal.SIGHUP, previous)
        signal.signal(signal.SIGQUIT, previous_quit)


@pytest.mark.slow
def test_sighup_saves_a_checkpoint_and_preempts_a_real_run(tmp_path, synth_dir, prepared_cache):
    """A closed terminal (SIGHUP) used to kill the run without a checkpoint or a summary."""
    root = tmp_path / "runs"
    arguments = [f"--{key}={value}" for key, value in
                 tiny_overrides(synth_dir, prepared_cache, epochs=200, steps_per_epoch=2).items()]
    # SIGHUP at its default in the child, as in a terminal: a test session started under nohup would pass its
    # ignored SIGHUP on, and the run rightly keeps ignoring a signal ignored at its start.
    process = subprocess.Popen([sys.executable, "-m", "harness.train", "--run_id", "hup1", "--root", str(root),
                                *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    folder = root / "single" / "hup1"
    try:
        wait_until(lambda: checkpoint.load_state(folder) is not None, 180, "the first checkpoint")
        process.send_signal(signal.SIGHUP)
        assert process.wait(timeout=120) == 128 + signal.SIGHUP
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["status"], summary["signal"], summary["exit_code"]) == ("preempted", "SIGHUP", 129)
    state = checkpoint.load_state(folder)
    # Mid-epoch, in validation (exact resume records "signal:SIGHUP in validation") or at an epoch's end.
    assert state.reason.startswith("signal:SIGHUP") or state.reason == "epoch_end", state.reason
    assert state.epoch == summary["epochs_completed"] < 200
