"""The demo's numbers, plot and console, without a broker (the live run is an integration test)."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from rich.console import Console

from streaming.demo import (
    ORACLE,
    RANDOM,
    demo_console,
    learning_figure,
    progress,
    reference_top_reward,
    run_means,
)
from streaming.sim.simulator import SimConfig, Simulator, describe
from streaming.worker.stats import Stats, summary_line


def test_reference_values_are_the_best_and_the_average_slate() -> None:
    """Enumerate every ordered slate of a small world: the oracle is the best slate's top-track
    reward and the random value is the mean over all slates (a uniformly random slate)."""
    sim = Simulator(SimConfig(n_users=30, n_tracks=50, n_candidates=5, seed=4))
    req = sim.requests(40)
    er = sim.expected_reward(req)
    ref = reference_top_reward(er)
    slates = list(itertools.permutations(range(5), 3))
    top = np.array([[er[i, slate[0]] for slate in slates] for i in range(er.shape[0])])
    np.testing.assert_allclose(ref.oracle, top.max(axis=1))
    np.testing.assert_allclose(ref.random, top.mean(axis=1))
    # The logging policy sits between them on the same requests.
    logging = (sim.logging_probs(req) * er).sum(axis=1)
    assert ref.random.mean() < logging.mean()
    assert np.all(logging <= ref.oracle + 1e-12)


def test_reference_values_agree_with_the_simulators_description() -> None:
    cfg = SimConfig(n_users=200, n_tracks=400, seed=7)
    ref = reference_top_reward(Simulator(cfg).expected_reward(Simulator(cfg).requests(500)))
    described = describe(Simulator(cfg), n_requests=500)
    assert ref.oracle.mean() == pytest.approx(described["reward_oracle_top1"])
    assert ref.random.mean() == pytest.approx(described["reward_random_top1"])


def test_reference_values_refuse_a_flat_array() -> None:
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        reference_top_reward(np.array([0.1, 0.2]))


def test_run_means_are_weighted_by_requests() -> None:
    rows = [(0.0, ORACLE, 0.8 * 10, 10.0), (1.0, ORACLE, 0.5 * 30, 30.0), (0.0, RANDOM, 3.0, 10.0)]
    assert run_means(rows) == {ORACLE: pytest.approx(23 / 40), RANDOM: pytest.approx(0.3)}


def test_learning_plot_has_the_arms_and_labelled_reference_lines() -> None:
    curve = {"linucb": [0.35, 0.5, 0.6], "logging": [0.45, 0.46, 0.45]}
    fig = learning_figure(curve, 30.0, {ORACLE: 0.72, RANDOM: 0.3})
    (ax,) = fig.axes
    lines = {str(line.get_label()): line for line in ax.get_lines()}
    assert list(lines)[:2] == ["linucb", "logging"]
    np.testing.assert_allclose(np.asarray(lines["linucb"].get_xdata()), [5.0, 15.0, 25.0])
    np.testing.assert_allclose(np.asarray(lines["linucb"].get_ydata()), curve["linucb"])
    oracle = next(label for label in lines if label.startswith("oracle"))
    random = next(label for label in lines if label.startswith("uniformly random"))
    assert "0.720" in oracle and "0.300" in random
    np.testing.assert_allclose(np.asarray(lines[oracle].get_ydata()), [0.72, 0.72])
    np.testing.assert_allclose(np.asarray(lines[random].get_ydata()), [0.3, 0.3])
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == list(lines)
    assert "oracle" in ax.get_title() and "random" in ax.get_title()
    assert ax.get_ylabel().startswith("true P(stream >= 30 s)")


def _long_progress_line() -> str:
    stats = Stats(
        started_ms=0,
        events=1_234_567,
        reward_by_policy={"linucb": (812.5, 1_500), "logging": (700.25, 1_600)},
        counters={"joined": 98_765, "closed": 87_654},
    )
    return "  daemon: " + summary_line(stats, now_ms=30_000)


def test_progress_lines_do_not_wrap_when_output_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # rich's 80 columns off a terminal
    line = _long_progress_line()
    assert len(line) > 120
    plain = io.StringIO()
    Console(file=plain).print(line)  # what a default console does off a terminal
    assert len(plain.getvalue().splitlines()) > 1
    buf = io.StringIO()
    console = demo_console(buf)
    assert not console.is_terminal and console.width == 80
    progress(console, line)
    console.print(line)  # soft wrap is the demo console's default for any print
    assert buf.getvalue() == f"{line}\n{line}\n"


def test_progress_prints_brackets_as_they_are() -> None:
    buf = io.StringIO()
    progress(demo_console(buf), "policy [bold] x [/] y")
    assert buf.getvalue() == "policy [bold] x [/] y\n"
