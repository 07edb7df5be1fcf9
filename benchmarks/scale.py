"""A local sweep at scale: thousands of runs of an instant trainer through the real store, agents and launcher.

For random, grid and bayes, and each number of runs N (1 000 and 5 000; bayes 1 000 and 2 000, see below):
`python -m harness.launch --gpus none --agents K --sweep ID` runs a sweep of N runs (`run_cap` N; the grid
has 6 000 cells) whose trainer is a two-line shell script (one epoch row, a metric that depends on the
parameters, no Python), so what is measured is the controller: store, agents, launcher. Per (method, N):
- claims/s: runs started per second over the sweep (from the runs' claim times), and over its last tenth
  (a store that slows as it fills shows it there);
- controller CPU per run: CPU of the launcher, its agents and their children (getrusage of this process's
  children), less the trainer's own CPU (measured alone in the same run), divided by N;
- `harness status --sweep ID` latency (the CLI, wall and CPU) beside the same command on an empty sweep
  (Python and imports);
- store size (sweeps.db and its WAL) per run;
- the claim alone (`Store.claim_run`) beside the engine alone (`sweeps.next_run` on the same runs),
  benchmarks.controller's measurement, also at 5 000 runs for bayes: W&B's bayes engine costs ~0.25 s per
  proposal at 5 000 runs and claims are serialised (the claim holds the store's write lock), so a
  5 000-run bayes sweep would take over 15 minutes here; its end-to-end figures stop at 2 000 and the
  5 000-run claim says what the rest would cost.

The machine is shared: CPU figures (getrusage, process_time) are the ones to read; wall-clock rates are
upper bounds of the time taken. Run alone: `python -m benchmarks.scale [--quick] [--sizes 1000,5000]
[--methods random,grid,bayes] [--agents 2] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRIC = {"name": "val_dice_coef", "goal": "maximize"}
METHODS = ("random", "grid", "bayes")
SIZES = (1000, 5000)
BAYES_SIZES = (1000, 2000)  # end to end; the claim alone is measured at SIZES too
QUICK_SIZES = (50,)
GRID_SHAPE = (100, 60)  # 6 000 cells: enough for the largest grid sweep
# The instant trainer: the run folder from the run's variables, one epoch row with the metric, exit 0.
TRAINER = r"""#!/bin/sh
dir="$HARNESS_ROOT/$HARNESS_SWEEP_ID/$WANDB_RUN_ID"
mkdir -p "$dir"
awk -v args="$*" 'BEGIN { x = 0.5; y = 0.5; n = split(args, parts, " ");
  for (i = 1; i <= n; i++) { split(parts[i], kv, "="); if (kv[1] == "--x") x = kv[2]; if (kv[1] == "--y") y = kv[2] }
  printf "{\"epoch\": 1, \"val_dice_coef\": %.6f, \"time\": %d}\n", 1 - (x - 0.3) ^ 2 - (y - 0.6) ^ 2, systime() }' \
  > "$dir/metrics.jsonl"
"""


def sweep_spec(method: str, runs: int, trainer: Path) -> dict:
    """Two parameters: a 100 x 60 grid for grid, uniform on [0, 1] for random and bayes."""
    if method == "grid":
        parameters = {"x": {"values": [index / GRID_SHAPE[0] for index in range(GRID_SHAPE[0])]},
                      "y": {"values": [index / GRID_SHAPE[1] for index in range(GRID_SHAPE[1])]}}
    else:
        parameters = {name: {"distribution": "uniform", "min": 0.0, "max": 1.0} for name in ("x", "y")}
    return {"method": method, "metric": METRIC, "parameters": parameters, "run_cap": runs,
            "command": ["/bin/sh", str(trainer), "${args}"]}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the process and its children, the result) of one command."""
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - started, _children_cpu() - cpu, done


