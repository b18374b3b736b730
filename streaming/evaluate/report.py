"""The estimates as a table, a markdown report and a plot, with the warnings that go with them.

Every view shows the logging policy's own value (the mean logged reward, with its interval) as
a reference, and the effective sample size of the importance weights next to each estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bandits.ope import (
    ESTIMATORS,
    AbstractSingleActionEstimator,
    Estimate,
)
from bandits.ope.diagnostics import MIN_ESS, MIN_ESS_SHARE
from streaming.evaluate.frames import UsageError
from streaming.evaluate.inputs import Inputs
from streaming.evaluate.targets import Overlap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REFERENCE = "logging policy"
"""The name of the reference row: the logging policy's on-policy value."""

ESS_RULE = (
    "ESS = (sum w)^2 / sum w^2 of the importance weights w (Kish 1965; Kong 1992; Owen, "
    "Monte Carlo theory, 2013, sec. 9.3) is about how many equally weighted rows would give the "
    f"same precision. bandits.ope.diagnostics warns below max({MIN_ESS:.0f}, "
    f"{MIN_ESS_SHARE:.0%} of the rows): fewer than {MIN_ESS:.0f} effective rows is the usual "
    "rule-of-thumb floor for a normal approximation to a mean, and under "
    f"{MIN_ESS_SHARE:.0%} of the log the target rests on a sliver of it"
)
"""Where the effective-sample-size threshold comes from (the report and the docs quote it)."""


