"""Click commands of the sweep area: `harness sweep create|validate|stop|pause|resume`, `harness agent`,
`harness status` (registered on the `harness` group by harness.cli). `python -m harness.sweep FILE`
is `harness sweep create FILE`. Other areas may add subcommands to `sweep_group` (e.g. `report`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path

import click

from harness.cli_common import root_option, store_option, sweep_option
from harness.errors import SweepError
from harness.sweep.ids import is_wandb_sweep


@click.group("sweep")
def sweep_group() -> None:
    """Create, check and control sweeps (W&B sweep YAMLs, run locally or on W&B)."""


@sweep_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@root_option
@store_option
@click.option("--backend", type=click.Choice(["local", "wandb"]), default="local", show_default=True,
              help="local: this machine's store, no server needed; wandb: create it on W&B (needs a login)")
@click.option("--project", default=None, help="W&B project (--backend wandb; default: the spec's or 'cloudsweep')")
@click.option("--entity", default=None, help="W&B entity (--backend wandb; default: the account's)")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="fix a parameter to one value (repeatable), e.g. --set data_dir=/data/clouds")
@click.option("--name", default=None, help="a name shown by `harness status` (default: the id)")
def create_command(file: Path, root: str | None, backend: str, project: str | None, entity: str | None,
                   assignments: tuple[str, ...], name: str | None) -> None:
    """Check a sweep FILE and register it; prints the sweep id on stdout, how to start agents on stderr."""
    from harness.sweep import spec as sweep_spec

    spec = sweep_spec.apply_sets(sweep_spec.load_spec(file), assignments)
    problems = sweep_spec.locate(sweep_spec.validate_spec(spec), file)
    if problems:
        raise SweepError(f"{file} has {len(problems)} problem(s) (nothing was created):\n  " + "\n  ".join(problems))
    if backend == "wandb":
        sweep_path = create_wandb_sweep(spec, project=project, entity=entity)
        click.echo(f"created W&B sweep {sweep_path}", err=True)
        click.echo(f"start agents:  wandb agent --forward-signals {sweep_path}", err=True)
        click.echo(f"one per GPU:   python -m harness.launch --gpus 0,1 --sweep {sweep_path}", err=True)
        click.echo(sweep_path)
        return
    from harness.sweep.store import Store

    with Store(root) as store:
        sweep_id = store.create_sweep(spec, name=name, workdir=os.getcwd())
        root_text = str(store.root)
    from harness.sweep.engine import grid_size

    size = grid_size(spec)
    what = f"{spec['method']}" + (f", {size} runs" if size else "") + (f", run_cap {spec['run_cap']}" if spec.get("run_cap") else "")
    root_arg = f" --root {root}" if root else ""
    click.echo(f"created sweep {sweep_id} ({what}) in {root_text}", err=True)
    click.echo(f"start an agent: harness agent {sweep_id}{root_arg}", err=True)
    click.echo(f"one per GPU:    python -m harness.launch --gpus 0,1 --sweep {sweep_id}{root_arg}", err=True)
    click.echo(f"watch it:       harness status {sweep_id}{root_arg} --watch", err=True)
    click.echo(sweep_id)


def create_wandb_sweep(spec: dict, project: str | None, entity: str | None) -> str:
    """Create the sweep on W&B (`wandb.sweep`) and return `entity/project/id` (or `project/id`).

    `project/id` (no --entity, none in the spec) is the account's default entity, as for `wandb agent`;
    `harness.launch --sweep` takes both forms.
    """
    import wandb

    project = project or spec.get("project") or "cloudsweep"
    entity = entity or spec.get("entity")
    try:
        # wandb.sweep prints its own lines on stdout; this command's stdout is the sweep path alone.
        with contextlib.redirect_stdout(sys.stderr):
            sweep_id = wandb.sweep(sweep=spec, project=project, entity=entity)
    except Exception as error:  # noqa: BLE001 - any failure here means: no usable W&B server
        raise SweepError(
            f"W&B could not create the sweep ({type(error).__name__}: {error}). W&B sweeps need a W&B "
            "server and a login (`wandb login`, or WANDB_API_KEY); without them use --backend local"
        ) from None
    if not sweep_id:
        raise SweepError("W&B did not return a sweep id; check `wandb login` and the project/entity")
    return "/".join(part for part in (entity, project, sweep_id) if part)


@sweep_group.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def validate_command(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Check sweep FILES against W&B's sweep schema and the training config; exit 2 on any problem."""
    from harness.sweep import spec as sweep_spec

    bad = 0
    for file in files:
        try:
            problems = sweep_spec.validate_file(file)
        except SweepError as error:
            problems = [str(error)]
        if problems:
            bad += 1
            for problem in problems:
                click.echo(problem)
        else:
            spec = sweep_spec.load_spec(file)
            click.echo(f"{file}: ok ({spec.get('method')}, {len(spec.get('parameters') or {})} parameters)")
    if bad:
        click.echo(f"error: {bad} of {len(files)} sweep file(s) have problems", err=True)
        ctx.exit(2)


def _state_command(name: str, state: str, doc: str):
    @sweep_group.command(name, help=doc)
    @sweep_option()
    @root_option
    @store_option
    def command(sweep_id: str, root: str | None) -> None:
        from harness.sweep.store import Store

        with Store(root) as store:
            sweep = store.get_sweep(sweep_id)
            if state == "running" and sweep.state == "running":
                click.echo(f"sweep {sweep_id} is already running")
                return
            sweep = store.set_sweep_state(sweep_id, state)
            counts = store.counts(sweep_id)
        active = counts["running"] + counts["pending"]
        notes = {
            "paused": f"no new runs are handed out; {active} active run(s) go on",
            "stopped": f"no new runs are handed out; agents stop their {active} active run(s)",
            "running": "runs are handed out again",
        }
        click.echo(f"sweep {sweep_id} is {sweep.state}: {notes[state]}")

    return command


