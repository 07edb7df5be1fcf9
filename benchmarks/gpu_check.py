"""The GPU check: on a machine with one NVIDIA GPU, in under 8 minutes, one JSON that says what it trains on.

1. the device (`harness.run.device.describe`: backend, GPU model and memory, visible GPUs);
2. a few hundred train steps of the reference UNet (benchmarks.train_step's compiled model, as a run
   builds it) at 384x576 batch 32 on random tensors kept on the device, in float32, mixed_bfloat16
   and mixed_float16: images/s of each and the speed-up over float32;
3. two agents on the one GPU (`python -m harness.launch --gpus 0 --agents-per-gpu 2`, a tiny local sweep
   of sweeps/debug.yaml, one run each, at the same time): each run's status, out-of-memory errors in
   their logs, and what nvidia-smi saw (processes on the GPU at once, memory each).

Each part runs in its own process, so the memory a framework keeps after the timing is free for the
agents. The timing part imports no TensorFlow itself: it runs under any Keras backend (KERAS_BACKEND=jax).

    bash benchmarks/gpu_check.sh                 # the GPU machine: benchmarks/results/gpu_check.json
    bash benchmarks/gpu_check.sh --dry-run       # any machine: tiny sizes, CUDA_VISIBLE_DEVICES empty, ~1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
OOM = re.compile(r"out of memory|RESOURCE_EXHAUSTED|OOM when allocating|CUDA_ERROR_OUT_OF_MEMORY", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Settings:
    size: tuple[int, int]
    batch: int
    steps: int  # timed steps per precision
    warmup: int  # untimed steps first (the first traces and compiles)
    timing_timeout_s: int
    agents_timeout_s: int


FULL = Settings(size=(384, 576), batch=32, steps=200, warmup=5, timing_timeout_s=270, agents_timeout_s=150)
DRY = Settings(size=(64, 96), batch=4, steps=5, warmup=1, timing_timeout_s=150, agents_timeout_s=150)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, few steps, on the CPU (CUDA_VISIBLE_DEVICES empty)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per precision (default: 200; dry run 5)")
    parser.add_argument("--skip-agents", action="store_true", help="only the device and the timing")
    parser.add_argument("--timing-only", action="store_true", help=argparse.SUPPRESS)  # the timing child
    args = parser.parse_args(argv)
    settings = DRY if args.dry_run else FULL
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps)
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before any framework starts, here and in every child
    if args.timing_only:
        return timing(settings, Path(args.out), require_gpu=not args.dry_run)
    return check(settings, Path(args.out), dry_run=args.dry_run, skip_agents=args.skip_agents)


def check(settings: Settings, out: Path, dry_run: bool, skip_agents: bool) -> int:
    """The whole check; writes `out` (also after a part fails) and prints what it found."""
    started = time.perf_counter()
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "dry_run": dry_run,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "host": platform.node()},
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow (default)"),
        "settings": dataclasses.asdict(settings),
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        report.update(_timing_child(settings, Path(work) / "timing.json", dry_run))
        _print_timing(report)
        if not skip_agents:
            report["agents"] = agents(settings, Path(work), dry_run)
            _print_agents(report["agents"])
    report["ok"] = bool(report.get("precisions")) and all("error" not in row for row in report["precisions"].values()) and (
        skip_agents or report["agents"].get("ok", False)) and "error" not in report
    report["wall_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"[gpu_check] {'OK' if report['ok'] else 'FAILED'} in {report['wall_s']} s; results: {out}", flush=True)
    return 0 if report["ok"] else 1


# --- the device and the timing (a child process) --------------------------------------------------
def _timing_child(settings: Settings, path: Path, dry_run: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--timing-only", "--out", str(path), "--steps", str(settings.steps)]
    command += ["--dry-run"] if dry_run else []
    try:
        result = subprocess.run(command, cwd=REPO, timeout=settings.timing_timeout_s, capture_output=True, text=True)
        problem = None if result.returncode == 0 else f"timing exited {result.returncode}: {_tail(result.stderr)}"
    except subprocess.TimeoutExpired:
        problem = f"timing ran past {settings.timing_timeout_s} s (the precisions measured by then are kept)"
    found = json.loads(path.read_text()) if path.exists() else {}
    return {**found, **({"error": problem} if problem else {})}


def timing(settings: Settings, out: Path, require_gpu: bool) -> int:
    """Describe the device, then time each precision; `out` is rewritten after each one (a timeout keeps them)."""
    from harness import config as config_module
    from harness.errors import DeviceError
    from harness.run import device

    height, width = settings.size
    config = config_module.Config(image_size=f"{height}x{width}", batch_size=settings.batch).validate()
    device.apply_memory_share()
    report: dict[str, Any] = {"device": device.describe(config), "precisions": {}}
    _write(out, report)
    if require_gpu and report["device"]["device"] != "GPU":
        visible = ",".join(device.visible_gpus() or []) or "0"
        try:  # the run's own check, as if the GPU had been handed over: its message names cause and fix
            device.check(config, {**os.environ, "CUDA_VISIBLE_DEVICES": visible})
            raise DeviceError(f"no GPU seen (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        except DeviceError as error:
            report["error"] = str(error)
            _write(out, report)
            print(f"[gpu_check] {error}", file=sys.stderr)
            return 2
    for precision in PRECISIONS:
        report["precisions"][precision] = _time_precision(settings, precision)
        _write(out, report)
    return 0


def _time_precision(settings: Settings, precision: str) -> dict[str, Any]:
    from benchmarks import train_step

    try:
        model = train_step._compiled_model(settings.size, jit_compile="auto", precision=precision)
        seconds = train_step.step_seconds(model, settings.size, settings.steps, batch=settings.batch,
                                          warmup=settings.warmup, on_device=True)
    except Exception as error:  # one precision failing must not hide the others
        return {"error": f"{type(error).__name__}: {str(error)[:500]}"}
    return {
        "images_per_s": round(settings.batch * settings.steps / seconds["total"], 1),
        "step_ms_median": round(seconds["median"] * 1000, 2), "step_ms_best": round(seconds["best"] * 1000, 2),
        "first_step_s": round(seconds["first"], 1), "jit_compile_resolved": bool(model.jit_compile),
        "loss_scale_optimizer": type(model.optimizer).__name__ == "LossScaleOptimizer",
    }


def _print_timing(report: dict[str, Any]) -> None:
    facts = report.get("device", {})
    print(f"[gpu_check] device: {facts.get('device')} {facts.get('device_name')} "
          f"({facts.get('gpu_memory_gb')} GiB), backend {facts.get('backend')} {facts.get('backend_version')}, "
          f"visible GPUs {facts.get('visible_gpus')}, GPUs seen {facts.get('gpus_seen')}", flush=True)
    rows = report.get("precisions", {})
    base = rows.get("float32", {}).get("images_per_s")
    report["speedup"] = {}
    for precision, row in rows.items():
        if "error" in row:
            print(f"[gpu_check]   {precision:15s} FAILED: {row['error']}", flush=True)
            continue
        speedup = round(row["images_per_s"] / base, 2) if base else None
        report["speedup"][precision] = speedup
        print(f"[gpu_check]   {precision:15s} {row['images_per_s']:8.1f} images/s  median step {row['step_ms_median']} ms  "
              f"x{speedup} vs float32  (XLA {row['jit_compile_resolved']}, first step {row['first_step_s']} s)", flush=True)
    if "error" in report:
        print(f"[gpu_check] timing: {report['error']}", flush=True)


# --- two agents on the one GPU --------------------------------------------------------------------
def agents(settings: Settings, work: Path, dry_run: bool) -> dict[str, Any]:
    """A tiny local sweep through the real launcher: 2 agents on GPU 0, one run each, at the same time."""
    from harness import runfolder

    data, root = work / "data", work / "runs"
    env = {**os.environ, "HARNESS_ROOT": str(root), "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    harness = [sys.executable, "-m", "harness"]
    try:
        _run(harness + ["synth", str(data), "--images", "16", "--size", "96x144"], env)
        _run(harness + ["prepare", str(data), "--size", "64x96"], env)
        create = harness + ["sweep", "create", "sweeps/debug.yaml", "--root", str(root), "--name", "gpu-check",
                            "--set", f"data_dir={data}"] + (["--set", "allow_cpu=true"] if dry_run else [])
        sweep_id = _run(create, env).stdout.strip().splitlines()[-1]
    except (subprocess.SubprocessError, IndexError) as error:
        return {"ok": False, "error": f"setting up the sweep failed: {error}"}
    launch = [sys.executable, "-m", "harness.launch", "--gpus", "0", "--agents-per-gpu", "2", "--sweep", sweep_id,
              "--root", str(root), "--count", "1", "--stagger", "0"]
    sampler = _GpuSampler()
    sampler.start()
    try:
        result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=settings.agents_timeout_s)
        launcher = {"rc": result.returncode, "tail": _tail(result.stdout + result.stderr)}
    except subprocess.TimeoutExpired:
        launcher = {"rc": None, "tail": f"the launcher ran past {settings.agents_timeout_s} s"}
    finally:
        sampler.stop()
    runs = [_run_record(folder) for folder in sorted(runfolder.sweep_dir(root, sweep_id).iterdir())
            if (folder / runfolder.SUMMARY_FILE).exists()]
    ok = launcher["rc"] == 0 and len(runs) == 2 and all(r["status"] == "finished" and not r["oom"] for r in runs)
    return {"ok": ok, "sweep": sweep_id, "command": " ".join(launch[1:]), "launcher": launcher, "runs": runs,
            "gpu": sampler.report()}


def _run_record(folder: Path) -> dict[str, Any]:
    from harness import runfolder

    summary = runfolder.read_summary(folder) or {}
    log = folder / runfolder.OUTPUT_FILE
    text = log.read_text(errors="replace") if log.exists() else ""
    return {"run": folder.name, "status": summary.get("status"), "epochs": summary.get("epochs_completed", summary.get("epoch")),
            "device": summary.get("device"), "oom": bool(OOM.search(text)),
            "memory_share_env": _memory_lines(text)}


def _memory_lines(text: str) -> list[str]:
    """Lines of the run's log that mention its memory share (once the run prints it)."""
    return [line.strip() for line in text.splitlines() if "MEMORY_FRACTION" in line or "memory_share" in line][:4]


