"""Calibration and discrimination of predicted probabilities, scored prequentially.

Prequential (progressive) validation, as in river's ``progressive_val_score``: each prediction
is made when the impression is seen, with the state as it was then, and scored only when the
outcome arrives; only then does the outcome enter ``update``. :func:`prequential` runs exactly
that over a stream of batches; :func:`score_heads` scores stored predictions against outcomes.

Everything here is numpy on the host (reports, not training); :func:`plot_reliability` draws
reliability tables on an ``Axes`` it is given, and :func:`plot_reliability_panels` lays out one
panel per target on a ``Figure``, with the plays per bin under each panel and one legend.

References:
    Dawid (1984), "Present position and potential developments: the prequential approach";
    Naeini, Cooper & Hauskrecht (2015), "Obtaining well calibrated probabilities using Bayesian
    binning" (ECE).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Bool, Float
from numpy.typing import NDArray

from rewards.labels import skip_labels
from rewards.model import RewardModel
from rewards.types import HEADS, ModelState, Outcomes, Predictions

EPS = 1e-7


class ReliabilityTable(NamedTuple):
    """Equal-width bins of predicted probability (empty bins have count 0 and NaN means)."""

    lower: NDArray[np.float64]  # (b,)
    upper: NDArray[np.float64]  # (b,)
    mean_predicted: NDArray[np.float64]  # (b,)
    fraction_positive: NDArray[np.float64]  # (b,)
    counts: NDArray[np.int64]  # (b,)


class Scores(NamedTuple):
    """Scores of one set of probabilities against binary labels."""

    log_loss: float
    auc: float
    ece: float
    brier: float
    n: int
    base_rate: float


def _clean(
    probs: NDArray[Any], labels: NDArray[Any]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"probabilities {p.shape} and labels {y.shape} differ in shape")
    if p.size and not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p, y


def log_loss(p: Float[NDArray[Any], " n"], y: Bool[NDArray[Any], " n"]) -> float:
    """Mean binary cross-entropy in nats (probabilities clipped to ``[1e-7, 1 - 1e-7]``).

    >>> round(log_loss(np.array([0.5, 0.5]), np.array([True, False])), 4)
    0.6931
    """
    p, y = _clean(p, y)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if p.size else float("nan")


def auc(p: Float[NDArray[Any], " n"], y: Bool[NDArray[Any], " n"]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN if one class is absent.

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75
    """
    p, y = _clean(p, y)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inverse]
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_table(
    p: Float[NDArray[Any], " n"], y: Bool[NDArray[Any], " n"], n_bins: int = 15
) -> ReliabilityTable:
    """Mean prediction and observed frequency in ``n_bins`` equal-width bins of ``[0, 1]``."""
    if n_bins <= 0:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    p, y = _clean(p, y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    return ReliabilityTable(edges[:-1], edges[1:], mean_p, frac, count.astype(np.int64))


def _colours(labels: Iterable[str]) -> dict[str, str]:
    """Matplotlib's colour cycle (``"C0"``, ``"C1"``, ...) in the order labels first appear."""
    out: dict[str, str] = {}
    for label in labels:
        out.setdefault(label, f"C{len(out) % 10}")
    return out


def plot_reliability(
    ax: Any,
    tables: Mapping[str, ReliabilityTable],
    *,
    title: str = "",
    legend_size: int = 7,
    colors: Mapping[str, str] | None = None,
    counts_ax: Any = None,
    legend: bool = True,
) -> None:
    """Draw reliability curves on a matplotlib ``Axes``: one line per table, labelled by its key.

    Each line joins the non-empty bins' ``(mean_predicted, fraction_positive)``; the dashed
    diagonal is perfect calibration. Only the axes' methods are called, so ``rewards`` itself
    needs no plotting library.

    Args:
        ax: a ``matplotlib.axes.Axes``.
        tables: label -> :func:`reliability_table` (for example one per model, or per model
            and head).
        title: the axes' title.
        legend_size: font size of the legend.
        colors: label -> matplotlib colour, to keep one colour per label across several axes
            (default: the colour cycle in the order of ``tables``).
        counts_ax: an ``Axes`` (usually a short strip under ``ax``, sharing its x axis) on which
            to draw the plays per bin of every table as a step outline on a log scale (an empty
            bin drops to the baseline, 0.5); the x axis label moves to it.
        legend: draw a legend on ``ax`` (off when the figure has one shared legend).

    Example:
        >>> from matplotlib.figure import Figure
        >>> ax = Figure().add_subplot()
        >>> t = reliability_table(np.array([0.1, 0.9, 0.8]), np.array([False, True, True]))
        >>> plot_reliability(ax, {"survival": t}, title="complete")
        >>> [line.get_label() for line in ax.get_lines()][1:], ax.get_title()
        (['survival'], 'complete')
    """
    colour = {**_colours(tables), **(colors or {})}
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for label, t in tables.items():
        used = t.counts > 0
        ax.plot(
            t.mean_predicted[used],
            t.fraction_positive[used],
            marker="o",
            ms=3,
            lw=1,
            color=colour[label],
            label=label,
        )
    ax.set_xlabel("mean predicted probability" if counts_ax is None else "")
    ax.set_ylabel("observed frequency")
    if title:
        ax.set_title(title)
    if legend and tables:
        ax.legend(fontsize=legend_size)
    if counts_ax is not None:
        for label, t in tables.items():
            if t.counts.any():
                edges = np.append(t.lower, t.upper[-1:])
                counts_ax.stairs(
                    np.maximum(t.counts, 0.5), edges, baseline=0.5, color=colour[label], lw=1
                )
        counts_ax.set_yscale("log")
        counts_ax.set_ylabel("plays per bin")
        counts_ax.set_xlabel("mean predicted probability")


def plot_reliability_panels(
    fig: Any,
    tables: Mapping[str, Mapping[str, ReliabilityTable]],
    *,
    titles: Mapping[str, str] | None = None,
    legend_size: int = 8,
) -> list[tuple[Any, Any]]:
    """One reliability panel per target, with a strip of plays per bin under each, on ``fig``.

    Panels share their limits (``[0, 1]`` on both axes) and the strips share a log-scale count
    axis, so targets and models compare at a glance; a model keeps one colour in every panel,
    and one legend for the whole figure sits under the panels. Each panel also lists every
    model's ECE in its colour. Only the figure's and axes' methods are called.

    Args:
        fig: a ``matplotlib.figure.Figure`` (constrained layout keeps the legend clear of the
            panels: ``Figure(layout="constrained")``).
        tables: target (for example ``"complete"``) -> model -> :func:`reliability_table`.
        titles: target -> panel title (default: the target's name).
        legend_size: font size of the legend and of the ECE lists.

    Returns:
        ``(panel, strip)`` axes per target, in the order of ``tables``.

    Example:
        >>> from matplotlib.figure import Figure
        >>> t = reliability_table(np.array([0.1, 0.9, 0.8]), np.array([False, True, True]))
        >>> axes = plot_reliability_panels(Figure(), {"skip_1": {"a": t}, "complete": {"a": t}})
        >>> [panel.get_title() for panel, _ in axes], axes[0][0].get_xlim() == (0.0, 1.0)
        (['skip_1', 'complete'], True)
    """
    colour = _colours(m for by_model in tables.values() for m in by_model)
    grid = fig.add_gridspec(2, max(len(tables), 1), height_ratios=(4, 1))
    out: list[tuple[Any, Any]] = []
    for j, (target, by_model) in enumerate(tables.items()):
        first = out[0] if out else (None, None)
        panel = fig.add_subplot(grid[0, j], sharey=first[0])
        strip = fig.add_subplot(grid[1, j], sharex=panel, sharey=first[1])
        plot_reliability(
            panel,
            by_model,
            title=(titles or {}).get(target, target),
            colors=colour,
            counts_ax=strip,
            legend=False,
        )
        panel.set_xlim(0.0, 1.0)
        panel.set_ylim(0.0, 1.0)
        panel.tick_params(labelbottom=False)
        panel.grid(alpha=0.3)
        strip.grid(alpha=0.3)
        if j:
            panel.set_ylabel("")
            strip.set_ylabel("")
            panel.tick_params(labelleft=False)
            strip.tick_params(labelleft=False)
        for i, (model, t) in enumerate(by_model.items()):
            err = _table_ece(t)
            panel.text(
                0.03,
                0.97 - 0.07 * i,
                f"{model}: " + ("no plays" if np.isnan(err) else f"ECE {err:.3f}"),
                transform=panel.transAxes,
                color=colour[model],
                fontsize=legend_size,
                va="top",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
            )
        out.append((panel, strip))
    if out:
        # The first line of every panel is its diagonal; then one line per model, in any panel.
        handles = [out[0][0].get_lines()[0]]
        labels = ["perfect calibration"]
        for model in colour:
            handles += [
                line for panel, _ in out for line in panel.get_lines() if line.get_label() == model
            ][:1]
            labels.append(model)
        fig.legend(
            handles=handles,
            labels=labels,
            loc="outside lower center",
            ncol=len(handles),
            fontsize=legend_size,
            frameon=False,
        )
    return out


def ece(p: Float[NDArray[Any], " n"], y: Bool[NDArray[Any], " n"], n_bins: int = 15) -> float:
    """Expected calibration error: count-weighted mean ``|mean predicted - observed|`` over bins.

    >>> ece(np.array([0.2, 0.2, 0.2, 0.2, 0.2]), np.array([True, False, False, False, False]))
    0.0
    """
    return _table_ece(reliability_table(p, y, n_bins))


def _table_ece(t: ReliabilityTable) -> float:
    used = t.counts > 0
    if not used.any():
        return float("nan")
    gap = np.abs(t.mean_predicted[used] - t.fraction_positive[used])
    return float(np.sum(gap * t.counts[used]) / t.counts[used].sum())


def score(p: Float[NDArray[Any], " n"], y: Bool[NDArray[Any], " n"], n_bins: int = 15) -> Scores:
    """Log loss, AUC, ECE, Brier score, count and base rate of one head."""
    p64, y64 = _clean(p, y)
    if p64.size == 0:
        nan = float("nan")
        return Scores(nan, nan, nan, nan, 0, nan)
    return Scores(
        log_loss=log_loss(p64, y64 > 0.5),
        auc=auc(p64, y64 > 0.5),
        ece=ece(p64, y64 > 0.5, n_bins),
        brier=float(np.mean((p64 - y64) ** 2)),
        n=int(p64.size),
        base_rate=float(y64.mean()),
    )


def head_labels(outcomes: Outcomes) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Labels and known-flags of every head of :data:`HEADS`, each ``(n, 4)``; masked rows unknown."""
    o = outcomes
    y, k = skip_labels(
        o.ms_played,
        np.where(np.asarray(o.duration_ms) > 0, o.duration_ms, 1),
        o.reason_end,
        o.censored,
    )
    y, k = np.asarray(y), np.asarray(k)
    y4 = np.concatenate([y, ~y[:, 2:3]], axis=1)
    k4 = np.concatenate([k, k[:, 2:3]], axis=1) & np.asarray(o.mask, dtype=bool)[:, None]
    return y4, k4


def prediction_columns(predictions: Predictions) -> NDArray[np.float64]:
    """``(n, 4)`` probabilities in the order of :data:`HEADS`."""
    skip = np.asarray(predictions.skip, dtype=np.float64)
    return np.concatenate([skip, np.asarray(predictions.complete, np.float64)[:, None]], axis=1)


def score_heads(
    probs: Float[NDArray[np.floating], "n 4"], outcomes: Outcomes, n_bins: int = 15
) -> dict[str, Scores]:
    """Scores per head of :data:`HEADS` (heads that are all NaN, i.e. not modelled, are left out).

    Args:
        probs: ``(n, 4)`` stored predictions (:func:`prediction_columns`), made at impression time.
        outcomes: the outcomes of the same rows; only rows with a known label are scored.
    """
    y, k = head_labels(outcomes)
    probs = np.asarray(probs, dtype=np.float64)
    out: dict[str, Scores] = {}
    for j, head in enumerate(HEADS):
        if np.all(np.isnan(probs[:, j])):
            continue
        use = k[:, j] & np.isfinite(probs[:, j])
        out[head] = score(probs[use, j], y[use, j], n_bins)
    return out


def prequential(
    model: RewardModel, state: ModelState, stream: Iterable[Outcomes]
) -> tuple[ModelState, NDArray[np.float64], list[Outcomes]]:
    """Predict each batch with the state before it, then ``update`` on it (zero-delay prequential).

    Returns:
        ``(final state, (rows, 4) predictions of every batch's rows in order, the batches)``.
    """
    preds: list[NDArray[np.float64]] = []
    seen: list[Outcomes] = []
    for batch in stream:
        preds.append(prediction_columns(model.predict(state, batch.inputs)))
        seen.append(batch)
        state, _ = model.update(state, batch)
    cols = np.concatenate(preds) if preds else np.zeros((0, len(HEADS)))
    return state, cols, seen
