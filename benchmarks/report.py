"""Render a folder of suite results (``NAME.json``, as ``python -m benchmarks ... --out DIR``
writes them) as one markdown page: the run's machine and versions, then each suite's headline
tables, the command that reproduces them, and all of its rows and notes.

Every figure on the page comes from the JSON files; ratios are taken between rows of the same
file, so a system is only ever compared with a peer measured in the same run. Each suite's
headline is an explicit function in ``HEADLINES``; a suite without one gets its full table only.

``python -m benchmarks report DIR [--to PATH]``; ``python -m benchmarks all`` ends with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._runner import (
    SUITES,
    TOO_SHORT,
    Row,
    command_line,
    fmt,
    format_value,
    markdown_table,
)

Report = dict[str, Any]

# The peers each suite measures encore against, and the packages encore runs on. Versions not
# in a run's JSON are shown as not installed.
PEER_SUITES: dict[str, str] = {
    "kafka-python": "kafka, daemon, soak",
    "vowpalwabbit": "bandits",
    "mabwiser": "bandits",
    "river": "rewards",
    "scikit-learn": "rewards",
    "obp": "ope",
}
CORE = ("encore", "jax", "jaxlib", "optax", "numpy")


@dataclass(frozen=True)
class Column:
    """One headline column: ``key`` of the row dict, shown as ``header``."""

    key: str
    header: str = ""

    @property
    def title(self) -> str:
        return self.header or self.key


@dataclass(frozen=True)
class Table:
    """A headline table: its title, columns, rows and a sentence on what the ratios divide by."""

    title: str
    columns: Sequence[Column]
    rows: Sequence[Mapping[str, Any]]
    about: str = ""


# ----------------------------------------------------------------------------- helpers


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def times(value: Any, base: Any) -> str:
    """``value / base`` as ``"0.65x"``; :data:`TOO_SHORT` where either was too short to measure
    (or is not finite) or ``base`` is 0; empty where either is missing."""
    if value == TOO_SHORT or base == TOO_SHORT:
        return TOO_SHORT
    if not _number(value) or not _number(base):
        return ""
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return TOO_SHORT
    ratio = value / base
    return f"{ratio:.3g}x" if ratio < 10 else f"{ratio:,.0f}x"


def first(rows: Iterable[Row], test: Callable[[Row], bool]) -> Row | None:
    return next((r for r in rows if test(r)), None)


def first_clause(text: Any) -> str:
    """The part of a ``given`` description before its first comma."""
    return str(text).split(",", 1)[0]


def render_table(table: Table) -> str:
    columns = [c.title for c in table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.rows:
        cells = [format_value(row.get(c.key, "")) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- headlines


def kafka_tables(rows: list[Row]) -> list[Table]:
    base = first(rows, lambda r: r["system"] == "kafka-python consumer, count only")
    peer = base["events_per_s"] if base else None
    shown = [{**r, "vs": times(r.get("events_per_s"), peer)} for r in rows]
    return [
        Table(
            "Raw client rates on the local broker",
            [
                Column("system"),
                Column("events"),
                Column("events_per_s"),
                Column("mb_per_s"),
                Column("vs", "events/s vs kafka-python consumer"),
            ],
            shown,
            "Ratios divide by kafka-python's consumer counting records, measured in the same run.",
        )
    ]


def _drift(system: str) -> str:
    return " [drift]" if system.endswith(" [drift]") else ""


def bandits_tables(rows: list[Row]) -> list[Table]:
    tables: list[Table] = []
    regret = [r for r in rows if "cum_regret" in r]
    vw = {
        _drift(r["system"]): r
        for r in regret
        if r["system"].startswith("vw squarecb") and "cum_regret" in r
    }
    shown = []
    for r in regret:
        peer = vw.get(_drift(r["system"]))
        same_rounds = peer is not None and peer.get("rounds") == r.get("rounds")
        shown.append(
            {
                **r,
                "regret_vs": times(r["cum_regret"], peer["cum_regret"])
                if peer is not None and same_rounds
                else "",
                "speed_vs": times(r.get("rounds_per_s"), peer.get("rounds_per_s")) if peer else "",
            }
        )
    if shown:
        tables.append(
            Table(
                "Regret and throughput on the same simulated rounds",
                [
                    Column("system"),
                    Column("rounds"),
                    Column("cum_regret"),
                    Column("avg_reward_last20k"),
                    Column("rounds_per_s"),
                    Column("peak_rss_mb"),
                    Column("regret_vs", "regret vs VW"),
                    Column("speed_vs", "rounds/s vs VW"),
                ],
                shown,
                "Ratios divide by VW squarecb's row of the same variant (stationary or [drift]) "
                "in the same run; regret is compared only over the same number of rounds.",
            )
        )
    scen = [r for r in rows if "scenario" in r]
    if scen:
        tables.append(
            Table(
                "Default policies on four streams (adaptation, catalogue size, speed)",
                [
                    Column("scenario"),
                    Column("system"),
                    Column("regret_median", "regret (median)"),
                    Column("regret_range", "over seeds"),
                    Column("vs_best_discount", "vs best fixed discount"),
                    Column("vs_vw", "regret vs VW"),
                    Column("rounds_per_s"),
                    Column("speed_vs_vw", "rounds/s vs VW"),
                ],
                scen,
                "Medians over seeds of per-seed ratios: regret divided by VW squarecb's on the "
                "same rounds, and for the defaults by the lowest regret of the same policy with "
                "adaptation off and a fixed discount (1.0, 0.999, 0.99, 0.95) chosen in hindsight.",
            )
        )
    updates = [r for r in rows if "examples_per_s" in r]
    vw_cli = first(updates, lambda r: r["system"].startswith("vw "))
    if updates:
        peer = vw_cli["examples_per_s"] if vw_cli else None
        tables.append(
            Table(
                "Update-only throughput",
                [
                    Column("system"),
                    Column("rounds"),
                    Column("examples_per_s"),
                    Column("vs", "vs VW CLI"),
                ],
                [{**r, "vs": times(r["examples_per_s"], peer)} for r in updates],
                "Ratios divide by VW's command-line learner on the same logged rounds, same run.",
            )
        )
    cat = [r for r in rows if "bytes_per_track" in r]
    if cat:
        tables.append(
            Table(
                "Track catalogue in memory (no peer measured)",
                [
                    Column("system"),
                    Column("bytes_per_track"),
                    Column("rss_mb", "resident MB"),
                    Column("load_s"),
                    Column("update_s"),
                    Column("lookup_p99_ms", "lookup p99 ms"),
                    Column("lookup_p99_during_update_ms", "lookup p99 ms, during update"),
                    Column("decode_records_per_s", "records decoded/s"),
                ],
                cat,
            )
        )
    latency = [{**r, "shape": first_clause(r.get("given", ""))} for r in rows if "p50_ms" in r]
    if latency:
        tables.append(
            Table(
                "Ranking latency (no peer measured; p50 is the median call)",
                [Column("system"), Column("shape", "request"), Column("p50_ms"), Column("p99_ms")],
                latency,
            )
        )
    return tables


def rewards_tables(rows: list[Row]) -> list[Table]:
    tables: list[Table] = []
    calib = [r for r in rows if "log_loss" in r]
    targets = list(dict.fromkeys(r["target"] for r in calib))
    shown = []
    for target in targets:
        same = [r for r in calib if r["target"] == target]
        sk = first(same, lambda r: r["system"].startswith("sklearn"))
        river = first(same, lambda r: r["system"] == "river logistic (learn_one)")
        for r in same:
            shown.append(
                {
                    **r,
                    "loss_vs": times(r["log_loss"], sk["log_loss"]) if sk else "",
                    "speed_vs": times(r.get("update_plays_per_s"), river["update_plays_per_s"])
                    if river
                    else "",
                }
            )
    if shown:
        tables.append(
            Table(
                "Held-out calibration and update throughput",
                [
                    Column("system"),
                    Column("target"),
                    Column("log_loss"),
                    Column("auc"),
                    Column("ece"),
                    Column("update_plays_per_s"),
                    Column("loss_vs", "log loss vs sklearn"),
                    Column("speed_vs", "updates/s vs River learn_one"),
                ],
                shown,
                "Ratios divide by scikit-learn's LogisticRegression (log loss) and River's "
                "learn_one (update rate) on the same target, same run.",
            )
        )
    regret = [r for r in rows if "cum_regret" in r]
    if regret:
        raw = regret[0]["cum_regret"]
        tables.append(
            Table(
                "Bandit regret with a model-based reward",
                [
                    Column("system"),
                    Column("rounds"),
                    Column("cum_regret"),
                    Column("avg_true_reward_second_half"),
                    Column("vs", f"regret vs {regret[0]['system']}"),
                ],
                [{**r, "vs": times(r["cum_regret"], raw)} for r in regret],
            )
        )
    return tables


def ope_tables(rows: list[Row]) -> list[Table]:
    tables: list[Table] = []
    sim = [r for r in rows if r.get("part") == "simulator"]
    if sim:
        shown = []
        for r in sim:
            ips = first(
                sim, lambda o, r=r: o["scenario"] == r["scenario"] and o["system"] == "encore ips"
            )
            shown.append({**r, "vs": times(r["rmse"], ips["rmse"]) if ips else ""})
        tables.append(
            Table(
                "Estimators on simulated logs (true value known)",
                [
                    Column("system"),
                    Column("scenario"),
                    Column("bias"),
                    Column("rmse"),
                    Column("coverage_pct"),
                    Column("vs", "rmse vs ips"),
                ],
                shown,
                "No peer library is run; ratios divide by inverse propensity scoring's RMSE in "
                "the same scenario and run.",
            )
        )
    obd = [r for r in rows if r.get("part") == "obd"]
    if obd:
        summary = []
        for system in dict.fromkeys(r["system"] for r in obd):
            mine = [r for r in obd if r["system"] == system]
            errors = [r["relative_error"] for r in mine]
            covered = sum(bool(r.get("covers_on_policy")) for r in mine)
            summary.append(
                {
                    "system": system,
                    "campaigns": len(mine),
                    "mean_relative_error": sum(errors) / len(errors),
                    "covers_on_policy": f"{covered}/{len(mine)}",
                }
            )
        tables.append(
            Table(
                "Open Bandit Dataset: estimated vs on-policy click rate",
                [
                    Column("system"),
                    Column("campaigns"),
                    Column("mean_relative_error"),
                    Column("covers_on_policy"),
                ],
                summary,
            )
        )
    speed = [r for r in rows if r.get("part") == "speed"]
    if speed:
        tables.append(
            Table(
                "Speed and memory",
                [
                    Column("system"),
                    Column("scenario"),
                    Column("rows_per_s"),
                    Column("total_s"),
                    Column("peak_rss_mb"),
                    Column("peak_over_data"),
                ],
                speed,
            )
        )
    return tables


def _has(rows: Iterable[Row], key: str) -> bool:
    return any(key in r for r in rows)


def daemon_tables(rows: list[Row]) -> list[Table]:
    shown = [{**r, "vs": times(r.get("vs_consume_decode"), 1.0)} for r in rows]
    memory = (
        [Column("pss_peak_mb", "peak PSS MiB (daemon + decoding process)")]
        if _has(rows, "pss_peak_mb")
        else [Column("peak_rss_mb", "peak RSS MiB (the suite's process)")]
    )
    return [
        Table(
            "Daemon end to end vs the raw client on the same topics",
            [
                Column("system"),
                Column("events"),
                Column("events_per_s"),
                Column("vs", "vs consume + decode"),
                Column("steady_events_per_s"),
                *memory,
            ],
            shown,
            "Rates are medians over the suite's rounds (each round's figure is in the rounds "
            "column of the full table). "
            "vs consume + decode divides by kafka-python consuming and decoding the same "
            "stream on the same record path, measured in the same run.",
        )
    ]


def soak_tables(rows: list[Row]) -> list[Table]:
    shown = [
        {**r, "vs": times(r.get("events_per_s"), r.get("producer_events_per_s"))} for r in rows
    ]
    kind = "pss" if _has(rows, "pss_end_mb") else "rss"
    measure = "PSS, daemon + decoding process" if kind == "pss" else "RSS"
    return [
        Table(
            "Live stream memory soak",
            [
                Column("system"),
                Column("events"),
                Column("events_per_s"),
                Column("vs", "vs producer rate"),
                Column(f"{kind}_at_10pct_mb", f"MiB at 10 % ({measure})"),
                Column(f"{kind}_end_mb", "MiB at the end"),
                Column(
                    f"{kind}_growth_mb_per_million_events_2nd_half",
                    "growth over the 2nd half, MiB per M events",
                ),
            ],
            shown,
        )
    ]


def fuzz_tables(rows: list[Row]) -> list[Table]:
    loop = [r for r in rows if "messages_per_s" in r]
    return [
        Table(
            "Fuzzed messages through decode and step",
            [
                Column("system"),
                Column("messages"),
                Column("accepted"),
                Column("rejected"),
                Column("messages_per_s"),
                Column("peak_rss_mb"),
            ],
            loop,
        )
    ]


HEADLINES: dict[str, Callable[[list[Row]], list[Table]]] = {
    "kafka": kafka_tables,
    "bandits": bandits_tables,
    "rewards": rewards_tables,
    "ope": ope_tables,
    "daemon": daemon_tables,
    "soak": soak_tables,
    "fuzz": fuzz_tables,
}


# ----------------------------------------------------------------------------- page


def load(folder: Path) -> list[Report]:
    """The suites' JSON files in ``folder``, in ``SUITES`` order, then any others by name."""
    paths = [folder / f"{name}.json" for name in SUITES]
    paths += sorted(p for p in folder.glob("*.json") if p.stem not in SUITES)
    reports = []
    for path in paths:
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        if not isinstance(report, dict) or "rows" not in report or "suite" not in report:
            continue
        report.setdefault(
            "finished_utc",
            datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M"),
        )
        reports.append(report)
    return reports


