"""What a training run says about itself in its summary.json (harness.runfolder.SUMMARY_FILE).

The summary is rewritten when the run starts, after every epoch and when it ends (finished,
preempted, stopped or failed): the agents, the SLURM controller and `harness status` read it to know
what the run did, so it always holds the run's status, its best and last metrics and who wrote it.

Its `device` entry (from the moment the model is compiled) is what this attempt trains on:
harness.run.device.describe (Keras backend, CPU or GPU and its name and memory, the GPUs
CUDA_VISIBLE_DEVICES named, precision, compile switches, memory share), plus `allow_cpu`, `cpu_fallback`
(handed a GPU, trained on the CPU) and `memory_share_applied`. The same dict goes to the W&B config
(`device`) and to the TensorBoard HParams (`device.<key>`); `device_label` is its short form for
`harness status`.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from harness import model as model_module
from harness import runfolder
from harness.config import Config
from harness.run import checkpoint as checkpoint_module


class RunSummary:
    """The summary.json of one run folder: which run it is and what it has done so far."""

    def __init__(self, run_dir: Path, config: Config, run_id: str, sweep_id: str | None):
        self.run_dir = run_dir
        self.config = config
        self.run_id = run_id
        self.sweep_id = sweep_id
        self.device: dict[str, Any] | None = None  # this attempt's device record, once the model is compiled

    def write(self, status: str, state: checkpoint_module.TrainState | None, rows: list[dict[str, Any]],
              **extra: Any) -> dict[str, Any]:
        """Write the summary for `status` after the epochs in `rows` (the metrics rows); returns it."""
        state = state or checkpoint_module.TrainState()
        summary = {
            "run_id": self.run_id,
            "sweep_id": self.sweep_id,
            "status": status,
            "epochs_completed": state.epoch,
            "epochs": self.config.epochs,
            "best": {"metric": self.config.monitor, "value": state.best_value, "epoch": state.best_epoch},
            "final": rows[-1] if rows else {},
            "iterations": state.iterations,
            "stopped_early": state.stopped_early,
            "model": model_module.describe_model(self.config),
            **({"device": self.device} if self.device is not None else {}),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        runfolder.write_summary(self.run_dir, summary)
        return summary


def wandb_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's summary that W&B shows in its run table."""
    best = summary.get("best") or {}
    return {f"best_{best.get('metric')}": best.get("value"), "best_epoch": best.get("epoch"), "status": summary.get("status")}


_PRECISION_SHORT = {"mixed_bfloat16": "bf16", "mixed_float16": "fp16"}


def device_label(device: Mapping[str, Any] | None) -> str:
    """A summary's device record in a few characters (`harness status`): "cpu", "cpu fallback" (handed a GPU
    it could not use, allow_cpu), "gpu:H100 80GB HBM3", plus "bf16"/"fp16" under mixed precision and the
    memory share ("45%") when runs share the GPU; "" without a record (a run from before, or not started)."""
    if not device:
        return ""
    if device.get("device") == "GPU":
        name = str(device.get("device_name") or "unknown").removeprefix("NVIDIA ").strip()
        memory = device.get("gpu_memory_gb")
        if memory and "GB" not in name:
            name += f" {memory:.0f}GB"
        parts = [f"gpu:{name}"]
    else:
        parts = ["cpu fallback" if device.get("cpu_fallback") else "cpu"]
    precision = _PRECISION_SHORT.get(str(device.get("precision")))
    if precision:
        parts.append(precision)
    share = device.get("memory_share")
    if share and device.get("device") == "GPU":
        parts.append(f"{share:.0%}")
    return " ".join(parts)


def device_line(device: Mapping[str, Any]) -> str:
    """The run log's line about its device: what `harness status` shows, with the backend and compile mode."""
    name = device.get("device_name") or ""
    jit = device.get("jit_compile")
    if "jit_compile_resolved" in device:
        jit = f"{jit} ({'on' if device['jit_compile_resolved'] else 'off'})"
    share = device.get("memory_share")
    return (f"training on {device_label(device)} ({name}); Keras backend {device.get('backend')} "
            f"{device.get('backend_version')}, precision {device.get('precision')}, jit_compile {jit}, "
            f"steps_per_execution {device.get('steps_per_execution')}"
            + (f", GPU memory share {share}" if share else ""))
