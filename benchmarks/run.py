"""Run every benchmark and print one table (`make bench`); results also go to a JSON file.

Each benchmark module exposes `run(quick: bool = False) -> list[dict]` whose rows carry
`benchmark`, `case`, `value`, `unit`, `reference` (the straightforward way, measured in the same run)
and `ratio` (how many times better than the reference; >1 is better). A module that cannot run here
(missing data) returns rows with a `note` instead of failing the whole table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

# Order of the table: data in, training, sweeps, launch, evaluation.
MODULES = (
    "benchmarks.data_pipeline",
    "benchmarks.device_augment",
    "benchmarks.train_step",
    "benchmarks.backends",
    "benchmarks.pipeline",
    "benchmarks.controller",
    "benchmarks.scale",
    "benchmarks.utilisation",
    "benchmarks.postprocess",
    "benchmarks.sync",
)


def format_table(rows: list[dict]) -> str:
    headers = ("benchmark", "case", "value", "unit", "reference", "ratio", "note")
    cells = [[_cell(row.get(header)) for header in headers] for row in rows]
    widths = [max(len(header), *(len(line[i]) for line in cells)) if cells else len(header) for i, header in enumerate(headers)]
    lines = [" | ".join(header.ljust(width) for header, width in zip(headers, widths))]
    lines.append("-+-".join("-" * width for width in widths))
    lines.extend(" | ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells)
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run of the benchmarks)")
    parser.add_argument("--only", action="append", default=[], help="run only modules whose name contains this")
    parser.add_argument("--out", default="benchmarks/results/latest.json")
    args = parser.parse_args(argv)

    rows: list[dict] = []
    failures = 0
    for name in MODULES:
        if args.only and not any(part in name for part in args.only):
            continue
        started = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(name)
            module_rows = module.run(quick=args.quick)
        except Exception:  # one broken benchmark should not hide the others' numbers
            failures += 1
            traceback.print_exc()
            module_rows = [{"benchmark": name.split(".")[-1], "case": "FAILED", "note": "see traceback above"}]
        rows.extend(module_rows)
        print(f"   {name} took {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    print(format_table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()},
        "quick": args.quick,
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nresults: {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
