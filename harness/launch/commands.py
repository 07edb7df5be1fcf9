"""`harness launch` (also `python -m harness.launch`): run a sweep's agents on this machine's GPUs, or
its runs as SLURM jobs; `harness sync`: upload a local sweep's offline W&B runs. Thin: parse, call
harness.launch.local / harness.launch.slurm / harness.launch.sync, print."""

from __future__ import annotations

import os
from pathlib import Path

import click

from harness import runfolder
from harness.cli_common import root_option, store_option, sweep_option
from harness.errors import HarnessError, LaunchError
from harness.sweep.ids import is_wandb_sweep


@click.command("launch", context_settings={"help_option_names": ["-h", "--help"]})
@sweep_option(bare=False)
@click.option("--gpus", default=None, metavar="IDS|all|none",
              help="GPU ids (0,1,2,3): one agent per GPU; 'all': every GPU nvidia-smi lists; 'none': CPU agents (--agents)")
@click.option("--agents", type=click.IntRange(min=1), default=None, help="with --gpus none: how many CPU agents")
@click.option("--agents-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="agents sharing each GPU (small models)")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="runs per agent (--gpus), or runs to submit in all (--slurm); default: until the sweep ends")
@root_option
@store_option
@click.option("--resume", is_flag=True, help="first make the sweep's interrupted (crashed, preempted) runs resumable")
@click.option("--slurm", "profile_name", default=None, metavar="PROFILE",
              help="submit to SLURM with this profile of jobs/slurm.yaml (e.g. local) instead of running agents here")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="--slurm: most jobs in flight (default: the profile's)")
@click.option("--profiles", "profiles_file", type=click.Path(dir_okay=False), default=None,
              help="SLURM profiles file [$HARNESS_SLURM_PROFILES or jobs/slurm.yaml]")
@click.option("--stagger", type=float, default=2.0, show_default=True,
              help="seconds between agent starts: W&B hands agents started together the same first run (a "
                   "local sweep's store never does; there it only spreads the start-up load)")
@click.option("--max-restarts", type=click.IntRange(min=0), default=3, show_default=True,
              help="restarts of an agent that dies abnormally (back-off 2, 4, 8 ... s)")
@click.option("--quarantine-after", type=click.IntRange(min=0), default=None,
              help="--gpus: retire a GPU for the sweep after this many runs in a row failed at start on it while "
                   "runs succeed on others (0: never) [3]; on SLURM the profile's quarantine_after")
@click.option("--dry-run", is_flag=True, help="print what would be started or submitted, start nothing")
@click.option("--sync", "sync", is_flag=True,
              help="local sweep with offline runs: upload their W&B data from here while they train (needs W&B access here)")
def launch_command(sweep_id: str, gpus: str | None, agents: int | None, agents_per_gpu: int, count: int | None,
                   root: str | None, resume: bool, profile_name: str | None, parallel: int | None,
                   profiles_file: str | None, stagger: float, max_restarts: int, quarantine_after: int | None,
                   dry_run: bool, sync: bool) -> None:
    """Run a sweep on this machine's GPUs (one agent per GPU) or as SLURM jobs.

    \b
    python -m harness.launch --gpus 0,1,2,3 --sweep local-abcd1234
    python -m harness.launch --gpus none --agents 2 --sweep local-abcd1234 --count 5
    python -m harness.launch --gpus all --sweep my-team/cloudsweep/x1y2z3
    python -m harness.launch --slurm local --sweep local-abcd1234 --parallel 4
    python -m harness.launch --slurm local --sweep local-abcd1234 --sync   # live W&B from the login node
    """
    from harness.io import runs_root

    if (gpus is None) == (profile_name is None):
        raise LaunchError("say where to run: --gpus IDS|all|none (agents on this machine) or --slurm PROFILE")
    if profile_name is None and parallel is not None:
        raise LaunchError("--parallel goes with --slurm; on this machine the agents are the parallelism")
    if profile_name is not None and quarantine_after is not None:
        raise LaunchError("--quarantine-after goes with --gpus; on SLURM it is the profile's quarantine_after key")
    root_path = runs_root(root)
    wandb = is_wandb_sweep(sweep_id)
    _prepare(sweep_id, wandb, root_path, resume, dry_run, sync)
    if profile_name is not None:
        _launch_slurm(sweep_id, wandb, root_path, profile_name, profiles_file, parallel, count, agents, dry_run, sync)
    else:
        _launch_local(sweep_id, wandb, root_path, gpus, agents, agents_per_gpu, count, stagger, max_restarts,
                      dry_run, sync, quarantine_after)


