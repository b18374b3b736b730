"""Calibration metrics and prequential scoring."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest

from rewards import Outcomes, skip_model
from rewards.calibration import (
    ReliabilityTable,
    auc,
    ece,
    head_labels,
    log_loss,
    plot_reliability,
    plot_reliability_panels,
    prediction_columns,
    prequential,
    reliability_table,
    score,
    score_heads,
)
from rewards.model import take


def test_log_loss_and_auc_by_hand() -> None:
    y = np.array([True, False, True, False])
    p = np.array([0.9, 0.1, 0.8, 0.3])
    expected = -np.mean(np.log([0.9, 0.9, 0.8, 0.7]))
    assert log_loss(p, y) == pytest.approx(expected)
    assert auc(p, y) == 1.0
    assert auc(1 - p, y) == 0.0
    assert auc(np.full(4, 0.5), y) == 0.5  # all tied
    assert np.isnan(auc(p, np.ones(4, bool)))


def test_auc_matches_the_pair_count() -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, 200) / 4  # many ties
    y = rng.random(200) < p
    pos, neg = p[y], p[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(p, y) == pytest.approx(pairs)


def test_ece_is_zero_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = rng.random(200_000) < p
    assert ece(p, y) < 0.01
    assert ece(np.clip(p + 0.2, 0, 1), y) > 0.15


def test_reliability_table_counts_every_row() -> None:
    p = np.array([0.0, 0.05, 0.5, 0.99, 1.0])
    t = reliability_table(p, np.array([0, 0, 1, 1, 1], bool), n_bins=10)
    assert t.counts.sum() == 5 and t.counts[0] == 2 and t.counts[9] == 2
    assert np.isnan(t.mean_predicted[3])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        score(np.array([1.5]), np.array([True]))


def test_score_heads_uses_known_labels_and_skips_unmodelled(batch: Outcomes) -> None:
    y, k = head_labels(batch)
    cols = np.tile([0.3, 0.6, 0.8, 0.2], (256, 1))
    cols[:, 0] = np.nan  # skip_1 not modelled
    scores = score_heads(cols, batch)
    assert set(scores) == {"skip_2", "skip_3", "complete"}
    assert scores["skip_2"].n == int(k[:, 1].sum())
    assert scores["complete"].base_rate == pytest.approx(y[k[:, 3], 3].mean())
    np.testing.assert_array_equal(y[:, 3] | ~k[:, 3], ~y[:, 2] | ~k[:, 2])


def test_prequential_predicts_with_the_state_before_each_batch(
    batch: Outcomes, synth: Callable[..., Outcomes]
) -> None:
    model = skip_model()
    start = model.init(jax.random.key(0), 6)
    chunks = [take(batch, slice(i, i + 64)) for i in range(0, 256, 64)]
    final, cols, seen = prequential(model, start, chunks)
    state = start
    for i, chunk in enumerate(chunks):
        np.testing.assert_allclose(
            cols[i * 64 : (i + 1) * 64], prediction_columns(model.predict(state, chunk.inputs))
        )
        state, _ = model.update(state, chunk)
    assert int(final.step) == 4 and len(seen) == 4


def test_plot_reliability_draws_one_line_per_table_over_the_diagonal() -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    p = rng.random(2_000)
    y = rng.random(2_000) < p
    tables = {
        "calibrated": reliability_table(p, y, 10),
        "overconfident": reliability_table(p**3, y, 10),
    }
    ax = Figure().add_subplot()
    plot_reliability(ax, tables, title="complete")
    diagonal, *curves = ax.get_lines()
    np.testing.assert_array_equal(diagonal.get_xydata(), [[0, 0], [1, 1]])
    assert [line.get_label() for line in curves] == ["calibrated", "overconfident"]
    t = tables["overconfident"]
    used = t.counts > 0
    np.testing.assert_array_equal(
        curves[1].get_xydata(), np.stack([t.mean_predicted[used], t.fraction_positive[used]], 1)
    )
    assert ax.get_title() == "complete" and ax.get_xlabel() == "mean predicted probability"
    legend = ax.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == list(tables)


def _three_models(n: int = 3_000) -> dict[str, dict[str, ReliabilityTable]]:
    rng = np.random.default_rng(2)
    p = rng.random(n)
    y = rng.random(n) < p
    return {
        target: {
            "calibrated": reliability_table(p, y, 10),
            "overconfident": reliability_table(p**3, y, 10),
            "timid": reliability_table(0.25 + p / 2, y, 10),
        }
        for target in ("skip_1", "skip_3", "complete")
    }


def test_plot_reliability_keeps_given_colours_and_draws_counts_on_a_strip() -> None:
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    tables = _three_models()["complete"]
    fig = Figure()
    ax, strip = fig.subplots(2, 1, sharex=True)
    colours = {"calibrated": "C3", "overconfident": "C0", "timid": "C1"}
    plot_reliability(ax, tables, colors=colours, counts_ax=strip, legend=False)
    _, *curves = ax.get_lines()
    assert [line.get_color() for line in curves] == ["C3", "C0", "C1"]
    assert ax.get_legend() is None
    steps = strip.patches
    assert len(steps) == 3
    for step, (label, t) in zip(steps, tables.items(), strict=True):
        values, edges = step.get_data()[:2]
        np.testing.assert_array_equal(values, np.maximum(t.counts, 0.5))
        np.testing.assert_allclose(edges, np.linspace(0, 1, 11))
        assert step.get_edgecolor()[:3] == pytest.approx(to_rgb(colours[label]), abs=1e-6)
    assert strip.get_yscale() == "log" and strip.get_ylabel() == "plays per bin"
    assert strip.get_xlabel() == "mean predicted probability" and ax.get_xlabel() == ""


def test_plot_reliability_panels_compare_models_across_targets() -> None:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    tables = _three_models()
    fig = Figure(layout="constrained")
    axes = plot_reliability_panels(fig, tables, titles={"complete": "p_complete"})
    assert [panel.get_title() for panel, _ in axes] == ["skip_1", "skip_3", "p_complete"]
    colours: dict[str, str] = {}
    for panel, strip in axes:
        assert panel.get_xlim() == (0.0, 1.0) and panel.get_ylim() == (0.0, 1.0)
        assert panel.get_legend() is None
        _, *curves = panel.get_lines()
        assert [line.get_label() for line in curves] == ["calibrated", "overconfident", "timid"]
        for line in curves:  # one colour per model in every panel
            assert colours.setdefault(str(line.get_label()), str(line.get_color())) == str(
                line.get_color()
            )
        # The plays per bin are there, and every strip shares one count axis.
        assert len(strip.patches) == 3
        assert strip.get_ylim() == axes[0][1].get_ylim()
        assert strip.get_shared_y_axes().joined(strip, axes[0][1])
        # Each model's ECE is written in its colour.
        texts = {t.get_text(): t.get_color() for t in panel.texts}
        t = tables["skip_1"]["overconfident"]
        used = t.counts > 0
        err = np.sum(np.abs(t.mean_predicted - t.fraction_positive)[used] * t.counts[used])
        assert texts[f"overconfident: ECE {err / t.counts.sum():.3f}"] == colours["overconfident"]
    assert len(set(colours.values())) == 3
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "perfect calibration",
        "calibrated",
        "overconfident",
        "timid",
    ]
    handles = [h for h in legend.legend_handles[1:] if isinstance(h, Line2D)]
    assert [h.get_color() for h in handles] == list(colours.values())