def _size(report: Report) -> str:
    return "`--quick` size" if report.get("quick") else "full size"


def _machine_line(m: Mapping[str, Any]) -> str:
    ram = m.get("ram_gib")
    ram_txt = f"{ram:g} GiB RAM" if isinstance(ram, int | float) else "RAM not recorded"
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {ram_txt}; {m.get('platform', '?')}"


def _load(report: Report) -> str:
    start, end = report.get("load_1m_start"), report.get("load_1m_end")
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return ""
    cores = report.get("machine", {}).get("cores", "?")
    return f"; 1-minute load average {start:g} at its start, {end:g} at its end, on {cores} cores"


def _versions_table(versions: Mapping[str, str]) -> str:
    rows = []
    for name in dict.fromkeys([*CORE, *versions, *PEER_SUITES]):
        role = (
            f"peer ({PEER_SUITES[name]})"
            if name in PEER_SUITES
            else "encore"
            if name == "encore"
            else "dependency"
        )
        rows.append({"package": name, "version": versions.get(name, "not installed"), "role": role})
    return markdown_table(rows)


def render(reports: Sequence[Report], *, folder: Path, to: Path | None = None) -> str:
    """The markdown page for ``reports`` (as ``load`` returns them) read from ``folder``;
    ``to``, where given, is named in the page's rendering command."""
    if not reports:
        return f"# Benchmark results\n\nNo suite results in `{folder}`.\n"
    head = reports[0]
    commands = list(
        dict.fromkeys(
            r.get("command") or command_line(r["suite"], quick=bool(r.get("quick")), out=folder)
            for r in reports
        )
    )
    sizes = sorted({_size(r) for r in reports})
    finished = max(str(r["finished_utc"]) for r in reports)
    lines = [
        "# Benchmark results",
        "",
        "<!-- Rendered by `python -m benchmarks report` from the suites' JSON output; "
        "edit benchmarks/report.py or the suites, not this file. -->",
        "",
        "Produced by "
        + ", then ".join(f"`{c}`" for c in commands)
        + f" and rendered with `python -m benchmarks report {folder}"
        + (f" --to {to}`." if to is not None else "`."),
        "",
        f"- Size: {' and '.join(sizes)}",
        f"- Date: {finished} UTC (when the last suite finished)",
        f"- Machine: {_machine_line(head.get('machine', {}))}",
        f"- Python: {head.get('machine', {}).get('python', '?')}",
        "",
        "Each suite's ratios compare rows of that suite's own run: a system against the peer "
        "measured beside it on the same data and machine.",
        "",
        "## Versions",
        "",
        _versions_table(head.get("versions", {})),
        "",
    ]
    for report in reports:
        name = report["suite"]
        rows: list[Row] = report["rows"]
        lines += [
            f"## {name} ({_size(report)})",
            "",
            f"Reproduce: `{command_line(name, quick=bool(report.get('quick')), out=folder)}` "
            f"(this run: {fmt(report.get('elapsed_s'), '.0f', ' s')}{_load(report)}).",
            "",
        ]
        if report.get("machine") != head.get("machine"):
            lines += [f"Machine for this suite: {_machine_line(report.get('machine', {}))}.", ""]
        differ = {
            k: v
            for k, v in report.get("versions", {}).items()
            if head.get("versions", {}).get(k) != v
        }
        if differ:
            lines += [
                "Versions that differ for this suite: "
                + ", ".join(f"{k} {v}" for k, v in differ.items())
                + ".",
                "",
            ]
        headline = HEADLINES.get(name)
        for table in headline(rows) if headline else []:
            if not table.rows:
                continue
            lines += [f"### {table.title}", "", render_table(table), ""]
            if table.about:
                lines += [table.about, ""]
        lines += [
            "<details><summary>All rows and notes</summary>",
            "",
            markdown_table(rows),
            "",
            *[f"- {note}" for note in report.get("notes", [])],
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(folder: Path, *, to: Path | None = None) -> Path:
    """Render ``folder``'s suite JSON files to ``to`` (default ``folder/README.md``)."""
    path = to or folder / "README.md"
    path.write_text(render(load(folder), folder=folder, to=to))
    return path
