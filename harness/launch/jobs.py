"""What runs inside a SLURM job (submitit pickles these callables and calls them on a compute node).

`TrainingJob` runs one sweep run (`python -m harness.train ...`, the sweep's expanded command) as a
child process and returns its exit code. `WandbAgentTask` runs one `wandb agent` (a task of a W&B
sweep's job array). Both are `submitit.helpers.Checkpointable`: when SLURM warns the job (USR2,
before its time limit, or submitit's `job._interrupt()` for preemption) submitit calls
`checkpoint()`, which asks the child to save (SIGUSR1 for a training run; SIGUSR1 then SIGTERM for
`wandb agent`, which forwards SIGUSR1 to its run, a preemption, and exits after it on SIGTERM; see
harness.run.stopping), waits for it to exit, and returns the same callable to be requeued.
The requeued job starts the same command again and the run resumes from its own folder.

Their pickled state is only plain data (paths, ids, the command and its environment): nothing of
the model or of any process. Compute nodes never touch the sweep store: a training job writes
`slurm.json` (where it runs: job id, host, SLURM's CUDA_VISIBLE_DEVICES) into the run folder and
everything else the run writes itself (metrics.jsonl, summary.json); the launcher reads them.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import submitit

from harness import io, processes, runfolder

# After the child stops because of a signal the job itself also got, wait this long for submitit's
# USR2 (which requeues the job) before returning: the two signals of a preemption arrive together.
SIGNAL_SETTLE_S = 10.0


def _ignore_usr2() -> None:
    """In the child, before exec: ignore SIGUSR2 (inherited across exec).

    SLURM signals every process of the job step, so the training child also receives the USR2 meant
    for submitit; its default action would kill the run without a checkpoint. The job process turns
    that USR2 into a SIGUSR1 for the child instead, which the run handles by saving.
    """
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class _ChildJob(submitit.helpers.Checkpointable):
    """A command run as a child of the job, stopped with `stop_signals` when the job must checkpoint."""

    stop_signals: tuple[int, ...] = (signal.SIGUSR1,)

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], workdir: str, log: str,
                 save_timeout_s: float = 240.0, unset_env: Sequence[str] = (), python_first: str | None = None) -> None:
        self.argv = [str(item) for item in argv]
        self.python_first = python_first  # put this interpreter's folder first on the child's PATH
        self.env = {str(key): str(value) for key, value in env.items()}
        self.unset_env = [str(name) for name in unset_env]
        self.workdir = str(workdir)
        self.log = str(log)
        self.save_timeout_s = float(save_timeout_s)
        self._process: subprocess.Popen | None = None
        self._checkpointing = False

    # Only plain data is pickled (the running process is not, and must not be).
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_process"] = None
        state["_checkpointing"] = False
        return state

    def _run_child(self) -> int:
        env = processes.child_environment()
        for name in self.unset_env:
            env.pop(name, None)
        env.update(self.env)
        if getattr(self, "python_first", None):  # absent from jobs pickled by an older version
            env["PATH"] = processes.path_with_python_first(self.python_first, env.get("PATH", ""))
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} SLURM job {os.environ.get('SLURM_JOB_ID', '?')} "
                      f"(restart {os.environ.get('SLURM_RESTART_COUNT', '0')}) on {socket.gethostname()}: "
                      f"{' '.join(self.argv)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(self.argv, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, preexec_fn=_ignore_usr2)
        # poll(), not wait(): wait() holds a lock that checkpoint() (a signal handler running in this
        # same thread) would need to reap the child.
        process = self._process
        processes.wait_until(lambda: process.poll() is not None, math.inf, tick_s=0.2)
        code = process.returncode
        if code < 0 or code > 128:
            # Stopped by a signal. If it was part of a preemption, submitit's USR2 is on its way and
            # will requeue this job from checkpoint(); give it a moment to arrive.
            processes.wait_until(lambda: self._checkpointing, SIGNAL_SETTLE_S, tick_s=0.2)
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Ask the child to save and exit, wait for it, and requeue this same job."""
        self._checkpointing = True
        process = self._process
        if process is not None and process.poll() is None:
            for signum in self.stop_signals:
                processes.send_signal(process, signum)
            try:
                process.wait(timeout=self.save_timeout_s)
            except subprocess.TimeoutExpired:
                # The checkpoint in force is complete: only the work since it is lost.
                processes.send_signal(process, signal.SIGKILL)
                process.wait()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class TrainingJob(_ChildJob):
    """One run of a local sweep as one SLURM job (see the module docstring)."""

    def __init__(self, run_id: str, run_dir: str, argv: Sequence[str], env: Mapping[str, str], workdir: str,
                 save_timeout_s: float = 240.0, unset_env: Sequence[str] = ()) -> None:
        super().__init__(argv, env, workdir, log=str(Path(run_dir) / runfolder.OUTPUT_FILE), save_timeout_s=save_timeout_s,
                         unset_env=unset_env)
        self.run_id = run_id
        self.run_dir = str(run_dir)

    def __call__(self) -> dict[str, Any]:
        placement = record_placement(self.run_dir)
        code = self._run_child()
        return {"run_id": self.run_id, "exit_code": code, "job_id": placement["job_id"],
                "cuda_visible_devices": placement["cuda_visible_devices"]}


class WandbAgentTask(_ChildJob):
    """One `wandb agent --forward-signals` of a W&B sweep's job array.

    On checkpoint the agent gets SIGUSR1, forwards it to its run, which saves, calls
    `run.mark_preempting()` (so W&B hands the run out again) and exits; then SIGTERM, on which the
    agent waits for its run and exits (a SIGTERM alone would reach the run as a W&B stop). The task
    is requeued and its new agent picks the run (or the next one) up. The agent's PATH starts with
    its interpreter's folder: W&B starts runs with a bare `python`.
    """

    stop_signals = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], workdir: str, log_dir: str,
                 save_timeout_s: float = 240.0) -> None:
        super().__init__(argv, env, workdir, log=str(Path(log_dir) / "wandb-agent-0.log"),
                         save_timeout_s=save_timeout_s, python_first=str(argv[0]))
        self.log_dir = str(log_dir)

    def __call__(self, task_index: int = 0) -> int:
        self.log = str(Path(self.log_dir) / f"wandb-agent-{task_index}.log")
        return self._run_child()


def record_placement(run_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write `<run_dir>/slurm.json`: this job's id, host and SLURM's CUDA_VISIBLE_DEVICES."""
    environ = os.environ if environ is None else environ
    placement = {
        "job_id": environ.get("SLURM_JOB_ID"),
        "array_job_id": environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": environ.get("SLURM_ARRAY_TASK_ID"),
        "restart_count": int(environ.get("SLURM_RESTART_COUNT") or 0),
        "host": socket.gethostname(),
        "cuda_visible_devices": environ.get("CUDA_VISIBLE_DEVICES"),
        "started": time.time(),
    }
    io.atomic_write_json(Path(run_dir) / runfolder.PLACEMENT_FILE, placement)
    return placement


def read_placement(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        placement = io.read_json(Path(run_dir) / runfolder.PLACEMENT_FILE)
    except ValueError:
        return None
    return placement if isinstance(placement, dict) else None
