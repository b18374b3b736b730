"""The benchmark runner: one contract for every suite.

A suite is a module in ``SUITES`` with ``run(ctx: Context) -> list[Row]``. A row is a flat
mapping that names what it measured (``system``) and carries metrics with units in their
names (``rounds_per_s``, ``cum_regret``, ``p99_ms``, ``peak_rss_mb``). Suites may add a free
text ``notes`` list and PNG plots through ``ctx``. The runner writes ``NAME.json`` (rows, the
machine, the versions of encore's dependencies and of every peer, the command and the time it
finished), ``NAME.md`` (the table) and prints the table. ``benchmarks.report`` renders a
folder of those JSON files as one page.

A figure whose sample cannot support it (a rate over no measurable time, a percentile with no
sample beyond it, a ratio over zero, a slope through too few points) is written as
:data:`TOO_SHORT` instead of a number: the helpers below (:func:`rate`, :func:`ratio`,
:func:`median`, :func:`percentile`, :func:`fit_line`) say so, and the runner turns any NaN or
infinity left in a row (or formatted into a note) into the same phrase, so no table or JSON file
shows ``nan`` or ``inf``.

Plots share one look: :data:`SERIES_COLOURS` gives each system one colour in every plot, and
the legend sits under the axes, never over the data.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import statistics
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

Row = dict[str, Any]

TOO_SHORT = "too short to measure"
"""What a table shows for a figure its sample cannot support."""

MIN_TIMED_S = 0.01
"""The least timed work a rate is computed over: about one scheduler time slice, so a single
preemption cannot swing the figure by a factor of two or more."""

MIN_FIT_POINTS = 5
"""The fewest samples, at distinct x values, a fitted slope is drawn or reported through."""

SUITES: dict[str, str] = {
    "kafka": "benchmarks.kafka_raw",
    "bandits": "benchmarks.bandits",
    "rewards": "benchmarks.rewards",
    "ope": "benchmarks.ope",
    "daemon": "benchmarks.daemon",
    "soak": "benchmarks.soak",
    "fuzz": "benchmarks.fuzz",
}

# encore's own runtime dependencies are added from its installed metadata (see versions()).
PEERS = (
    "encore",
    "jax",
    "jaxlib",
    "optax",
    "numpy",
    "kafka-python",
    "vowpalwabbit",
    "mabwiser",
    "river",
    "scikit-learn",
    "obp",
)


@dataclass
class Context:
    """What a suite gets: the size switch, the output folder and a place for notes."""

    quick: bool
    out: Path
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def save_plot(self, name: str, draw: Callable[[Any], None]) -> Path:
        """Draw on a fresh matplotlib axis with ``draw(ax)`` and save ``name``.png."""
        return self.save_figure(name, lambda fig: draw(fig.add_subplot()))

    def save_figure(
        self, name: str, draw: Callable[[Any], None], *, size: tuple[float, float] = (7.0, 4.5)
    ) -> Path:
        """Draw on a fresh matplotlib figure with ``draw(fig)`` (which adds its own axes) and
        save ``name``.png, with one legend for every labelled line under the axes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size)
        draw(fig)
        fig.tight_layout()
        legend = legend_below(fig)
        path = self.out / f"{name}.png"
        fig.savefig(
            path,
            dpi=110,
            bbox_inches="tight",
            bbox_extra_artists=[legend] if legend is not None else None,
        )
        plt.close(fig)
        self.plots.append(path)
        return path


# ----------------------------------------------------------------------------- plots

SERIES_COLOURS: dict[str, str] = {
    # bandits: baselines, encore's policies, Vowpal Wabbit, MABWiser
    "uniform": "#7f7f7f",
    "oracle": "#000000",
    "encore linucb": "#1f77b4",
    "encore linucb (no track id)": "#aec7e8",
    "encore linucb forgetting": "#17becf",
    "encore lin_ts": "#2ca02c",
    "encore squarecb": "#ff7f0e",
    "encore squarecb forgetting": "#ffbb78",
    "encore epsilon_greedy": "#98df8a",
    "encore softmax": "#9467bd",
    "encore logistic_ts": "#c5b0d5",
    "encore neural_linear": "#8c564b",
    "vw squarecb": "#d62728",
    "vw epsilon": "#ff9896",
    "mabwiser linucb (one shared model)": "#e377c2",
    "mabwiser linucb (one shared model) per-round predict": "#bcbd22",
    "mabwiser lints": "#f7b6d2",
    "mabwiser linucb per-arm": "#dbdb8d",
    # rewards: encore's reward models and the peers
    "encore skip (direct multi-head)": "#1f77b4",
    "encore completion (direct)": "#17becf",
    "encore survival (hazard)": "#2ca02c",
    "encore survival (hazard, averaged": "#98df8a",
    "encore session (GRU + hazard)": "#9467bd",
    "encore session (GRU + hazard, averaged": "#c5b0d5",
    "river logistic (learn_one)": "#d62728",
    "river logistic (learn_many": "#ff9896",
    "sklearn LogisticRegression": "#8c564b",
    # rewards: bandits on raw and model-based rewards
    "LinUCB on raw stream30 reward": "#7f7f7f",
    "LinUCB on denoised reward (model only, shrink 0)": "#ff7f0e",
    "LinUCB on denoised reward (shrink 0.5)": "#1f77b4",
    "greedy on the reward model alone": "#2ca02c",
    # daemon and soak: the feature encodings, the daemon itself
    "JSON floats": "#ff7f0e",
    "base64 float32": "#1f77b4",
    "encore daemon": "#1f77b4",
    # ope: the two targets
    "target close": "#1f77b4",
    "target far": "#ff7f0e",
}
"""One colour per system (or series), keyed by the start of its name: a label takes the colour
of the longest key it starts with, so ``encore linucb [drift]`` and ``mabwiser linucb (one
shared model) first 500 rounds`` keep their system's colour in every plot."""