def _prepare(sweep_id: str, wandb: bool, root: Path, resume: bool, dry_run: bool, sync: bool) -> None:
    """Check the sweep (and with --resume make its interrupted runs resumable) and --sync's runs' setting."""
    if not wandb:
        _check_local_sweep(root, sweep_id, resume and not dry_run)
    elif resume:
        click.echo("[launch] --resume: a W&B sweep re-runs its preempted runs itself (mark_preempting)")
    if sync and wandb:
        raise LaunchError("--sync is for local sweeps (their runs log offline); a W&B sweep's runs log online")
    if sync and not dry_run:
        from harness.launch import sync as sync_module

        for key, value in sync_module.RUN_ENV.items():  # the runs flush their .wandb often (inherited)
            os.environ.setdefault(key, value)


def _launch_local(sweep_id: str, wandb: bool, root: Path, gpus: str, agents: int | None, agents_per_gpu: int,
                  count: int | None, stagger: float, max_restarts: int, dry_run: bool, sync: bool,
                  quarantine_after: int | None = None) -> None:
    from harness.launch import local

    slots = local.plan_agents(sweep_id, local.parse_gpus(gpus), root, agents_per_gpu=agents_per_gpu,
                              agents=agents, count=count, quarantine_after=quarantine_after)
    if dry_run:
        for slot in slots:
            env = " ".join(f"{key}={value!r}" for key, value in slot.env.items())
            click.echo(f"{slot.name}: {env} {' '.join(slot.argv)} > {slot.log}")
        return
    where = ", ".join(slot.name for slot in slots)
    click.echo(f"[launch] sweep {sweep_id}: {len(slots)} agent(s) ({where}); logs in {slots[0].log.parent}; "
               f"Ctrl-C stops them (each run saves a checkpoint)")
    if not wandb:
        click.echo(f"[launch] watch: harness status {sweep_id} --root {root} --watch")
    supervisor = local.Supervisor(slots, stagger_s=stagger, max_restarts=max_restarts,
                                  echo=lambda line: click.echo(line, err=False))
    syncer = _start_syncer(root, sweep_id) if sync else None
    code = supervisor.run()
    if syncer is not None:
        syncer.close()  # every agent has exited: the runs' writers are gone
    if code and not supervisor.stop_signal and supervisor.failed:
        click.echo(f"[launch] failed: {len(supervisor.failed)} of {len(slots)} agent(s) ended abnormally "
                   f"({', '.join(supervisor.failed)}); exit code {code}", err=True)
    if supervisor.retired:
        click.echo(f"[launch] retired for sweep {sweep_id} (quarantined GPU): {', '.join(supervisor.retired)}"
                   + ("; every slot is retired" if len(supervisor.retired) == len(slots) else ""),
                   err=bool(code))
    if not code and not wandb:
        from harness.sweep.store import Store

        with Store(root) as store:
            code = _unsuccessful_exit(store, sweep_id)
    if code and supervisor.stop_signal:
        hint = f" (continue with: python -m harness.launch --gpus {gpus} --sweep {sweep_id} --resume)" if not wandb else ""
        click.echo(f"[launch] stopped{hint}")
    click.get_current_context().exit(code)


def _check_local_sweep(root: Path, sweep_id: str, resume: bool) -> None:
    from harness.launch.resume import resume_sweep
    from harness.sweep.store import Store

    with Store(root) as store:
        store.get_sweep(sweep_id)  # unknown id: SweepError naming the known ones
        if resume:
            resume_sweep(store, sweep_id, echo=click.echo)


def _start_syncer(root: Path, sweep_id: str):
    from harness.launch import sync as sync_module

    return sync_module.LiveSyncer(root, sweep_id, echo=click.echo).start()


