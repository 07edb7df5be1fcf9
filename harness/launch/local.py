"""The local launcher: one machine, many GPUs, one sweep agent per GPU slot, kept alive, stopped together.

`plan_agents` is pure: it says exactly which command each slot runs, with which environment and log
file (tests check it without starting anything, and the W&B path cannot run here without a server).
`Supervisor` starts those commands staggered, restarts an agent that dies abnormally (with a limit
and a growing back-off), forwards Ctrl-C/SIGTERM to every agent (each agent makes its run save a
checkpoint and records it preempted) and returns only once every agent has exited.

Agents run in their own session, so a Ctrl-C in the terminal reaches them once, through the
launcher, and with a parent-death signal: if the launcher itself is killed (even with kill -9) every
agent gets SIGTERM, stops its run with a checkpoint, and `--resume` carries on from there.

W&B agents (`wandb agent --forward-signals`) pass every signal on to their run, and to a run under
`wandb agent` SIGTERM means "W&B stopped you" (harness.run.stopping). So a Ctrl-C or SIGTERM to the
launcher reaches a W&B agent as SIGUSR1 (forwarded: the run saves and asks W&B to hand it out again)
followed by SIGTERM (the agent waits for its run, then exits; the run, already saving, ignores it).
A W&B agent exits 0 even when it gives up on a sweep whose runs keep failing; the launcher reads its
log (`wandb_agent_failure`) and counts such an agent as failed, with W&B's reason.

An agent whose GPU is quarantined for the sweep (its runs kept failing at start there while runs
succeeded on the other GPUs: harness.sweep.quarantine) exits with `EXIT_RETIRED`: the slot is retired,
never restarted, and the launcher says so; `harness status` shows the GPU. With every slot retired the
launcher exits 1.

With `--agents-per-gpu N` > 1 each agent's environment carries the GPU memory share of its runs
(harness.run.device.memory_share_environment: $HARNESS_GPU_MEMORY_FRACTION = 0.9/N and the Keras
backend's own switches, e.g. TF_FORCE_GPU_ALLOW_GROWTH): without it the first run on a card maps
nearly all of its memory and the second fails out of memory at its first step. The agents' runs inherit
it; each run applies it before its model is built and records it (summary.json's `device`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from harness import processes, runfolder
from harness.errors import LaunchError
from harness.run import device
from harness.sweep.ids import is_wandb_sweep
from harness.sweep.quarantine import EXIT_RETIRED

# What `wandb agent` says when it gives up (it exits 0 all the same), and when it cannot run at all.
_WANDB_GAVE_UP = re.compile(
    r"(Detected \d+ (?:consecutive )?failed runs[^\n]*shutting down\.?"
    r"|Sweep [^\n]* not found|Sweep was deleted or agent was not found\.?)"
)
_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+):")
# An agent's log holds its own one-line reports (a run's output goes to the run folder); `wandb agent`
# adds its own chatter. Shown on the terminal: lines saying what happened, minus the agent's prefix.
_SUMMARY_LINE = re.compile(
    r"(run |claim|resum|start|finish|fail|crash|preempt|stop|cancel|error|exception|traceback|done|sweep|waiting)",
    re.IGNORECASE,
)
_AGENT_PREFIX = re.compile(r"^\[agent [^\]]*\]\s*")
# Exit codes that restarting cannot fix: 0 (the sweep is done or --count reached), 2 (a usage error).
NO_RESTART_CODES = (0, 2)


@dataclasses.dataclass(frozen=True)
class AgentSlot:
    """One agent process: which GPU it owns, what it runs, where its output goes."""

    name: str  # agent-<gpu>-<k>, or agent-cpu-<k>
    gpu: str | None  # the GPU id it sees as its only GPU; None: CPU only
    argv: tuple[str, ...]
    env: Mapping[str, str]  # set on top of the launcher's environment
    log: Path
    wandb: bool = False  # a `wandb agent` (see the module docstring for what that changes)


def parse_gpus(text: str, environ: Mapping[str, str] | None = None) -> list[str] | None:
    """`0,1,3` -> ['0', '1', '3']; `all` -> the machine's GPUs; `none` -> None (CPU agents)."""
    text = text.strip().lower()
    if text == "none":
        return None
    if text == "all":
        return detect_gpus(environ)
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids or not all(part.isdigit() for part in ids):
        raise LaunchError(f"--gpus: expected GPU ids like 0,1,2, or 'all', or 'none'; got {text!r}")
    if len(set(ids)) != len(ids):
        raise LaunchError(f"--gpus: GPU ids repeat in {text!r}; use --agents-per-gpu for several agents on one GPU")
    return ids


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this launcher may use: $CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [part.strip() for part in visible.split(",") if part.strip() and part.strip() != "-1"]
        if ids:
            return ids
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise LaunchError(
            "--gpus all: nvidia-smi not found (no NVIDIA driver on this machine); "
            "name the GPUs (--gpus 0,1) or run CPU agents (--gpus none --agents K)"
        ) from None
    if listing.returncode != 0:
        raise LaunchError(f"--gpus all: `nvidia-smi -L` failed: {(listing.stderr or listing.stdout).strip()}")
    ids = parse_nvidia_smi(listing.stdout)
    if not ids:
        raise LaunchError("--gpus all: `nvidia-smi -L` lists no GPU; use --gpus none --agents K for CPU agents")
    return ids