_SPARE_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")


def colour(label: str) -> str:
    """The colour of the system ``label`` names (see :data:`SERIES_COLOURS`); a label no key
    starts with gets a spare colour chosen by its name, the same in every plot."""
    keys = [k for k in SERIES_COLOURS if label.startswith(k)]
    if keys:
        return SERIES_COLOURS[max(keys, key=len)]
    return _SPARE_COLOURS[zlib.crc32(label.encode()) % len(_SPARE_COLOURS)]


def legend_below(fig: Any) -> Any:
    """Replace the axes' legends of ``fig`` by one figure legend under the axes (each label
    once), so no legend covers data; None when nothing is labelled."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in fig.axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels and not label.startswith("_"):
                handles.append(handle)
                labels.append(label)
    if not handles:
        return None
    columns = 1 if max(map(len, labels)) > 48 else min(2, len(labels))
    return fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=columns,
        fontsize=8,
        frameon=False,
    )


# ----------------------------------------------------------------------------- supported figures


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def measured(value: Any) -> Any:
    """``value`` itself, or :data:`TOO_SHORT` where it is a NaN or infinite float."""
    if isinstance(value, float) and not math.isfinite(value):
        return TOO_SHORT
    return value


def rate(count: float, seconds: float, *, min_seconds: float = MIN_TIMED_S) -> float | str:
    """``count / seconds``, or :data:`TOO_SHORT` when less than ``min_seconds`` was timed."""
    if not (_finite(count) and _finite(seconds)) or seconds < min_seconds:
        return TOO_SHORT
    return count / seconds


def ratio(value: Any, base: Any) -> float | str:
    """``value / base``, or :data:`TOO_SHORT` where either is not a finite number or base is 0."""
    if not (_finite(value) and _finite(base)) or base == 0:
        return TOO_SHORT
    return value / base


def median(values: Iterable[Any], *, min_n: int = 1) -> float | str:
    """The median of the finite numbers in ``values``; :data:`TOO_SHORT` with fewer than
    ``min_n`` of them."""
    numbers = [float(v) for v in values if _finite(v)]
    if len(numbers) < max(min_n, 1):
        return TOO_SHORT
    return float(statistics.median(numbers))


def percentile(values: Sequence[float], q: float) -> float | str:
    """The ``q``-th percentile (0 < q < 100) of ``values``; :data:`TOO_SHORT` unless at least
    one sample lies beyond it (``len(values) * (1 - q / 100) >= 1``: 100 samples for a p99),
    and never from fewer than 2."""
    n = len(values)
    if n < 2 or n * (1.0 - q / 100.0) < 1.0 - 1e-9:
        return TOO_SHORT
    ordered = sorted(float(v) for v in values)
    pos = (n - 1) * q / 100.0  # linear interpolation between closest ranks (numpy's default)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Fit(NamedTuple):
    """A least-squares line ``y = slope * x + intercept`` through ``n`` points in ``[x0, x1]``."""

    slope: float
    intercept: float
    x0: float
    x1: float
    n: int


def fit_line(
    x: Sequence[float], y: Sequence[float], *, min_points: int = MIN_FIT_POINTS
) -> Fit | None:
    """The least-squares line through the finite ``(x, y)`` points; None where they hold fewer
    than ``min_points`` distinct ``x`` values (a slope they cannot support)."""
    pts = [(float(a), float(b)) for a, b in zip(x, y, strict=True) if _finite(a) and _finite(b)]
    if len({a for a, _ in pts}) < max(min_points, 2):
        return None
    xs, ys = [a for a, _ in pts], [b for _, b in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in pts) / sxx
    return Fit(slope, my - slope * mx, min(xs), max(xs), len(pts))


def fmt(value: Any, spec: str = ".4g", unit: str = "") -> str:
    """``value`` formatted with ``spec`` and followed by ``unit`` for a note, or
    :data:`TOO_SHORT` where it is not a finite number."""
    return format(value, spec) + unit if _finite(value) else TOO_SHORT


# ----------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def smaps_rollup_mb(pid: int | str = "self") -> dict[str, float]:
    """The memory totals of process ``pid`` from ``/proc/PID/smaps_rollup``, in MiB, by field
    (``Rss``, ``Pss``, ``Shared_Clean``, ...), all from one reading; empty where the file cannot be
    read (the process is gone, a kernel before 4.14, not Linux)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB":
            out[parts[0][:-1]] = int(parts[1]) / 1024.0
    return out


