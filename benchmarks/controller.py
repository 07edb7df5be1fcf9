"""The local sweep controller's costs: proposing a run through the store, and starting it.

1. `next_run` for random, grid and bayes with 10 / 100 / 200 / 500 finished runs in the sweep (each
   with a 20-epoch metric history). Value: one `Store.claim_run` (the write transaction, reading every
   run, converting them for the engine, `sweeps.next_run`, inserting the new run). Reference: the
   engine alone, `sweeps.next_run` on the same runs already built as `SweepRun`s, measured in the same
   process. ratio = reference / value, so 1.0 means the store adds nothing and 0.9 means it adds 10%.
2. Claim-to-start latency of the agent: from the claim (the run's `started` time, taken when the
   claim transaction begins) to the child's first instruction (the time tests/fakes/fake_train.py
   records when its `main` starts). Reference: the same program started bare with `subprocess.Popen`,
   from just before `Popen` to the same first instruction (what any launcher pays for a Python child).

Run alone: `python -m benchmarks.controller [--quick]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAIN = REPO / "tests" / "fakes" / "fake_train.py"
METRIC = {"name": "val_dice_coef", "goal": "maximize"}
COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
# The reference search space (sweeps/random.yaml): 3840 grid cells, enough for 500 existing runs.
SPACE = {
    "epochs": [20, 32, 50, 75],
    "batch_size": [256, 128, 64, 32],
    "dropout": [0.0, 0.2, 0.3, 0.4, 0.5],
    "filters": [8, 16],
    "learning_rate": [0.01, 0.001, 0.0001, 0.0003, 0.00003, 0.00001],
    "optimizer": ["adam", "nadam", "sgd", "rmsprop"],
}


def _spec(method: str, space: dict = SPACE) -> dict:
    parameters = {name: {"values": values} for name, values in space.items()}
    if method == "bayes":
        parameters["learning_rate"] = {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}
        parameters["dropout"] = {"distribution": "uniform", "min": 0.0, "max": 0.5}
    return {"method": method, "metric": METRIC, "parameters": parameters, "program": str(FAKE_TRAIN),
            "command": COMMAND}


def _configs(method: str, count: int, rng: random.Random, space: dict = SPACE) -> list[dict]:
    if method == "grid":  # the first cells, as the grid would have handed them out
        names = list(space)
        return [dict(zip(names, cell)) for cell in itertools.islice(itertools.product(*space.values()), count)]
    configs = []
    for _ in range(count):
        config = {name: rng.choice(values) for name, values in space.items()}
        if method == "bayes":
            config["learning_rate"] = 10 ** rng.uniform(-5, -2)
            config["dropout"] = rng.uniform(0.0, 0.5)
        configs.append(config)
    return configs


def _fill(store, sweep_id: str, configs: list[dict], rng: random.Random) -> None:
    """Write finished runs with 20-epoch histories straight into the store (setup, not measured)."""
    now = time.time()
    with store._write() as db:  # one transaction: thousands of claim/record/finish calls would take minutes
        for seq, config in enumerate(configs, start=1):
            quality = rng.random()
            values = [quality * (1 - 0.8 ** epoch) for epoch in range(1, 21)]
            history = [{"epoch": epoch, "val_dice_coef": value} for epoch, value in enumerate(values, start=1)]
            db.execute(
                "INSERT INTO runs (id, sweep_id, seq, config, state, attempts, created, started, ended, history, "
                "metric_values, best_metric, summary) VALUES (?, ?, ?, ?, 'finished', 1, ?, ?, ?, ?, ?, ?, ?)",
                (store._new_run_id(db), sweep_id, seq, json.dumps(config), now, now, now, json.dumps(history),
                 json.dumps(values), max(values), json.dumps({"status": "finished"})),
            )


def _paired(reference, value, repeats: int, after) -> tuple[float, float]:
    """Median seconds of `reference` and of `value`, timed alternately so that load from other
    processes falls on both alike; `after` runs (untimed) after each `value`."""
    reference_times, value_times = [], []
    for _ in range(repeats):
        for function, times in ((reference, reference_times), (value, value_times)):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
        after()
    return statistics.median(reference_times), statistics.median(value_times)


def bench_next_run(sizes: list[int], repeats: int, methods: tuple[str, ...] = ("random", "grid", "bayes"),
                   space: dict = SPACE) -> list[dict]:
    """Claim through the store vs the engine alone, per method and number of finished runs (`space`: the
    search space; a grid needs at least max(sizes) cells)."""
    from harness.sweep import engine
    from harness.sweep.store import Store

    sweeps = engine.load_engine()
    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        for method in methods:
            for size in sizes:
                spec = _spec(method, space)
                sweep_id = store.create_sweep(spec)
                _fill(store, sweep_id, _configs(method, size, rng, space), rng)
                runs = store.runs(sweep_id)
                engine_runs = engine.engine_runs(runs, METRIC["name"], max_attempts=5)
                engine.propose(spec, runs)  # warm caches once
                claimed = []

                def claim() -> None:
                    claimed.append(store.claim_run(sweep_id, agent="bench", host="bench"))

                def forget() -> None:
                    # Each claim must see the same N runs as the engine alone: a new running run would
                    # make bayes also model the run in flight (more work, not the store's).
                    with store._write() as db:
                        db.execute("DELETE FROM runs WHERE id = ?", (claimed[-1].id,))

                reference, value = _paired(lambda: sweeps.next_run(spec, engine_runs), claim, repeats, forget)
                assert all(run is not None for run in claimed)
                rows.append({"benchmark": "controller", "case": f"next_run {method}, {size} runs: store claim",
                             "value": value * 1000, "unit": "ms", "reference": reference * 1000,
                             "ratio": reference / value})
                print(f"  {method:6s} {size:4d} runs: claim {value * 1000:7.1f} ms, engine alone "
                      f"{reference * 1000:7.1f} ms", file=sys.stderr, flush=True)
        store.close()
    return rows


def bench_claim_to_start(runs: int) -> list[dict]:
    from harness.sweep import agent
    from harness.sweep.store import Store

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "runs"
        spec = {"method": "grid", "metric": METRIC, "program": str(FAKE_TRAIN), "command": COMMAND,
                "parameters": {"seed": {"values": list(range(runs))}, "epochs": {"value": 1}}}
        with Store(root) as store:
            sweep_id = store.create_sweep(spec, workdir=folder)
        previous = os.environ.get("FAKE_EPOCH_SECONDS")
        os.environ["FAKE_EPOCH_SECONDS"] = "0"
        try:
            agent.run_agent(sweep_id, root=root, poll_s=0.01, echo=lambda line: None)
        finally:
            if previous is None:
                os.environ.pop("FAKE_EPOCH_SECONDS", None)
            else:
                os.environ["FAKE_EPOCH_SECONDS"] = previous
        with Store(root) as store:
            latencies = []
            for run in store.runs(sweep_id):
                starts = (root / sweep_id / run.id / "starts.jsonl").read_text().splitlines()
                latencies.append(json.loads(starts[0])["time"] - run.started)
        bare = []
        for index in range(runs):
            env = {**os.environ, "FAKE_EPOCH_SECONDS": "0", "HARNESS_ROOT": str(root), "HARNESS_SWEEP_ID": "bare",
                   "WANDB_RUN_ID": f"bare{index:04d}"}
            started = time.time()
            subprocess.run([sys.executable, str(FAKE_TRAIN), "--epochs=1"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            first = json.loads((root / "bare" / f"bare{index:04d}" / "starts.jsonl").read_text().splitlines()[0])
            bare.append(first["time"] - started)
    value, reference = statistics.median(latencies), statistics.median(bare)
    print(f"  claim to child start: {value * 1000:.1f} ms (bare Popen to first instruction "
          f"{reference * 1000:.1f} ms)", file=sys.stderr, flush=True)
    return [{"benchmark": "controller", "case": f"agent claim -> child start (median of {runs})",
             "value": value * 1000, "unit": "ms", "reference": reference * 1000, "ratio": reference / value}]


def run(quick: bool = False) -> list[dict]:
    sizes = [10, 100, 200] if quick else [10, 100, 200, 500]
    rows = bench_next_run(sizes, repeats=2 if quick else 5)
    rows += bench_claim_to_start(runs=5 if quick else 15)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    from benchmarks.run import format_table

    print(format_table(run(quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
