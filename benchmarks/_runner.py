"""The benchmark runner: one contract for every suite.

A suite is a module in ``SUITES`` with ``run(ctx: Context) -> list[Row]``. A row is a flat
mapping that names what it measured (``system``) and carries metrics with units in their
names (``rounds_per_s``, ``cum_regret``, ``p99_ms``, ``peak_rss_mb``). Suites may add a free
text ``notes`` list and PNG plots through ``ctx``. The runner writes ``NAME.json`` (rows, the
machine, the versions of encore's dependencies and of every peer, the command and the time it
finished), ``NAME.md`` (the table) and prints the table. ``benchmarks.report`` renders a
folder of those JSON files as one page.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Row = dict[str, Any]

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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(ax)
        fig.tight_layout()
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.plots.append(path)
        return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    """A table cell: floats to about four significant figures, NaN as n/a, ``|`` escaped."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1000:
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
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


def command_line(name: str, *, quick: bool, out: Path) -> str:
    """The command that runs suite ``name`` (or ``all``) at this size into ``out``."""
    return f"python -m benchmarks {name}{' --quick' if quick else ''} --out {out}"


def run_suite(name: str, *, quick: bool, out: Path, command: str | None = None) -> list[Row]:
    """Run one suite and write its JSON and markdown; ``command`` is recorded as what ran it."""
    module = importlib.import_module(SUITES[name])
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=quick, out=out)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    rows: list[Row] = module.run(ctx)
    elapsed_s = time.perf_counter() - started
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
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=float))
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