def parse_nvidia_smi(text: str) -> list[str]:
    """GPU indices from `nvidia-smi -L` ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)")."""
    return [match.group(1) for line in text.splitlines() if (match := _NVIDIA_SMI_LINE.match(line.strip()))]


def plan_agents(
    sweep_id: str,
    gpus: Sequence[str] | None,
    root: Path,
    agents_per_gpu: int = 1,
    agents: int | None = None,
    count: int | None = None,
    python: str | None = None,
    quarantine_after: int | None = None,
) -> list[AgentSlot]:
    """The agent processes to run: their commands, environments and log files. Starts nothing.

    A local sweep id runs `python -m harness agent ID [--count N] --root ROOT`; a W&B sweep path
    `entity/project/id` runs `python -m wandb agent --forward-signals [--count N] entity/project/id`
    (W&B's own agent, which passes signals on to the run so it can save). W&B fills the sweep
    command's `${interpreter}` with a bare `python`, so a W&B agent's PATH starts with the folder of
    `python` (default: this launcher's interpreter): its runs use the launcher's environment.
    `quarantine_after`: a local agent's `--quarantine-after` (None: the agent's default).
    """
    python = python or sys.executable
    if agents_per_gpu < 1:
        raise LaunchError(f"--agents-per-gpu must be >= 1, got {agents_per_gpu}")
    if count is not None and count < 1:
        raise LaunchError(f"--count must be >= 1, got {count}")
    if gpus is None:
        if not agents or agents < 1:
            raise LaunchError("--gpus none needs --agents K (how many CPU agents to run), K >= 1")
        placements = [(None, index) for index in range(agents)]
    else:
        if agents is not None:
            raise LaunchError("--agents goes with --gpus none; with GPUs use --agents-per-gpu")
        placements = [(gpu, index) for gpu in gpus for index in range(agents_per_gpu)]

    count_args = ["--count", str(count)] if count is not None else []
    if is_wandb_sweep(sweep_id):
        argv = [python, "-m", "wandb", "agent", "--forward-signals", *count_args, sweep_id]
    else:
        argv = [python, "-m", "harness", "agent", sweep_id, *count_args, "--root", str(root)]
        if quarantine_after is not None:
            argv += ["--quarantine-after", str(quarantine_after)]
    wandb = is_wandb_sweep(sweep_id)
    log_dir = runfolder.agents_dir(root, sweep_id)
    # Runs sharing a GPU: each its share of the card's memory (the backend the agents' runs will use).
    share = device.memory_share_environment(agents_per_gpu, device.configured_backend()) if gpus is not None else {}
    slots = []
    for gpu, index in placements:
        name = f"agent-{gpu if gpu is not None else 'cpu'}-{index}"
        # An empty CUDA_VISIBLE_DEVICES hides every GPU: CPU agents must not grab one by accident.
        env = {"CUDA_VISIBLE_DEVICES": gpu if gpu is not None else "", "HARNESS_ROOT": str(root),
               "PYTHONUNBUFFERED": "1", **share}
        if wandb:
            env["PATH"] = processes.path_with_python_first(python)
        slots.append(AgentSlot(name=name, gpu=gpu, argv=tuple(argv), env=env, log=log_dir / f"{name}.log",
                               wandb=wandb))
    return slots