def trainer_cpu(folder: Path, trainer: Path, repeats: int) -> float:
    """CPU seconds of one run of the trainer alone, started from Python as an agent starts it."""
    env = {**os.environ, "HARNESS_ROOT": str(folder / "bare"), "HARNESS_SWEEP_ID": "bare"}
    before = _children_cpu()
    for index in range(repeats):
        subprocess.run(["/bin/sh", str(trainer), "--x=0.5", "--y=0.5"], env={**env, "WANDB_RUN_ID": f"r{index}"},
                       check=True)
    return (_children_cpu() - before) / repeats


def status_latency(root: Path, sweep_id: str, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `python -m harness status --sweep ID --root ROOT`."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu, done = _timed([sys.executable, "-m", "harness", "status", "--sweep", sweep_id, "--root", str(root)],
                                 cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"harness status failed: {done.stderr[-500:]}")
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def store_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.glob("sweeps.db*") if path.is_file())


def launch_sweep(folder: Path, trainer: Path, method: str, runs: int, agents: int) -> dict:
    """One sweep of `runs` runs through the launcher; what it cost (see the module docstring)."""
    from harness.sweep.store import Store

    root = folder / f"{method}-{runs}"
    with Store(root) as store:
        sweep_id = store.create_sweep(sweep_spec(method, runs, trainer), workdir=folder)
    wall, cpu, done = _timed([sys.executable, "-m", "harness.launch", "--gpus", "none", "--agents", str(agents),
                              "--stagger", "0", "--sweep", sweep_id, "--root", str(root)], cwd=REPO)
    with Store(root) as store:
        finished = store.runs(sweep_id, states=["finished"])
        counts = {state: count for state, count in store.counts(sweep_id).items() if count}
    if done.returncode != 0 or len(finished) != runs:
        raise RuntimeError(f"{method} sweep of {runs}: exit {done.returncode}, {counts}: {done.stdout[-1000:]}")
    starts = sorted(run.started for run in finished)
    tail = starts[-max(2, runs // 10):]
    return {"root": root, "sweep_id": sweep_id, "wall_s": wall, "cpu_s": cpu,
            "claims_per_s": (runs - 1) / max(starts[-1] - starts[0], 1e-9),
            "tail_claims_per_s": (len(tail) - 1) / max(tail[-1] - tail[0], 1e-9)}


def measure(folder: Path, trainer: Path, method: str, runs: int, agents: int, trainer_s: float,
            status_reference: tuple[float, float], repeats: int) -> list[dict]:
    """The rows of one (method, runs) sweep."""
    result = launch_sweep(folder, trainer, method, runs, agents)
    status_wall, status_cpu = status_latency(result["root"], result["sweep_id"], repeats)
    size = store_bytes(result["root"])
    controller_ms = (result["cpu_s"] / runs - trainer_s) * 1000
    case = f"{method}, {runs} runs"
    print(f"  {case}: {result['claims_per_s']:.1f} claims/s (last tenth {result['tail_claims_per_s']:.1f}), "
          f"controller {controller_ms:.1f} ms CPU/run, status {status_wall * 1000:.0f} ms, store {size / 1e6:.1f} MB "
          f"({result['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    common = {"benchmark": "scale", "method": method, "runs": runs, "agents": agents}
    return [
        {**common, "metric": "claims_per_s", "case": f"{case}: claims/s (last tenth in reference)",
         "value": result["claims_per_s"], "unit": "claims/s", "reference": result["tail_claims_per_s"],
         "ratio": result["tail_claims_per_s"] / result["claims_per_s"]},
        {**common, "metric": "controller_cpu_ms_per_run", "case": f"{case}: controller CPU per run",
         "value": controller_ms, "unit": "ms CPU", "reference": trainer_s * 1000,
         "note": f"reference: the trainer alone; launch {result['wall_s']:.0f} s wall, {result['cpu_s']:.1f} s CPU"},
        {**common, "metric": "status_ms", "case": f"{case}: harness status", "value": status_wall * 1000,
         "unit": "ms", "reference": status_reference[0] * 1000, "ratio": status_reference[0] / status_wall,
         "note": f"CPU {status_cpu * 1000:.0f} ms (empty sweep {status_reference[1] * 1000:.0f} ms)"},
        {**common, "metric": "store_bytes_per_run", "case": f"{case}: store size per run", "value": size / runs,
         "unit": "bytes", "note": f"{size / 1e6:.2f} MB in all"},
    ]


def claim_rows(sizes: list[int], methods: tuple[str, ...], repeats: int) -> list[dict]:
    """benchmarks.controller's claim-vs-engine measurement at these sizes, on a space with cells enough."""
    from benchmarks import controller

    space = dict(controller.SPACE, seed=list(range(2)))  # 7 680 grid cells
    rows = controller.bench_next_run(sizes, repeats, methods=methods, space=space)
    for row, (method, size) in zip(rows, [(method, size) for method in methods for size in sizes]):
        row.update(benchmark="scale", method=method, runs=size, metric="claim_ms")
    return rows


def empty_status(folder: Path, trainer: Path, repeats: int) -> tuple[float, float]:
    from harness.sweep.store import Store

    root = folder / "empty"
    with Store(root) as store:
        sweep_id = store.create_sweep(sweep_spec("random", 1, trainer), workdir=folder)
    return status_latency(root, sweep_id, repeats)


def run(quick: bool = False, sizes: tuple[int, ...] | None = None, methods: tuple[str, ...] = METHODS,
        agents: int = 2) -> list[dict]:
    sizes = tuple(sizes or (QUICK_SIZES if quick else SIZES))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cloudsweep-scale-") as name:
        folder = Path(name)
        trainer = folder / "instant_trainer.sh"
        trainer.write_text(TRAINER)
        repeats = 1 if quick else 3
        trainer_s = trainer_cpu(folder, trainer, 10 if quick else 100)
        reference = empty_status(folder, trainer, repeats)
        for method in methods:
            end_to_end = sizes if method != "bayes" or quick or sizes != SIZES else BAYES_SIZES
            for size in end_to_end:
                rows += measure(folder, trainer, method, size, agents, trainer_s, reference, repeats)
        claimed = sorted(set(sizes) | (set(BAYES_SIZES) if "bayes" in methods and sizes == SIZES else set()))
        rows += claim_rows(claimed, methods, repeats=1 if quick else 3)
    return rows


def scale_table(rows: list[dict]) -> str:
    """One line per (method, runs): the figures of the docs' table."""
    from harness.tables import format_table

    by_case: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault((row["method"], row["runs"]), {})[row["metric"]] = row
    lines = []
    for (method, runs), found in sorted(by_case.items(), key=lambda item: (METHODS.index(item[0][0]), item[0][1])):
        lines.append([method, str(runs), _cell(found, "claims_per_s"), _cell(found, "claims_per_s", "reference"),
                      _cell(found, "controller_cpu_ms_per_run"), _cell(found, "status_ms"),
                      _cell(found, "store_bytes_per_run", digits=".0f"), _cell(found, "claim_ms"),
                      _cell(found, "claim_ms", "reference")])
    return format_table(lines, header=["method", "runs", "claims/s", "last tenth", "ctl CPU ms/run", "status ms",
                                       "store B/run", "claim ms", "engine ms"], align="llrrrrrrr")


def _cell(found: dict[str, dict], metric: str, key: str = "value", digits: str = ".3g") -> str:
    return format(found[metric][key], digits) if metric in found else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZES[0]} runs per method (a smoke run)")
    parser.add_argument("--sizes", default=None, help="numbers of runs, comma-separated (default 1000,5000)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    sizes = tuple(int(part) for part in args.sizes.split(",")) if args.sizes else None
    rows = run(quick=args.quick, sizes=sizes, methods=tuple(args.methods.split(",")), agents=args.agents)
    print(scale_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
