"""Calibration metrics and prequential scoring."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest

from rewards import Outcomes, skip_model
from rewards.calibration import (
    auc,
    ece,
    head_labels,
    log_loss,
    plot_reliability,
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
