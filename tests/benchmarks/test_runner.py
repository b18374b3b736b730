"""The benchmark runner's helpers: figures a sample supports, memory measures, plot colours."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _runner
from benchmarks._runner import (
    SERIES_COLOURS,
    TOO_SHORT,
    Context,
    colour,
    fit_line,
    fmt,
    format_value,
    median,
    percentile,
    pss_mb,
    rate,
    ratio,
    smaps_rollup_mb,
)
from benchmarks.daemon import daemon_pss_mb, second_half_fit

needs_smaps = pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc/PID/smaps_rollup"
)


# ----------------------------------------------------------------------------- memory


@needs_smaps
def test_pss_of_this_process_is_positive_and_at_most_its_resident_size() -> None:
    totals = smaps_rollup_mb()  # one reading: Pss and Rss of the same instant
    assert 0.0 < totals["Pss"] <= totals["Rss"]
    own = pss_mb()
    assert own is not None and own > 0.0
    by_pid = pss_mb(os.getpid())
    assert by_pid is not None and by_pid > 0.0


@needs_smaps
def test_pss_counts_what_a_process_shares_with_others_in_part() -> None:
    # A second interpreter maps the same executable and libraries as this one: its resident
    # size counts those pages whole, its proportional size only its share of them.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        totals: dict[str, float] = {}
        for _ in range(100):  # until the interpreter is up and its mappings are in place
            totals = smaps_rollup_mb(child.pid)
            if totals.get("Shared_Clean", 0.0) > 0.0:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert totals["Shared_Clean"] > 0.0
        assert 0.0 < totals["Pss"] < totals["Rss"]
    finally:
        child.communicate(b"")
    assert pss_mb(child.pid) is None  # the process is gone
    assert smaps_rollup_mb(child.pid) == {}


@needs_smaps
def test_daemon_memory_adds_the_decoding_process_proportional_size() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        for _ in range(100):
            if smaps_rollup_mb(child.pid).get("Shared_Clean", 0.0) > 0.0:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        alone = types.SimpleNamespace(decoding=types.SimpleNamespace(child_pid=None))
        paired = types.SimpleNamespace(decoding=types.SimpleNamespace(child_pid=child.pid))
        own, both, theirs = daemon_pss_mb(alone), daemon_pss_mb(paired), pss_mb(child.pid)
        assert own is not None and both is not None and theirs is not None
        # this process's PSS moves a little between readings (pytest allocates)
        assert both == pytest.approx(own + theirs, abs=5.0)
        assert both > own
    finally:
        child.communicate(b"")
    gone = types.SimpleNamespace(decoding=types.SimpleNamespace(child_pid=child.pid))
    counted = daemon_pss_mb(gone)
    own = pss_mb()
    assert counted is not None and own is not None
    assert counted == pytest.approx(own, abs=5.0)  # a decoding process gone counts 0


# ----------------------------------------------------------------------------- figures


def test_rates_need_measurable_time() -> None:
    assert rate(1000, 2.0) == 500.0
    assert rate(1000, 0.0) == TOO_SHORT
    assert rate(1000, -0.5) == TOO_SHORT  # a difference of two timings that came out negative
    assert rate(1000, _runner.MIN_TIMED_S / 2) == TOO_SHORT
    assert rate(1000, math.nan) == TOO_SHORT


def test_ratios_need_a_nonzero_finite_base() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) == TOO_SHORT
    assert ratio(TOO_SHORT, 2.0) == TOO_SHORT
    assert ratio(3.0, math.inf) == TOO_SHORT


def test_medians_use_the_figures_that_were_measured() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([3.0, TOO_SHORT, 1.0]) == 2.0
    assert median([TOO_SHORT, math.nan]) == TOO_SHORT
    assert median([]) == TOO_SHORT
    assert median([1.0, 2.0], min_n=3) == TOO_SHORT


def test_a_percentile_needs_a_sample_beyond_it() -> None:
    values = [float(i) for i in range(100)]
    assert percentile(values, 50) == pytest.approx(49.5)
    assert percentile(values, 99) == pytest.approx(98.01)  # numpy's linear interpolation
    assert percentile(values[:99], 99) == TOO_SHORT
    assert percentile(values[:25], 99) == TOO_SHORT
    assert percentile(values[:25], 50) == pytest.approx(12.0)
    assert percentile([1.0], 50) == TOO_SHORT


def test_a_fitted_line_needs_enough_distinct_points() -> None:
    fit = fit_line([0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 5.0, 7.0, 9.0])
    assert fit is not None
    assert (fit.slope, fit.intercept, fit.x0, fit.x1, fit.n) == pytest.approx((2, 1, 0, 4, 5))
    assert fit_line([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) is None
    # many samples at two event counts (a daemon counts a polled batch at a time): no slope
    assert fit_line([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) is None
    assert fit_line([0.0, 1.0, 2.0, math.nan, 3.0], [0.0] * 5) is None  # four finite points


def test_the_memory_slope_is_fitted_over_the_second_half_of_the_events() -> None:
    # start-up grows by 500 MiB over the first half, then memory is flat
    samples = [(float(t), 10_000 * t, 500.0 + 50.0 * min(t, 10)) for t in range(21)]
    fit = second_half_fit(samples)
    assert fit is not None and fit.slope == pytest.approx(0.0, abs=1e-9)
    assert fit.x0 == pytest.approx(0.1) and fit.n == 11
    # after the last event the daemon closes (its decoding process exits): not in the fit
    closing = [*samples, (21.0, 200_000, 100.0), (22.0, 200_000, 50.0)]
    assert second_half_fit(closing) == fit
    assert second_half_fit(samples[:8]) is None  # four samples in the second half
    assert second_half_fit([]) is None


def test_cells_and_notes_never_show_nan_or_inf() -> None:
    assert format_value(math.nan) == TOO_SHORT
    assert format_value(math.inf) == TOO_SHORT
    assert format_value(-math.inf) == TOO_SHORT
    assert format_value(1234.5) == "1,234"
    assert fmt(math.nan, ".1f", "x") == TOO_SHORT
    assert fmt(2.0, ".1f", "x") == "2.0x"
    assert fmt(TOO_SHORT) == TOO_SHORT


def test_the_runner_writes_no_nan_or_inf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def run(ctx: Context) -> list[dict[str, Any]]:
        ctx.notes.append("a note")
        return [
            {
                "system": "s",
                "rate": math.nan,
                "ratio": math.inf,
                "nested": {"x": [1.0, math.nan]},
                "fine": 2.5,
            }
        ]

    module = types.ModuleType("fake_suite")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_suite", module)
    monkeypatch.setitem(_runner.SUITES, "fake", "fake_suite")
    monkeypatch.setattr(_runner, "_RAN", [])
    rows = _runner.run_suite("fake", quick=True, out=tmp_path)
    assert rows[0]["rate"] == rows[0]["ratio"] == TOO_SHORT
    text = (tmp_path / "fake.json").read_text()
    report = json.loads(text)  # strict JSON: no NaN or Infinity tokens
    assert report["rows"][0]["nested"] == {"x": [1.0, TOO_SHORT]}
    assert report["rows"][0]["fine"] == 2.5
    table = (tmp_path / "fake.md").read_text()
    for word in ("nan", "inf"):
        assert word not in text.lower().split('"')
        assert f" {word} " not in table.lower()


def test_a_suite_run_after_others_says_its_process_memory_includes_theirs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = types.ModuleType("fake_suite")
    module.run = lambda ctx: [{"system": "s"}]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_suite", module)
    monkeypatch.setitem(_runner.SUITES, "fake", "fake_suite")
    monkeypatch.setattr(_runner, "_RAN", [])
    _runner.run_suite("fake", quick=True, out=tmp_path)
    assert json.loads((tmp_path / "fake.json").read_text())["notes"] == []
    _runner.run_suite("fake", quick=True, out=tmp_path)
    (note,) = json.loads((tmp_path / "fake.json").read_text())["notes"]
    assert "had run fake before it" in note


# ----------------------------------------------------------------------------- plots

# The systems each plot draws together (full size), by plot.
PLOTS: dict[str, list[str]] = {
    "bandits_regret": [
        "uniform",
        "encore linucb",
        "encore lin_ts",
        "encore squarecb",
        "encore epsilon_greedy",
        "encore softmax",
        "encore logistic_ts",
        "encore neural_linear",
        "encore linucb (no track id)",
        "vw squarecb (quadratic U x T, track id)",
        "vw epsilon 0.05 (quadratic U x T, track id)",
        "mabwiser linucb (one shared model)",
        "mabwiser lints (one shared model)",
        "mabwiser linucb (one shared model) per-round predict, first 5,000 rounds",
        "mabwiser linucb per-arm (2,000 arms) first 300 rounds",
    ],
    "bandits_regret_drift": [
        "uniform",
        "encore linucb",
        "encore squarecb",
        "encore linucb forgetting 0.99",
        "encore squarecb forgetting 0.99",
        "vw squarecb (quadratic U x T, track id)",
        "mabwiser linucb (one shared model)",
    ],
    "rewards_reliability": [
        "encore skip (direct multi-head)",
        "encore completion (direct)",
        "encore survival (hazard)",
        "encore survival (hazard, averaged 0.99)",
        "encore session (GRU + hazard)",
        "encore session (GRU + hazard, averaged 0.99)",
        "river logistic (learn_one)",
        "sklearn LogisticRegression (offline)",
    ],
    "rewards_denoised_regret": [
        "LinUCB on raw stream30 reward",
        "LinUCB on denoised reward (model only, shrink 0)",
        "LinUCB on denoised reward (shrink 0.5)",
        "greedy on the reward model alone (no bandit)",
    ],
    "daemon_pss": ["JSON floats", "base64 float32"],
    "ope_rmse": ["target close", "target far"],
}


@pytest.mark.parametrize("plot", list(PLOTS))
def test_every_system_of_a_plot_has_a_colour_of_its_own(plot: str) -> None:
    systems = PLOTS[plot]
    assert all(any(s.startswith(k) for k in SERIES_COLOURS) for s in systems)
    assert len({colour(s) for s in systems}) == len(systems)


def test_a_system_keeps_its_colour_whatever_its_row_adds() -> None:
    assert colour("encore linucb [drift]") == colour("encore linucb")
    assert colour("encore linucb forgetting 0.99 [drift]") != colour("encore linucb")
    assert colour("mabwiser linucb (one shared model) first 500 rounds") == colour(
        "mabwiser linucb (one shared model)"
    )
    assert colour("mabwiser linucb (one shared model) per-round predict, first 500 rounds") == (
        colour("mabwiser linucb (one shared model) per-round predict, first 5,000 rounds")
    )
    assert colour("a system nobody listed") == colour("a system nobody listed")


def test_plots_put_one_legend_under_the_axes(tmp_path: Path) -> None:
    backend_agg = pytest.importorskip("matplotlib.backends.backend_agg")
    ctx = Context(quick=True, out=tmp_path)
    seen: dict[str, Any] = {}

    def draw(fig: Any) -> None:
        left, right = fig.subplots(1, 2)
        for ax in (left, right):
            ax.plot([0, 1], [0, 1], label="encore linucb", color=colour("encore linucb"))
            ax.legend()
        right.plot([0, 1], [1, 0], label="uniform", color=colour("uniform"))
        seen["fig"] = fig

    path = ctx.save_figure("legend", draw)
    assert path.is_file() and ctx.plots == [path]
    fig = seen["fig"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["encore linucb", "uniform"]
    renderer = backend_agg.FigureCanvasAgg(fig).get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert box.y1 <= ax.get_window_extent(renderer).y0  # entirely under every axes


def test_notes_never_show_a_formatted_nan_or_inf() -> None:
    clean = _runner._clean_note  # pyright: ignore[reportPrivateUsage]
    assert clean(f"rate {math.nan:.1f} per s, ratio {math.inf:.2f}x, {-math.inf:g}") == (
        f"rate {TOO_SHORT} per s, ratio {TOO_SHORT}x, {TOO_SHORT}"
    )
    assert clean("infinite loops, NaN / inf checks on finance") == (
        f"infinite loops, {TOO_SHORT} / {TOO_SHORT} checks on finance"
    )