@sweep_group.command("unquarantine")
@sweep_option(bare=False)
@click.argument("place", required=False)
@root_option
@store_option
def unquarantine_command(sweep_id: str, place: str | None, root: str | None) -> None:
    """Give a quarantined PLACE (a node, or `HOST GPU G`) back to the sweep (--sweep ID); without PLACE: list them.

    A running SLURM launcher sends jobs there again from its next submission; on a box, restart the launcher
    (`--resume`) to start that GPU's agent again.
    """
    from harness.sweep.store import Store

    with Store(root) as store:
        store.get_sweep(sweep_id)
        if place is None:
            found = store.quarantined(sweep_id)
            click.echo("\n".join(item.describe() for item in found) or f"nothing is quarantined for sweep {sweep_id}")
            return
        if not store.lift_quarantine(sweep_id, place):
            known = ", ".join(repr(item.place) for item in store.quarantined(sweep_id)) or "none"
            raise SweepError(f"{place!r} is not quarantined for sweep {sweep_id} (quarantined: {known})")
    click.echo(f"{place} is given back to sweep {sweep_id}")


_state_command("stop", "stopped", "Stop a sweep (--sweep ID): no new runs, and agents stop their running runs.")
_state_command("pause", "paused", "Pause a sweep (--sweep ID): no new runs; running runs go on.")
_state_command("resume", "running", "Resume a paused or stopped sweep (--sweep ID).")


@click.command("agent")
@sweep_option(help_text="the local sweep to run (local-xxxxxxxx, from `harness sweep create`)")
@click.option("--count", type=click.IntRange(min=1), default=None, help="stop after this many runs")
@root_option
@store_option
@click.option("--gpu", default=None, help="CUDA_VISIBLE_DEVICES for the runs (default: the agent's own)")
@click.option("--heartbeat", "heartbeat_s", type=float, default=None, help="seconds between heartbeats [10]")
@click.option("--stale-after", "stale_after_s", type=float, default=None,
              help="a run whose heartbeat is older than this many seconds is crashed and resumed [120]")
@click.option("--poll", "poll_s", type=float, default=None, help="seconds between checks of a run [0.5]")
@click.option("--max-attempts", type=click.IntRange(min=1), default=None,
              help="claims per run, first one included, before a crashed run is given up [5]")
@click.option("--kill-grace", "kill_grace_s", type=float, default=None,
              help="seconds a run gets to exit after SIGTERM before SIGKILL [120]")
@click.option("--quarantine-after", type=click.IntRange(min=0), default=None,
              help="retire this agent's GPU for the sweep after this many runs in a row failed at start on it "
                   "while runs succeed elsewhere (0: never) [3]")
@click.pass_context
def agent_command(ctx: click.Context, sweep_id: str, count: int | None, root: str | None, gpu: str | None,
                  heartbeat_s: float | None, stale_after_s: float | None, poll_s: float | None,
                  max_attempts: int | None, kill_grace_s: float | None, quarantine_after: int | None) -> None:
    """Run runs of a local sweep (--sweep ID), one at a time, until it ends (or --count runs)."""
    from harness.sweep import agent

    if is_wandb_sweep(sweep_id):
        raise SweepError(f"{sweep_id} looks like a W&B sweep path: run it with `wandb agent --forward-signals "
                         f"{sweep_id}` or `python -m harness.launch --gpus 0 --sweep {sweep_id}`")
    options = {"heartbeat_s": heartbeat_s, "stale_after_s": stale_after_s, "poll_s": poll_s,
               "max_attempts": max_attempts, "kill_grace_s": kill_grace_s, "quarantine_after": quarantine_after}
    code = agent.run_agent(sweep_id, root=root, count=count, gpu=gpu,
                           **{key: value for key, value in options.items() if value is not None})
    ctx.exit(code)


@click.command("status")
@sweep_option(required=False, help_text="the local sweep to show (default: list the store's sweeps)")
@root_option
@store_option
@click.option("--watch", is_flag=True, help="refresh until the sweep is over (Ctrl-C to leave)")
@click.option("--interval", type=float, default=2.0, show_default=True, help="seconds between refreshes")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="show only the best N runs")
@click.option("--best", is_flag=True, help="print only the folder of the best finished run (for scripts)")
def status_command(sweep_id: str | None, root: str | None, watch: bool, interval: float, limit: int | None,
                   best: bool) -> None:
    """Table of a sweep's runs, best first (without --sweep ID: the sweeps in the store)."""
    from harness import processes, runfolder
    from harness.sweep import status
    from harness.sweep.store import Store

    with Store(root, read_only=True) as store:
        if sweep_id is None:
            if best:
                raise SweepError("--best needs --sweep ID")
            click.echo(status.sweeps_text(store))
            return
        store.get_sweep(sweep_id)
        if best:
            run = status.best_run(store, sweep_id)
            if run is None:
                raise SweepError(f"sweep {sweep_id} has no finished run with a metric yet")
            click.echo(runfolder.run_dir(store.root, sweep_id, run.id))
            return
        if not watch:
            click.echo(status.status_text(store, sweep_id, limit=limit))
            return

        def show() -> bool:
            text = status.status_text(store, sweep_id, limit=limit)
            click.clear()
            click.echo(text)
            return status.is_settled(store, sweep_id)

        try:
            processes.wait_until(show, math.inf, tick_s=interval)  # until the sweep is over
        except KeyboardInterrupt:
            pass


def register(group: click.Group) -> None:
    """Add this area's commands to `group`."""
    group.add_command(sweep_group)
    group.add_command(agent_command)
    group.add_command(status_command)
