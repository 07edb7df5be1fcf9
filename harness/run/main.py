"""The command line of one training run: `python -m harness.train` and `harness train` call `main`.

It says which run this is (run id, sweep, runs root), builds the config from the file, the
`--key=value` arguments and, under `wandb agent`, wandb.config, takes the run folder's lease before
anything is written there, and hands over to harness.run.train.train.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from harness import config as config_module
from harness import runfolder
from harness.config import Config
from harness.errors import HarnessError
from harness.run import identity
from harness.run import lease as lease_module
from harness.run import stopping, tracking
from harness.run.train import train


@dataclasses.dataclass
class _Request:
    """What the command line asks for: which run, where, and the config values given explicitly."""

    config_file: str | None
    overrides: dict[str, str]
    run_id: str
    sweep_id: str | None
    run_dir: Path
    explicit: set[str]  # the keys given (file, arguments, wandb.config): on resume they must match
    restart: bool


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.train [--config FILE] [--run-id ID] [--root DIR] [--sweep-id ID] [--restart] [--key=value ...]`.

    Config keys are given as --key=value, e.g. `--data-dir=data --image-size=64x96` (snake_case, as
    W&B's ${args} writes it, is accepted too). Exit code: 0 finished (or already finished,
    or stopped by the W&B agent), 2 bad config/arguments (also: CUDA_VISIBLE_DEVICES names a GPU the
    framework cannot see, without --allow-cpu; docs/gpu.md), 128 + signal when preempted by a signal after
    saving a checkpoint, 75 when another live process holds the run folder's lease (nothing was touched;
    see harness/run/lease.py), 1 failed (also: a damaged checkpoint, named in the message with how to
    recover; `--restart` trains the run again from epoch 0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(main.__doc__)
        print("Config keys (see `harness config`):", ", ".join(config_module.config_keys()))
        return 0
    wandb_run = None
    held: lease_module.Lease | None = None
    try:
        request = _request(argv)
        config = config_module.build_config(request.config_file, request.overrides)
        # The run folder's lease before anything writes into the folder (wandb.init does, below).
        held = lease_module.Lease.acquire(request.run_dir)
        if tracking.under_wandb_sweep():
            wandb_run = tracking.start_wandb(config.to_dict(), request.run_dir, request.run_id,
                                             config.wandb_project, config.wandb_entity)
            config = _with_sweep_values(request, config, wandb_run)
        config = identity.resolve_config(request.run_dir, config, request.explicit)
        if wandb_run is not None:
            tracking.record_config(wandb_run, {**config.to_dict(), "run_id": request.run_id})
        print(f"run {request.run_id}: {request.run_dir}", flush=True)
        handed_over, wandb_run = wandb_run, None  # train() finishes it from here on
        summary = train(config, request.run_dir, request.run_id, request.sweep_id, wandb_run=handed_over,
                        restart=request.restart, lease=held)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        if wandb_run is not None:
            wandb_run.finish(exit_code=error.exit_code)
        return error.exit_code
    finally:
        if held is not None:
            held.release()
    if summary.get("status") in (stopping.PREEMPT, stopping.STOP):
        return int(summary.get("exit_code", 1))
    return 0 if summary.get("status") == "finished" else 1


def _request(argv: list[str]) -> _Request:
    """The run the arguments name: ids from the arguments, else the environment, else a new run id."""
    overrides, control = config_module.parse_cli_args(argv)
    config_file = control.get("config")
    run_id = identity.check_id(control.get("run_id") or os.environ.get("WANDB_RUN_ID") or identity.new_run_id(),
                               "run_id")
    sweep_id = control.get("sweep_id") or os.environ.get("HARNESS_SWEEP_ID") or os.environ.get("WANDB_SWEEP_ID") or None
    if sweep_id:
        identity.check_id(sweep_id, "sweep_id")
    explicit = set(overrides)
    if config_file:
        explicit.update(config_module.load_file(config_file))
    return _Request(
        config_file=config_file, overrides=overrides, run_id=run_id, sweep_id=sweep_id,
        run_dir=runfolder.run_dir(control.get("root"), sweep_id, run_id), explicit=explicit,
        restart=str(control.get("restart", "false")).lower() in ("true", "1", "yes"),
    )


def _with_sweep_values(request: _Request, config: Config, wandb_run: Any) -> Config:
    """The agent's parameters arrive as wandb.config: they win over the file and the arguments."""
    if wandb_run is None:
        return config
    sweep_values = {key: value for key, value in dict(wandb_run.config).items()
                    if not key.startswith("_") and key in config_module.config_keys()}
    request.explicit.update(sweep_values)
    return config_module.build_config(request.config_file, request.overrides, sweep_values)
