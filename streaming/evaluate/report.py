"""The estimates as a table, a markdown report and a plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bandits.ope import (
    ESTIMATORS,
    AbstractSingleActionEstimator,
    Estimate,
)
from streaming.evaluate.frames import UsageError
from streaming.evaluate.inputs import Inputs


def estimator_set(spec: str) -> dict[str, AbstractSingleActionEstimator]:
    names = list(ESTIMATORS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise UsageError(f"unknown estimator(s) {unknown}; known: {sorted(ESTIMATORS)} or 'all'")
    return {n: ESTIMATORS[n]() for n in names}


def results_table(results: Mapping[str, Estimate], alpha: float, interval: str) -> Any:
    from rich.table import Table

    table = Table(title=f"off-policy estimates ({1 - alpha:.0%} {interval} interval)")
    for col, justify in (
        ("estimator", "left"),
        ("value", "right"),
        ("lower", "right"),
        ("upper", "right"),
        ("ESS", "right"),
        ("max w", "right"),
        ("warning", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, e in results.items():
        d = e.diagnostics
        table.add_row(
            name,
            f"{e.value:.4f}",
            f"{e.lower:.4f}",
            f"{e.upper:.4f}",
            f"{d.ess:,.0f}",
            f"{d.max_weight:.3g}",
            d.reason if d.warning else "",
        )
    return table


def markdown_report(
    results: Mapping[str, Estimate],
    *,
    inputs: Inputs,
    source: str,
    alpha: float,
    interval: str,
    elapsed_s: float,
) -> str:
    d = next(iter(results.values())).diagnostics
    lines = [
        "# encore evaluate",
        "",
        f"- log: `{source}` ({inputs.log.n:,} rounds, {inputs.n_actions} actions)",
        f"- target: {inputs.target_desc}",
        f"- interval: {1 - alpha:.0%} {interval}",
        f"- importance weights: ESS {d.ess:,.0f}, max {d.max_weight:.3g}, mean "
        f"{d.mean_weight:.3f}, target never plays {d.unsupported_share:.1%} of logged actions",
        f"- elapsed: {elapsed_s:.1f} s",
        *[f"- {note}" for note in inputs.notes],
        "",
        "| estimator | value | lower | upper | warning |",
        "|---|---:|---:|---:|---|",
    ]
    for name, e in results.items():
        warn = e.diagnostics.reason if e.diagnostics.warning else ""
        lines.append(f"| {name} | {e.value:.4f} | {e.lower:.4f} | {e.upper:.4f} | {warn} |")
    lines += ["", "![estimates](estimates.png)", ""]
    return "\n".join(lines)


def plot_estimates(results: Mapping[str, Estimate], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    values = np.array([results[n].value for n in names])
    err = np.array(
        [[results[n].value - results[n].lower, results[n].upper - results[n].value] for n in names]
    ).T
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    y = np.arange(len(names))
    colors = ["tab:red" if results[n].diagnostics.warning else "tab:blue" for n in names]
    for i, color in enumerate(colors):
        ax.errorbar(values[i], y[i], xerr=err[:, i : i + 1], fmt="none", ecolor=color, capsize=3)
    ax.scatter(values, y, c=colors, zorder=3)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("estimated policy value (red: warning)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
