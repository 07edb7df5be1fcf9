"""Exploratory statistics of a challenge-layout dataset (placeholder; plots follow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_eda(data_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    raise NotImplementedError


def format_summary(summary: dict[str, Any]) -> str:
    raise NotImplementedError