def _launch_slurm(sweep_id: str, wandb: bool, root: Path, profile_name: str, profiles_file: str | None,
                  parallel: int | None, count: int | None, agents: int | None, dry_run: bool,
                  sync: bool = False) -> None:
    from harness.launch import profiles, slurm

    profile = profiles.load_profile(profile_name, profiles_file)
    if agents is not None and not wandb:
        raise LaunchError("--agents with --slurm sets how many `wandb agent` tasks a W&B sweep's job array has; a "
                          "local sweep runs one job per run: say how many at once with --parallel")
    if wandb:
        plan = slurm.wandb_array_plan(sweep_id, profile, root, tasks=agents, parallel=parallel, count=count,
                                      max_array_size=slurm.max_array_size(profile))
        if dry_run:
            parts = ", ".join(f"{part.tasks} ({part.parallel} at once)" for part in plan.arrays)
            click.echo(f"job array of {plan.tasks} task(s) (arrays: {parts}), submitit parameters {plan.parameters}")
            click.echo(f"each task: {' '.join(plan.argv)} (env {plan.env}); logs in {plan.log_dir}")
            return
        slurm.submit_wandb_array(plan, echo=click.echo)
        return
    from harness.sweep.store import Store

    if dry_run:
        click.echo(f"would run sweep {sweep_id} as SLURM jobs: profile {profile.name!r}, "
                   f"{parallel or profile.parallel} in flight, submitit parameters {profile.submitit_parameters(parallel)}")
        return
    with Store(root) as store:
        controller = slurm.SlurmController(store, sweep_id, profile, parallel=parallel, count=count, echo=click.echo)
        click.echo(f"[slurm] sweep {sweep_id}: profile {profile.name!r} (partition {profile.partition or 'default'}, "
                   f"{profile.gpus_per_job} GPU/job), at most {controller.parallel} jobs in flight; "
                   f"Ctrl-C detaches (jobs keep running; run the same command to re-attach)")
        syncer = _start_syncer(root, sweep_id) if sync else None
        code = controller.run()
        code = code or _unsuccessful_exit(store, sweep_id)
        if syncer is not None:
            # Detached: the jobs go on and a re-attached launcher syncs them; else they are all over.
            syncer.detach() if controller.stop_signal else syncer.close()
    click.get_current_context().exit(code)


def _unsuccessful_exit(store, sweep_id: str) -> int:
    """1 when the sweep is over but some of its runs did not finish (failed, crashed, left preempted)."""
    from harness.sweep import status

    left = status.unsuccessful_runs(store, sweep_id)
    if left:
        click.echo(f"[launch] sweep {sweep_id} ended with {left} run(s) that did not finish: "
                   f"harness status {sweep_id} --root {store.root}", err=True)
        return 1
    return 0


@click.command("sync", context_settings={"help_option_names": ["-h", "--help"]})
@sweep_option()
@root_option
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True, help="runs uploaded at a time")
def sync_command(sweep_id: str, root: str | None, parallel: int) -> None:
    """Upload a local sweep's offline W&B runs (those not uploaded yet) with `wandb sync`.

    \b
    harness sync --sweep local-abcd1234 --root runs
    A resumed run's folders become one W&B run; a second call uploads nothing.
    """
    from harness.io import runs_root
    from harness.launch import sync as sync_module

    root_path = runs_root(root)
    if is_wandb_sweep(sweep_id):
        raise HarnessError(f"{sweep_id}: a W&B sweep's runs log online; `harness sync` is for local sweeps")
    if not runfolder.sweep_dir(root_path, sweep_id).is_dir():
        raise HarnessError(f"no run folders of sweep {sweep_id} under {root_path} (see --root)")
    result = sync_module.sync_sweep(root_path, sweep_id, parallel=parallel)
    if result.empty:
        click.echo(f"[sync] {len(result.empty)} folder(s) of processes that wrote nothing: skipped "
                   f"({sync_module.describe(result.empty)})")
    if not result.uploaded and not result.failed:
        click.echo(f"[sync] sweep {sweep_id}: nothing new to upload")
        return
    click.echo(f"[sync] sweep {sweep_id}: uploaded {len(result.uploaded)} offline folder(s)")
    if result.failed:
        click.echo(result.output.rstrip(), err=True)
        click.echo(f"[sync] {len(result.failed)} folder(s) not uploaded ({sync_module.describe(result.failed)}); "
                   f"run the same command again", err=True)
        click.get_current_context().exit(1)


def main(argv: list[str] | None = None) -> None:
    """`python -m harness.launch`: the same command, with HarnessError -> exit 2."""
    from harness.cli_common import run_main

    run_main(launch_command, argv)


def register(group: click.Group) -> None:
    """Add this area's commands to `group`."""
    group.add_command(launch_command)
    group.add_command(sync_command)


__all__ = ["launch_command", "sync_command", "main", "register"]