def pss_mb(pid: int | str = "self") -> float | None:
    """Proportional set size of process ``pid``, in MiB: its private pages plus, for each page
    it shares with other processes, its share of it (1/n of a page n processes map). Summed
    over processes, shared memory counts once, where resident sizes count it in each. None
    where ``/proc/PID/smaps_rollup`` cannot be read."""
    return smaps_rollup_mb(pid).get("Pss")


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _ram_gib() -> float | None:
    """Total memory in GiB, from ``/proc/meminfo`` (kB); None where that file is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _runtime_dependencies() -> list[str]:
    """The distribution names encore requires outside its extras, as installed metadata says."""
    try:
        requires = importlib.metadata.requires("encore") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = []
    for req in requires:
        if "extra ==" in req:
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        if match:
            names.append(match.group(0))
    return names


def versions() -> dict[str, str]:
    """Installed versions of encore, its runtime dependencies and the peers; absent ones omitted."""
    found: dict[str, str] = {}
    for name in dict.fromkeys([*PEERS, *_runtime_dependencies()]):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def format_value(value: Any) -> str:
    """A table cell: floats to about four significant figures, NaN or infinity as
    :data:`TOO_SHORT`, ``|`` escaped."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1000:
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return TOO_SHORT
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One markdown table over the union of the rows' keys, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """``value`` with every NaN or infinite float in it, however nested, as :data:`TOO_SHORT`."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return measured(value)


# "nan" or "inf" as a float prints it, alone or before a ratio's "x"; never inside a word
_NON_FINITE = re.compile(r"(?<![\w.])-?(?:nan|inf)(?=x\b|\W|$)", re.IGNORECASE)


def _clean_note(note: str) -> str:
    """``note`` with any ``nan`` or ``inf`` a float formatted into it as :data:`TOO_SHORT`."""
    return _NON_FINITE.sub(TOO_SHORT, note)


def _json_value(value: Any) -> Any:
    """A JSON form of a numpy scalar (or anything ``float`` takes): TOO_SHORT where not finite."""
    return measured(float(value))


def command_line(name: str, *, quick: bool, out: Path) -> str:
    """The command that runs suite ``name`` (or ``all``) at this size into ``out``."""
    return f"python -m benchmarks {name}{' --quick' if quick else ''} --out {out}"


_RAN: list[str] = []
"""The suites this process has run, in order (``python -m benchmarks all`` runs them all in one)."""


def run_suite(name: str, *, quick: bool, out: Path, command: str | None = None) -> list[Row]:
    """Run one suite and write its JSON and markdown; ``command`` is recorded as what ran it."""
    module = importlib.import_module(SUITES[name])
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=quick, out=out)
    earlier = list(_RAN)
    _RAN.append(name)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    rows: list[Row] = [_clean(row) for row in module.run(ctx)]
    elapsed_s = time.perf_counter() - started
    if earlier:
        ctx.notes.append(
            f"This suite ran in the process that had run {', '.join(earlier)} before it: its "
            "whole-process memory figures (peak_rss_mb, and the daemon's PSS) include what "
            "those left (JAX's caches, allocator pools)."
        )
    ctx.notes[:] = [_clean_note(n) for n in ctx.notes]
    report: dict[str, Any] = {
        "suite": name,
        "quick": quick,
        "elapsed_s": round(elapsed_s, 2),
        # other work on the machine shares its cores with the suite: the 1-minute load average
        "load_1m_start": round(load_start, 2),
        "load_1m_end": round(os.getloadavg()[0], 2),
        "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "command": command or command_line(name, quick=quick, out=out),
        "machine": machine(),
        "versions": versions(),
        "rows": rows,
        "notes": ctx.notes,
        "plots": [p.name for p in ctx.plots],
    }
    (out / f"{name}.json").write_text(
        json.dumps(report, indent=2, default=_json_value, allow_nan=False)
    )
    table = markdown_table(rows)
    md = [f"## {name}{' (quick)' if quick else ''}", "", table, ""]
    md += [f"- {n}" for n in ctx.notes]
    md += [f"![{p.stem}]({p.name})" for p in ctx.plots]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:3]))
    for note in ctx.notes:
        print(f"- {note}")
    print(
        f"({name}: {elapsed_s:.1f} s; machine {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores; written to {out})\n"
    )
    return rows