def wandb_agent_failure(log_text: str) -> str | None:
    """Why a `wandb agent` gave up, from its output (None: it did not); it exits 0 either way."""
    match = _WANDB_GAVE_UP.search(log_text)
    return match.group(0).strip() if match else None


# --- running them ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Agent:
    slot: AgentSlot
    process: subprocess.Popen | None = None
    restarts: int = 0
    restart_at: float | None = None  # when a pending restart is due
    done: bool = False
    exit_code: int | None = None
    log_offset: int = 0
    log_tail: str = ""  # an unfinished last line of the log
    start_offset: int = 0  # where the log stood when this agent process started


class Supervisor:
    """Runs agent slots until each has exited for good; see the module docstring."""

    def __init__(
        self,
        slots: Sequence[AgentSlot],
        stagger_s: float = 2.0,
        max_restarts: int = 3,
        backoff_s: float = 2.0,
        echo: Callable[[str], None] = print,
        poll_s: float = 0.2,
    ) -> None:
        # Logs are appended to across launches: show only what this launch's agents write.
        self.agents = [_Agent(slot, log_offset=slot.log.stat().st_size if slot.log.exists() else 0) for slot in slots]
        self.stagger_s = stagger_s
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.echo = echo
        self.poll_s = poll_s
        self.signals = processes.SignalFlag((signal.SIGINT, signal.SIGTERM), on_signal=self._forward)
        self.failed: list[str] = []  # slots given up on
        self.retired: list[str] = []  # slots whose GPU is quarantined for the sweep

    @property
    def stop_signal(self) -> int | None:
        """The first signal that asked the launcher to stop (None: none yet)."""
        return self.signals.first

    # -- signals -------------------------------------------------------------------------------
    def _forward(self, signum: int) -> None:
        """In the signal handler: pass a stop on to every running agent (the third one kills them)."""
        name = signal.Signals(signum).name
        running = [agent for agent in self.agents if _alive(agent)]
        if self.signals.count >= 3:
            self.echo(f"[launch] {name} x{self.signals.count}: killing {len(running)} agent(s) now "
                      f"(runs lose unsaved work)")
            for agent in running:
                # The agent and its run: the agent leads its own session.
                processes.send_signal(agent.process, signal.SIGKILL, group=True)
            return
        note = " again" if self.signals.count > 1 else ""
        self.echo(f"[launch] {name}{note}: asking {len(running)} agent(s) to save their runs and stop "
                  f"(a third signal kills them)")
        for agent in running:
            if agent.slot.wandb:
                # SIGUSR1 (forwarded: the run saves, preempted; a second one: it exits at once), then
                # SIGTERM (the agent waits for its run and exits). A W&B run takes SIGTERM as a stop.
                processes.send_signal(agent.process, signal.SIGUSR1)
                processes.send_signal(agent.process, signal.SIGTERM)
            else:
                processes.send_signal(agent.process, signum)  # the agent forwards it to its run

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Start every slot (staggered), supervise, and return the launcher's exit code."""
        self.signals.install()
        try:
            for position, agent in enumerate(self.agents):
                if position and not self.stop_signal:
                    self._sleep(self.stagger_s)  # agents started together could race for one config
                if self.stop_signal:
                    agent.done = True
                else:
                    self._start(agent)
            processes.wait_until(self._step_until_all_done, math.inf, tick_s=self.poll_s)
            self._echo_logs()
        finally:
            self.signals.restore()
        if self.stop_signal:
            return 128 + self.stop_signal
        every_slot_retired = bool(self.agents) and len(self.retired) == len(self.agents)
        return 1 if self.failed or every_slot_retired else 0

    def _step_until_all_done(self) -> bool:
        self._step()
        return all(agent.done for agent in self.agents)

    def _sleep(self, seconds: float) -> None:
        processes.sleep_unless(seconds, lambda: self.stop_signal, tick_s=self.poll_s, each=self._step)

    def _start(self, agent: _Agent) -> None:
        slot = agent.slot
        slot.log.parent.mkdir(parents=True, exist_ok=True)
        agent.start_offset = slot.log.stat().st_size if slot.log.exists() else 0
        env = processes.child_environment(slot.env)
        with open(slot.log, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start {' '.join(slot.argv)} "
                      f"(CUDA_VISIBLE_DEVICES={slot.env.get('CUDA_VISIBLE_DEVICES')!r})\n".encode())
            log.flush()
            agent.process = subprocess.Popen(
                list(slot.argv), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=processes.die_with_parent,
            )
        agent.restart_at = None
        gpu = f"GPU {slot.gpu}" if slot.gpu is not None else "CPU"
        again = f" (restart {agent.restarts})" if agent.restarts else ""
        self.echo(f"[{slot.name}] started pid {agent.process.pid} on {gpu}{again}; log {slot.log}")

    def _step(self) -> None:
        self._echo_logs()
        now = time.monotonic()
        for agent in self.agents:
            if agent.done:
                continue
            if agent.process is None:
                if agent.restart_at is not None and now >= agent.restart_at:
                    if self.stop_signal:
                        agent.done = True
                    else:
                        self._start(agent)
                continue
            code = agent.process.poll()
            if code is None:
                continue
            agent.process = None
            agent.exit_code = code
            self._after_exit(agent, code)

    def _after_exit(self, agent: _Agent, code: int) -> None:
        name = agent.slot.name
        self._echo_logs()
        gave_up = wandb_agent_failure(self._log_since_start(agent)) if agent.slot.wandb and code == 0 else None
        if self.stop_signal:
            self.echo(f"[{name}] stopped (exit code {code})")
            agent.done = True
        elif gave_up:
            self.echo(f"[{name}] wandb agent gave up: {gave_up} (it exits 0 all the same); see {agent.slot.log}")
            agent.done = True
            self.failed.append(name)
        elif code == EXIT_RETIRED and not agent.slot.wandb:
            agent.done = True
            self.retired.append(name)
            self.echo(f"[{name}] retired: GPU {agent.slot.gpu} is quarantined for this sweep (its runs kept failing "
                      f"at start; `harness status` shows it); not restarted, {self._left()} slot(s) go on")
        elif code in NO_RESTART_CODES:
            self.echo(f"[{name}] " + ("finished (sweep done or --count reached)" if code == 0
                                      else f"exited with a usage error (code {code}); not restarted: see {agent.slot.log}"))
            agent.done = True
            if code != 0:
                self.failed.append(name)
        elif agent.restarts >= self.max_restarts:
            self.echo(f"[{name}] died (exit code {code}) after {agent.restarts} restart(s): giving up; see {agent.slot.log}")
            agent.done = True
            self.failed.append(name)
        else:
            delay = self.backoff_s * (2**agent.restarts)
            agent.restarts += 1
            agent.restart_at = time.monotonic() + delay
            self.echo(f"[{name}] died (exit code {code}); restarting in {delay:.0f} s "
                      f"({agent.restarts}/{self.max_restarts})")

    def _left(self) -> int:
        return sum(1 for agent in self.agents if not agent.done)

    def _log_since_start(self, agent: _Agent) -> str:
        try:
            with open(agent.slot.log, "rb") as log:
                log.seek(agent.start_offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _echo_logs(self) -> None:
        """Show the new summary lines of every agent's log, prefixed with its name."""
        for agent in self.agents:
            try:
                with open(agent.slot.log, "rb") as log:
                    log.seek(agent.log_offset)
                    chunk = log.read()
            except FileNotFoundError:
                continue
            if not chunk:
                continue
            agent.log_offset += len(chunk)
            text = agent.log_tail + chunk.decode("utf-8", errors="replace")
            lines = text.split("\n")
            agent.log_tail = lines.pop()
            for line in lines:
                line = line.rsplit("\r", 1)[-1].rstrip()  # progress bars redraw with \r
                if line and not line.startswith("===") and _SUMMARY_LINE.search(line):
                    self.echo(f"[{agent.slot.name}] {_AGENT_PREFIX.sub('', line)[:200]}")


def _alive(agent: _Agent) -> bool:
    return agent.process is not None and agent.process.poll() is None
