"""SLURM profiles: `jobs/slurm.yaml` names sets of job resources (partition, GPUs, time, ...).

A profile is what `python -m harness.launch --slurm NAME` submits with. Unknown keys and bad values
raise `ConfigError` (exit code 2) naming the file, the profile and the key, and listing the valid keys.
`submitit_parameters` turns a profile into `AutoExecutor.update_parameters(...)` keywords, so that the
mapping from our names to submitit's lives in one place.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Sequence

from harness.errors import ConfigError
from harness.sweep.quarantine import DEFAULT_AFTER

# The repository's profiles file; `--profiles FILE` or $HARNESS_SLURM_PROFILES point elsewhere.
DEFAULT_PROFILES = Path(__file__).resolve().parents[2] / "jobs" / "slurm.yaml"
# After SLURM's warning the job asks its run to save, waits, then requeues itself; all of that must end before
# SLURM's kill at the time limit. The run gets signal_delay_s minus this margin (requeue + slack).
REQUEUE_MARGIN_S = 15
MIN_SIGNAL_DELAY_S = 30  # less leaves a run no time to write a checkpoint of a real model


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    partition: str = ""  # SLURM partition (-p); empty: the cluster's default
    account: str = ""  # SLURM account (-A); empty: none
    qos: str = ""  # quality of service (--qos); empty: none
    gpus_per_job: int = 1  # GPUs each job asks for (--gpus-per-node); SLURM sets CUDA_VISIBLE_DEVICES
    cpus_per_job: int = 4  # CPUs each job asks for (--cpus-per-task)
    mem_gb: float = 16.0  # memory each job asks for (--mem)
    time_min: int = 240  # time limit of each job in minutes; a job that reaches it saves and is requeued
    parallel: int = 4  # most jobs in flight at once (`--parallel` overrides it)
    max_requeues: int = 20  # how often one job may be requeued after a timeout or preemption
    signal_delay_s: int = 120  # seconds before the time limit that SLURM warns the job (USR2)
    python: str = ""  # the Python on the compute nodes; empty: the launcher's own interpreter
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load, conda activate, ...)
    sbatch: dict[str, Any] = dataclasses.field(default_factory=dict)  # any other sbatch option: {name: value}
    # A node where this many runs in a row failed at start (while runs succeed on others) gets no more jobs
    # of the sweep (--exclude, with sbatch's own exclude); 0: never (harness.sweep.quarantine).
    quarantine_after: int = DEFAULT_AFTER
    # The most tasks in one job array (SLURM's MaxArraySize: indices must be below it); 0: the cluster's own,
    # read from `scontrol show config`. A W&B sweep's agent array larger than this is split (slurm.split_array).
    max_array_size: int = 0

    def exclude(self, nodes: Sequence[str] = ()) -> str:
        """sbatch --exclude: the profile's own (`sbatch: {exclude: ...}`) and `nodes` (the quarantined ones)."""
        own = str(self.sbatch.get("exclude") or "")  # may be a hostlist (node[01-04]): kept as written
        return ",".join([own] * bool(own) + sorted(set(nodes)))

    def save_timeout_s(self) -> float:
        """How long a job waits for its run to save after SLURM's warning (then kills it and requeues)."""
        return float(self.signal_delay_s - REQUEUE_MARGIN_S)

    def executor_arguments(self) -> dict[str, Any]:
        """Keywords for the `submitit.AutoExecutor(folder, cluster='slurm', ...)` constructor itself."""
        arguments: dict[str, Any] = {"slurm_max_num_timeout": self.max_requeues}
        if self.python:
            arguments["slurm_python"] = self.python
        return arguments

    def submitit_parameters(self, parallel: int | None = None) -> dict[str, Any]:
        """Keywords for `submitit.AutoExecutor(..., cluster='slurm').update_parameters`."""
        parameters: dict[str, Any] = {
            "timeout_min": self.time_min,
            "gpus_per_node": self.gpus_per_job,
            "cpus_per_task": self.cpus_per_job,
            "mem_gb": self.mem_gb,
            "slurm_signal_delay_s": self.signal_delay_s,
            "slurm_array_parallelism": parallel or self.parallel,
            "slurm_setup": list(self.setup),
        }
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if self.account:
            parameters["slurm_account"] = self.account
        if self.qos:
            parameters["slurm_qos"] = self.qos
        if self.sbatch:
            parameters["slurm_additional_parameters"] = dict(self.sbatch)
        return parameters


def profile_keys() -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(Profile) if field.name != "name")


def profiles_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The profiles file: the argument, else $HARNESS_SLURM_PROFILES, else jobs/slurm.yaml."""
    if path:
        return Path(path)
    return Path(os.environ.get("HARNESS_SLURM_PROFILES") or DEFAULT_PROFILES)


def load_profiles(path: str | os.PathLike[str] | None = None) -> dict[str, Profile]:
    """Every profile in the file, checked."""
    import yaml

    path = profiles_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"SLURM profiles file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"SLURM profiles file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ConfigError(f"SLURM profiles file {path} must hold a mapping 'profiles: {{name: {{key: value}}}}'")
    return {str(name): _build(path, str(name), values) for name, values in data["profiles"].items()}


def load_profile(name: str, path: str | os.PathLike[str] | None = None) -> Profile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ConfigError(
            f"no SLURM profile {name!r} in {profiles_path(path)}; profiles there: {', '.join(sorted(profiles)) or 'none'}"
        )
    return profiles[name]


def _build(path: Path, name: str, values: Any) -> Profile:
    where = f"{path}: profile {name!r}"
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of key: value, got {type(values).__name__}")
    hints = typing.get_type_hints(Profile)
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in profile_keys():
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(profile_keys())}")
        checked[key] = _coerce(where, key, value, hints[key])
    for key in ("gpus_per_job", "max_requeues", "signal_delay_s", "quarantine_after", "max_array_size"):
        if checked.get(key, 0) < 0:
            raise ConfigError(f"{where}: key {key!r} must be >= 0, got {checked[key]}")
    for key in ("cpus_per_job", "time_min", "parallel", "mem_gb"):
        if key in checked and checked[key] <= 0:
            raise ConfigError(f"{where}: key {key!r} must be > 0, got {checked[key]}")
    profile = Profile(name=name, **checked)
    if profile.signal_delay_s < MIN_SIGNAL_DELAY_S:
        raise ConfigError(f"{where}: key 'signal_delay_s' must be at least {MIN_SIGNAL_DELAY_S} (the run saves a "
                          f"checkpoint in that time, minus {REQUEUE_MARGIN_S} s to requeue), got {profile.signal_delay_s}")
    if profile.signal_delay_s >= profile.time_min * 60:
        raise ConfigError(f"{where}: key 'signal_delay_s' ({profile.signal_delay_s} s) must be shorter than the time "
                          f"limit time_min ({profile.time_min} min = {profile.time_min * 60} s)")
    return profile


def _coerce(where: str, key: str, value: Any, target: Any) -> Any:
    origin = typing.get_origin(target)
    if origin is tuple:  # setup lines: a list of strings (or one string)
        lines = [value] if isinstance(value, str) else value
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise ConfigError(f"{where}: key {key!r} must be a list of shell lines")
        return tuple(lines)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key {key!r} must be a mapping of sbatch option: value")
        return {str(name): option for name, option in value.items()}
    if target is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key {key!r} must be a whole number, got {value!r}")
        return value
    if target is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key {key!r} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: key {key!r} must be text, got {value!r}")
    return value