def estimator_set(spec: str) -> dict[str, AbstractSingleActionEstimator]:
    names = list(ESTIMATORS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise UsageError(f"unknown estimator(s) {unknown}; known: {sorted(ESTIMATORS)} or 'all'")
    return {n: ESTIMATORS[n]() for n in names}


def ess_floor(n: int | float) -> float:
    """The effective sample size below which an estimate on ``n`` rows is not to be trusted.

    The same rule ``bandits.ope.diagnostics`` applies (see ``ESS_RULE``).

    Example:
        >>> ess_floor(1_000), ess_floor(100_000)
        (30.0, 1000.0)
    """
    return max(MIN_ESS, MIN_ESS_SHARE * float(n))


def low_ess(results: Mapping[str, Estimate]) -> list[str]:
    """The estimators whose effective sample size is below ``ess_floor`` of their rows."""
    return [name for name, e in results.items() if e.diagnostics.ess < ess_floor(e.n)]


def run_warnings(results: Mapping[str, Estimate], overlap: Overlap | None) -> list[str]:
    """One line per reason not to trust the run: the target saw the rows, or too few effective rows.

    Example:
        >>> from bandits.ope import Diagnostics
        >>> d = Diagnostics(12.0, 40.0, 1.0, 0.0, True, "")
        >>> print(*run_warnings({"ips": Estimate(0.5, 0.1, 0.9, 3_000, d)}, None))
        effective sample size 12 of 3,000 rows is below 30 = max(30, 1% of the rows), the floor
        of bandits.ope.diagnostics (ESS = (sum w)^2 / sum w^2, Kong 1992; under 30 effective
        rows a normal-approximation interval is unreliable): ips rests on a few heavily weighted
        rows
    """
    out: list[str] = []
    if overlap is not None and overlap.rows:
        out.append(overlap.message())
    low = low_ess(results)
    if low:
        e = results[low[0]]
        out.append(
            f"effective sample size {e.diagnostics.ess:,.0f} of {e.n:,} rows is below "
            f"{ess_floor(e.n):,.0f} = max({MIN_ESS:.0f}, {MIN_ESS_SHARE:.0%} of the rows), the "
            "floor of bandits.ope.diagnostics (ESS = (sum w)^2 / sum w^2, Kong 1992; under "
            f"{MIN_ESS:.0f} effective rows a normal-approximation interval is unreliable): "
            f"{', '.join(low)} {'rest' if len(low) > 1 else 'rests'} on a few heavily weighted rows"
        )
    return out


def results_table(
    results: Mapping[str, Estimate],
    alpha: float,
    interval: str,
    *,
    reference: Estimate | None = None,
) -> Any:
    """A rich table: one row per estimator, then the logging policy's own value (``reference``).

    An effective sample size below ``ess_floor`` is shown in red.
    """
    from rich.table import Table

    floor = ess_floor(next(iter(results.values())).n) if results else MIN_ESS
    table = Table(
        title=f"off-policy estimates ({1 - alpha:.0%} {interval} interval)",
        caption=f"ESS in red: below {floor:,.0f}, too small to trust the estimate",
    )
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
    names = list(results)
    for i, name in enumerate(names):
        e = results[name]
        d = e.diagnostics
        ess = f"{d.ess:,.0f}"
        table.add_row(
            name,
            f"{e.value:.4f}",
            f"{e.lower:.4f}",
            f"{e.upper:.4f}",
            f"[red]{ess}[/red]" if d.ess < ess_floor(e.n) else ess,
            f"{d.max_weight:.3g}",
            d.reason if d.warning else "",
            end_section=reference is not None and i == len(names) - 1,
        )
    if reference is not None:
        table.add_row(
            REFERENCE,
            f"{reference.value:.4f}",
            f"{reference.lower:.4f}",
            f"{reference.upper:.4f}",
            f"{reference.diagnostics.ess:,.0f}",
            "1",
            "reference: the mean logged reward",
            style="bold",
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
    reference: Estimate | None = None,
    warnings: Sequence[str] = (),
) -> str:
    d = next(iter(results.values())).diagnostics
    n = inputs.log.n
    lines = [
        "# encore evaluate",
        "",
        f"- log: `{source}` ({n:,} rounds, {inputs.n_actions} actions)",
        f"- target: {inputs.target_desc}",
        f"- interval: {1 - alpha:.0%} {interval}",
        f"- importance weights: ESS {d.ess:,.0f}, max {d.max_weight:.3g}, mean "
        f"{d.mean_weight:.3f}, target never plays {d.unsupported_share:.1%} of logged actions",
        f"- effective sample size: warned below {ess_floor(n):,.0f}. {ESS_RULE}.",
        f"- elapsed: {elapsed_s:.1f} s",
        *[f"- {note}" for note in inputs.notes],
        "",
    ]
    if warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    lines += [
        "| estimator | value | lower | upper | ESS | warning |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, e in results.items():
        warn = e.diagnostics.reason if e.diagnostics.warning else ""
        lines.append(
            f"| {name} | {e.value:.4f} | {e.lower:.4f} | {e.upper:.4f} | "
            f"{e.diagnostics.ess:,.0f} | {warn} |"
        )
    if reference is not None:
        lines.append(
            f"| {REFERENCE} (reference) | {reference.value:.4f} | {reference.lower:.4f} | "
            f"{reference.upper:.4f} | {reference.diagnostics.ess:,.0f} | the mean logged reward |"
        )
    lines += ["", "![estimates](estimates.png)", ""]
    return "\n".join(lines)


def plot_estimates(
    results: Mapping[str, Estimate],
    path: Path,
    *,
    target_name: str,
    n_rows: int,
    reference: Estimate | None = None,
) -> Figure:
    """Each estimate with its interval (red where a warning holds), its ESS in the label, and the
    logging policy's value as a labelled vertical line with its interval shaded.

    The title is ``target_name`` and the number of rows, never a file path. Returns the figure,
    already saved to ``path`` and closed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    values = np.array([results[n].value for n in names])
    err = np.array(
        [[results[n].value - results[n].lower, results[n].upper - results[n].value] for n in names]
    ).T
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.8))
    y = np.arange(len(names))
    colors = ["tab:red" if results[n].diagnostics.warning else "tab:blue" for n in names]
    for i, color in enumerate(colors):
        ax.errorbar(values[i], y[i], xerr=err[:, i : i + 1], fmt="none", ecolor=color, capsize=3)
    ax.scatter(values, y, c=colors, zorder=3)
    labels = [f"{n}\nESS {results[n].diagnostics.ess:,.0f}" for n in names]
    ax.set_yticks(y, labels)
    for tick, n in zip(ax.get_yticklabels(), names, strict=True):
        e = results[n]
        if e.diagnostics.ess < ess_floor(e.n):
            tick.set_color("tab:red")
    ax.invert_yaxis()
    if reference is not None:
        ax.axvline(
            reference.value,
            color="0.3",
            linestyle="--",
            label=f"{REFERENCE} (mean logged reward) {reference.value:.4f}",
        )
        ax.axvspan(
            reference.lower,
            reference.upper,
            color="0.85",
            zorder=0,
            label=f"its interval [{reference.lower:.4f}, {reference.upper:.4f}]",
        )
        ax.legend(loc="best", fontsize="small")
    floor = ess_floor(n_rows)
    ax.set_xlabel(f"estimated policy value (red: warning; ESS in red: below {floor:,.0f})")
    ax.set_title(f"{target_name}: {n_rows:,} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
