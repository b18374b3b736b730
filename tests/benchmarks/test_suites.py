"""Pieces of the suites that need no broker, no peer library and no timing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.bandits import _same_curves  # pyright: ignore[reportPrivateUsage]
from benchmarks.ope import coverage_se_pct


def test_coverage_error_stays_honest_at_the_ends() -> None:
    # 10 of 10 logs covered: the plain binomial form would say 0, as if 10 logs settled it
    assert coverage_se_pct(10, 10) == pytest.approx(100 * math.sqrt(12 / 14 * 2 / 14 / 14))
    assert coverage_se_pct(0, 10) == pytest.approx(coverage_se_pct(10, 10))
    assert coverage_se_pct(10, 10) > 5.0
    assert coverage_se_pct(95, 100) == pytest.approx(2.457, abs=0.001)  # binomial: 2.18
    assert coverage_se_pct(950, 1000) < coverage_se_pct(95, 100)


def test_identical_regret_curves_share_one_line_that_names_every_system() -> None:
    same = np.array([1.0, 2.0, 3.0])
    shown = _same_curves(
        {
            "oracle": np.zeros(3),
            "encore linucb": np.array([1.0, 1.5, 2.0]),
            "mabwiser linucb (one shared model) first 500 rounds": same,
            "mabwiser linucb (one shared model) per-round predict, first 500 rounds": same.copy(),
        }
    )
    assert [label for label, _ in shown] == [
        "encore linucb",
        "mabwiser linucb (one shared model) first 500 rounds "
        "(and its per-round predict, first 500 rounds row: the same choices)",
    ]