class _GpuSampler:
    """Polls nvidia-smi while the agents run: how many processes were on the GPU at once, memory of each."""

    def __init__(self, period_s: float = 0.5):
        self.period_s, self.samples, self._stop = period_s, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def start(self) -> None:
        if self.available:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        command = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self.period_s):
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            rows = [line.split(",") for line in out.splitlines() if line.count(",") == 1]
            self.samples.append({pid.strip(): int(mib) for pid, mib in rows if mib.strip().isdigit()})

    def report(self) -> dict[str, Any]:
        if not self.available:
            return {"nvidia_smi": False}
        peak: dict[str, int] = {}
        for sample in self.samples:
            for pid, mib in sample.items():
                peak[pid] = max(peak.get(pid, 0), mib)
        return {"nvidia_smi": True, "samples": len(self.samples),
                "most_processes_at_once": max((len(sample) for sample in self.samples), default=0),
                "peak_memory_mib_by_pid": peak}


def _print_agents(result: dict[str, Any]) -> None:
    if "error" in result:
        print(f"[gpu_check] agents: {result['error']}", flush=True)
        return
    print(f"[gpu_check] 2 agents on GPU 0 (sweep {result['sweep']}): launcher exit {result['launcher']['rc']}; "
          f"gpu {result['gpu']}", flush=True)
    for run in result["runs"]:
        print(f"[gpu_check]   run {run['run']}: {run['status']}, out of memory: {run['oom']}", flush=True)
    if not result["ok"]:
        print(f"[gpu_check]   launcher said: {result['launcher']['tail']}", flush=True)


# --- helpers --------------------------------------------------------------------------------------
def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise subprocess.SubprocessError(f"{' '.join(command[2:])} exited {result.returncode}: {_tail(result.stderr)}")
    return result


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
