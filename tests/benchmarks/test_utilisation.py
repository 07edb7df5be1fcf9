"""Slot utilisation arithmetic (benchmarks.utilisation) on hand-made run records."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.utilisation import slot_utilisation


@dataclasses.dataclass
class _Run:
    agent: str | None
    started: float | None
    ended: float | None


def test_busy_fraction_per_slot_and_over_the_window():
    runs = [_Run("a", 0.0, 4.0), _Run("a", 5.0, 10.0),  # a: 9 s busy of 10, one 1 s gap
            _Run("b", 2.0, 6.0), _Run("b", 6.0, 8.0),   # b: 6 s busy of 6, no gap
            _Run(None, 0.0, 1.0), _Run("c", 3.0, None)]  # ignored: no agent, not ended
    stats = slot_utilisation(runs, window_start=0.0, window_end=10.0)
    assert stats["slots"] == 2 and stats["runs"] == 4
    assert stats["busy_s"] == pytest.approx(15.0)
    assert stats["utilisation"] == pytest.approx(15.0 / 20.0)
    assert stats["per_slot"] == pytest.approx({"a": 0.9, "b": 1.0})
    assert stats["steady_utilisation"] == pytest.approx(0.95)
    assert stats["mean_gap_s"] == pytest.approx(0.5)


def test_overlapping_runs_of_one_slot_count_once_and_empty_input_is_zero():
    stats = slot_utilisation([_Run("a", 0.0, 4.0), _Run("a", 2.0, 6.0)])
    assert stats["busy_s"] == pytest.approx(6.0) and stats["utilisation"] == pytest.approx(1.0)
    assert slot_utilisation([])["utilisation"] == 0.0
