"""Live W&B sync from the launcher (harness.launch.sync): delay and the controller's CPU cost.

8 runs train at once (real wandb offline writers that log one "epoch" row every `epoch_s` seconds
with step=epoch, into `<root>/<sweep>/<run>/wandb/`, flushing their .wandb every 5 s: what
`--sync` gives the runs) while a separate "controller" process
runs `LiveSyncer` on the sweep folder, against the fake W&B backend of the tests
(tests/fakes/wandb_backend.py; the real service cannot run here).

1. Delay: from a row's `run.log` in its writer to its arrival at the fake (median and max over all
   rows of all runs). Reference: the same writers logging online straight to the fake (what a run on
   a node with network shows), measured in the same run.
2. CPU cost: CPU seconds of the controller process and its `wandb beta sync` children (user+sys,
   getrusage), per minute of sweep wall time. No reference: there is no other way to get live W&B
   from offline nodes here.

Run alone: `python -m benchmarks.sync [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = "local-benchsync"

WRITER = r'''
import json, sys, time, wandb
run_id, folder, epochs, epoch_s, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
run = wandb.init(mode=mode, project="bench", id=run_id, dir=folder, group="local-benchsync",
                 config={"sweep_id": "local-benchsync"})
logged = []
for epoch in range(1, epochs + 1):
    time.sleep(epoch_s)
    logged.append(time.time())
    run.log({"loss": 1.0 / epoch}, step=epoch, commit=True)
run.finish()
print(json.dumps(logged))
'''

CONTROLLER = r'''
import json, resource, sys, time
from harness.launch import sync
root, sweep, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
syncer = sync.LiveSyncer(root, sweep, poll_s=2.0, echo=lambda line: None).start()
ready = __import__("pathlib").Path(root) / "writers-done"
while not ready.exists():
    time.sleep(0.2)
started = float(ready.read_text())
syncer.close(timeout_s=300)
self_usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"self": self_usage.ru_utime + self_usage.ru_stime,
                  "children": children.ru_utime + children.ru_stime, "processes": syncer.started}))
'''


def _writers(backend, env: dict, root: Path, runs: int, epochs: int, epoch_s: float, mode: str) -> dict[str, list[float]]:
    processes = {}
    for index in range(runs):
        run_id = f"{mode[:3]}run{index}"
        folder = root / SWEEP / run_id
        folder.mkdir(parents=True, exist_ok=True)
        processes[run_id] = subprocess.Popen([sys.executable, "-c", WRITER, run_id, str(folder), str(epochs),
                                              str(epoch_s), mode], env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, text=True)
    logged = {}
    for run_id, process in processes.items():
        out, _ = process.communicate(timeout=600)
        logged[run_id] = json.loads(out.strip().splitlines()[-1])
    return logged


def _delays(backend, logged: dict[str, list[float]], deadline_s: float = 120) -> list[float]:
    end = time.time() + deadline_s
    while time.time() < end:
        with backend.lock:
            complete = all(run_id in backend.runs and len(backend.runs[run_id].received_at) >= len(times)
                           for run_id, times in logged.items())
        if complete:
            break
        time.sleep(0.2)
    delays = []
    for run_id, times in logged.items():
        run = backend.run(run_id)
        assert run.received_steps() == list(range(1, len(times) + 1)), (run_id, run.received_steps())
        delays.extend(arrived - sent for arrived, sent in zip(run.received_at, times))
    return delays


def run(quick: bool = False) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from harness.launch import sync
    from tests.fakes.wandb_backend import FakeWandbBackend

    runs, epochs, epoch_s = (8, 4, 5.0) if quick else (8, 10, 10.0)
    backend = FakeWandbBackend().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sync-") as scratch:
            base = Path(scratch)
            # What `--sync` gives users: the runs' flush interval of sync.RUN_ENV and W&B's own
            # file_stream interval (15 s; the tests' 1 s is left out).
            env = {**os.environ, **backend.client_env(base / "home"), **sync.RUN_ENV, "WANDB_SILENT": "true",
                   "PYTHONPATH": str(REPO)}
            env.pop("WANDB_MODE", None)
            env.pop("WANDB_X_FILE_STREAM_TRANSMIT_INTERVAL", None)
            online = _delays(backend, _writers(backend, env, base / "online", runs, epochs, epoch_s, "online"))

            root = base / "offline"
            (root / SWEEP).mkdir(parents=True)
            controller = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(root), SWEEP, str(runs)], env=env,
                                          stdout=subprocess.PIPE, text=True)
            started = time.time()
            logged = _writers(backend, env, root, runs, epochs, epoch_s, "offline")
            (root / "writers-done").write_text(str(started))
            out, _ = controller.communicate(timeout=600)
            wall = time.time() - started
            usage = json.loads(out.strip().splitlines()[-1])
            offline = _delays(backend, logged)
    finally:
        backend.close()
    cpu = usage["self"] + usage["children"]
    return [
        {"benchmark": "sync", "case": f"epoch logged -> row at W&B, {runs} runs (median)",
         "value": round(statistics.median(offline), 2), "unit": "s",
         "reference": round(statistics.median(online), 2), "note": "reference: the same runs online"},
        {"benchmark": "sync", "case": f"epoch logged -> row at W&B, {runs} runs (max)",
         "value": round(max(offline), 2), "unit": "s", "reference": round(max(online), 2)},
        {"benchmark": "sync", "case": f"controller CPU syncing {runs} concurrent runs",
         "value": round(cpu / (wall / 60), 1), "unit": "CPU s / min",
         "note": f"{cpu:.1f} CPU s over {wall:.0f} s ({usage['processes']} sync processes; "
                 f"controller thread {usage['self']:.1f} s)"},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for row in run(quick=args.quick):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
