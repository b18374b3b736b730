"""The benchmark page renderer on small synthetic suite results shaped like the suites' JSON."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main
from benchmarks._runner import TOO_SHORT
from benchmarks.report import load, render, times, write_report

MACHINE = {
    "cpu": "Test CPU 9000",
    "cores": 2,
    "ram_gib": 7.5,
    "python": "3.11.7",
    "platform": "Linux-test",
}
VERSIONS = {
    "encore": "0.1.0",
    "jax": "0.4.30",
    "numpy": "2.0.0",
    "kafka-python": "3.0.1",
    "vowpalwabbit": "9.10.0",
    "mabwiser": "2.7.4",
    "river": "0.21.0",
    "scikit-learn": "1.5.0",
    "pandas": "2.2.0",
}
COMMAND = "python -m benchmarks all --quick --out /tmp/bench"


def suite(name: str, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "suite": name,
        "quick": True,
        "elapsed_s": 12.3,
        "load_1m_start": 0.5,
        "load_1m_end": 1.25,
        "finished_utc": "2025-01-02 03:04",
        "command": COMMAND,
        "machine": MACHINE,
        "versions": VERSIONS,
        "rows": rows,
        "notes": [f"{name} note"],
        "plots": [],
        **extra,
    }


KAFKA = [
    {
        "system": "kafka-python producer (acks=all, linger 5 ms)",
        "events": 1000,
        "events_per_s": 50.0,
    },
    {"system": "kafka-python consumer, count only", "events": 1000, "events_per_s": 200.0},
    {
        "system": "kafka-python consumer + encore decode to columns",
        "events": 1000,
        "events_per_s": 100.0,
    },
]
BANDITS = [
    {"system": "uniform", "rounds": 2000, "cum_regret": 800.0},
    {"system": "encore linucb", "rounds": 2000, "cum_regret": 300.0, "rounds_per_s": 20000.0},
    {
        "system": "vw squarecb (quadratic U x T, track id)",
        "rounds": 2000,
        "cum_regret": 600.0,
        "rounds_per_s": 5000.0,
    },
    {
        "system": "mabwiser linucb (one shared model) first 500 rounds",
        "rounds": 500,
        "cum_regret": 150.0,
        "rounds_per_s": 2500.0,
    },
    {
        "system": "encore linucb [drift]",
        "rounds": 2000,
        "cum_regret": 400.0,
        "rounds_per_s": 8000.0,
    },
    {
        "system": "vw squarecb (quadratic U x T, track id) [drift]",
        "rounds": 2000,
        "cum_regret": 800.0,
        "rounds_per_s": 4000.0,
    },
    {
        "system": "encore linucb rank latency",
        "given": "2000 candidates x 16 track + 16 user features, slate 10",
        "p50_ms": 0.25,
        "p99_ms": 0.5,
    },
    {"system": "encore linucb update only", "rounds": 2000, "examples_per_s": 30000.0},
    {
        "system": "vw CLI --cb_explore_adf --squarecb -q UT -d FILE",
        "rounds": 2000,
        "examples_per_s": 10000.0,
    },
]
REWARDS = [
    {
        "system": "encore survival (hazard)",
        "target": "skip_2",
        "log_loss": 0.30,
        "auc": 0.7,
        "ece": 0.01,
        "update_plays_per_s": 400000.0,
    },
    {
        "system": "river logistic (learn_one)",
        "target": "skip_2",
        "log_loss": 0.40,
        "auc": 0.7,
        "ece": 0.02,
        "update_plays_per_s": 20000.0,
    },
    {
        "system": "encore survival (hazard)",
        "target": "complete",
        "log_loss": 0.25,
        "auc": 0.8,
        "ece": 0.01,
        "update_plays_per_s": 400000.0,
    },
    {
        "system": "river logistic (learn_one)",
        "target": "complete",
        "log_loss": 0.30,
        "auc": 0.8,
        "ece": 0.02,
        "update_plays_per_s": 40000.0,
    },
    {
        "system": "sklearn LogisticRegression (offline, last 900 plays)",
        "target": "skip_2",
        "log_loss": 0.60,
        "auc": 0.7,
        "ece": 0.03,
    },
    {
        "system": "sklearn LogisticRegression (offline, last 900 plays)",
        "target": "complete",
        "log_loss": 0.50,
        "auc": 0.8,
        "ece": 0.03,
    },
    {
        "system": "LinUCB on raw stream30 reward",
        "target": "P(stream >= 30 s)",
        "rounds": 1000,
        "cum_regret": 200.0,
    },
    {
        "system": "LinUCB on denoised reward (shrink 0.5)",
        "target": "P(stream >= 30 s)",
        "rounds": 1000,
        "cum_regret": 150.0,
    },
]
OPE = [
    {
        "part": "simulator",
        "system": "encore ips",
        "scenario": "target close",
        "bias": 0.01,
        "rmse": 0.04,
        "coverage_pct": 90.0,
    },
    {
        "part": "simulator",
        "system": "encore dr",
        "scenario": "target close",
        "bias": 0.0,
        "rmse": 0.01,
        "coverage_pct": 95.0,
    },
    {
        "part": "simulator",
        "system": "encore ips",
        "scenario": "target far",
        "bias": 0.02,
        "rmse": 0.1,
        "coverage_pct": 80.0,
    },
    {
        "part": "simulator",
        "system": "encore dr",
        "scenario": "target far",
        "bias": 0.01,
        "rmse": 0.05,
        "coverage_pct": 85.0,
    },
    {
        "part": "obd",
        "system": "encore ips",
        "scenario": "campaign all",
        "relative_error": 0.2,
        "covers_on_policy": True,
    },
    {
        "part": "obd",
        "system": "encore ips",
        "scenario": "campaign men",
        "relative_error": 0.4,
        "covers_on_policy": False,
    },
    {
        "part": "speed",
        "system": "encore all 9 single-action estimators",
        "scenario": "1,000,000 rows",
        "rows_per_s": 500000.0,
        "total_s": 2.0,
        "peak_rss_mb": 900.0,
        "peak_over_data": 6.5,
    },
]
DAEMON = [
    {
        "system": "kafka-python consume + encore decode to columns [base64 float32]",
        "events": 9000,
        "events_per_s": 90000.0,
        "rounds": "90,000",
        "vs_consume_decode": 1.0,
    },
    {
        "system": "encore daemon (decode, join, reward model, LinUCB, log, checkpoints) [base64 float32]",
        "events": 9000,
        "events_per_s": 45000.0,
        "rounds": "whole 45,000; steady 50,000",
        "vs_consume_decode": 0.5,
        "steady_events_per_s": math.nan,
        "late": "a 1 | b 2",
    },
]


def write(folder: Path, reports: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for report in reports:
        # json.dumps writes NaN as the suites' reports do
        (folder / f"{report['suite']}.json").write_text(json.dumps(report, indent=2))


def table(page: str, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table under ``### title``, as header -> cell."""
    lines = page.split(f"### {title}\n\n", 1)[1].splitlines()
    body = []
    for line in lines:
        if not line.startswith("|"):
            break
        body.append(line)
    split = [[c.strip() for c in line.strip("|").split(" | ")] for line in body]
    header, rows = split[0], split[2:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def by_system(rows: list[dict[str, str]], system: str) -> dict[str, str]:
    return next(r for r in rows if r["system"] == system)


def page_for(tmp_path: Path) -> str:
    write(
        tmp_path,
        [
            suite("daemon", DAEMON),
            suite("kafka", KAFKA),
            suite("bandits", BANDITS),
            suite("rewards", REWARDS),
            suite("ope", OPE),
        ],
    )
    return render(load(tmp_path), folder=tmp_path)


def test_header_names_command_date_machine_and_versions(tmp_path: Path) -> None:
    page = page_for(tmp_path)
    assert page.startswith("# Benchmark results\n")
    assert f"Produced by `{COMMAND}`" in page
    assert "2025-01-02 03:04 UTC" in page
    assert "Test CPU 9000, 2 cores, 7.5 GiB RAM" in page
    assert "Python: 3.11.7" in page
    versions = {
        r["package"]: r for r in table(page.replace("## Versions", "### Versions"), "Versions")
    }
    assert versions["vowpalwabbit"]["version"] == "9.10.0"
    assert versions["vowpalwabbit"]["role"] == "peer (bandits)"
    assert versions["pandas"]["role"] == "dependency"
    assert versions["obp"]["version"] == "not installed"
    for word in ("previous", "before", "issue"):
        assert word not in page.lower()


def test_suites_in_runner_order_with_size_and_reproducing_command(tmp_path: Path) -> None:
    page = page_for(tmp_path)
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Versions",
        "## kafka (`--quick` size)",
        "## bandits (`--quick` size)",
        "## rewards (`--quick` size)",
        "## ope (`--quick` size)",
        "## daemon (`--quick` size)",
    ]
    assert (
        f"Reproduce: `python -m benchmarks bandits --quick --out {tmp_path}` (this run: 12 s; "
        "1-minute load average 0.5 at its start, 1.25 at its end, on 2 cores)."
    ) in page
    assert "- bandits note" in page


def test_kafka_ratios_against_the_plain_consumer(tmp_path: Path) -> None:
    rows = table(page_for(tmp_path), "Raw client rates on the local broker")
    vs = "events/s vs kafka-python consumer"
    assert by_system(rows, "kafka-python consumer, count only")[vs] == "1x"
    assert by_system(rows, "kafka-python consumer + encore decode to columns")[vs] == "0.5x"
    assert by_system(rows, "kafka-python producer (acks=all, linger 5 ms)")[vs] == "0.25x"
    assert by_system(rows, "kafka-python consumer, count only")["events"] == "1,000"


def test_bandit_ratios_against_vw_of_the_same_variant_and_rounds(tmp_path: Path) -> None:
    page = page_for(tmp_path)
    rows = table(page, "Regret and throughput on the same simulated rounds")
    linucb = by_system(rows, "encore linucb")
    assert (linucb["cum_regret"], linucb["regret vs VW"], linucb["rounds/s vs VW"]) == (
        "300.0",
        "0.5x",
        "4x",
    )
    drift = by_system(rows, "encore linucb [drift]")
    assert (drift["regret vs VW"], drift["rounds/s vs VW"]) == ("0.5x", "2x")
    mab = by_system(rows, "mabwiser linucb (one shared model) first 500 rounds")
    assert mab["regret vs VW"] == ""  # 500 rounds against VW's 2,000: not comparable
    assert mab["rounds/s vs VW"] == "0.5x"
    assert by_system(rows, "uniform")["rounds/s vs VW"] == ""
    updates = table(page, "Update-only throughput")
    assert by_system(updates, "encore linucb update only")["vs VW CLI"] == "3x"
    latency = table(page, "Ranking latency (no peer measured; p50 is the median call)")
    assert latency == [
        {
            "system": "encore linucb rank latency",
            "request": "2000 candidates x 16 track + 16 user features",
            "p50_ms": "0.25",
            "p99_ms": "0.5",
        }
    ]


def test_reward_ratios_per_target(tmp_path: Path) -> None:
    page = page_for(tmp_path)
    rows = table(page, "Held-out calibration and update throughput")
    assert [r["target"] for r in rows] == ["skip_2"] * 3 + ["complete"] * 3
    skip = [r for r in rows if r["target"] == "skip_2"]
    assert by_system(skip, "encore survival (hazard)")["log loss vs sklearn"] == "0.5x"
    assert by_system(skip, "encore survival (hazard)")["updates/s vs River learn_one"] == "20x"
    complete = [r for r in rows if r["target"] == "complete"]
    assert by_system(complete, "encore survival (hazard)")["log loss vs sklearn"] == "0.5x"
    assert by_system(complete, "encore survival (hazard)")["updates/s vs River learn_one"] == "10x"
    regret = table(page, "Bandit regret with a model-based reward")
    vs = "regret vs LinUCB on raw stream30 reward"
    assert by_system(regret, "LinUCB on denoised reward (shrink 0.5)")[vs] == "0.75x"


def test_ope_tables(tmp_path: Path) -> None:
    page = page_for(tmp_path)
    sim = table(page, "Estimators on simulated logs (true value known)")
    far = [r for r in sim if r["scenario"] == "target far"]
    assert by_system(far, "encore dr")["rmse vs ips"] == "0.5x"
    obd = table(page, "Open Bandit Dataset: estimated vs on-policy click rate")
    assert obd == [
        {
            "system": "encore ips",
            "campaigns": "2",
            "mean_relative_error": "0.3",
            "covers_on_policy": "1/2",
        }
    ]
    speed = table(page, "Speed and memory")
    assert speed[0]["rows_per_s"] == "500,000"
    assert speed[0]["peak_over_data"] == "6.5"


def test_daemon_table_shows_the_same_run_ratio_and_missing_values(tmp_path: Path) -> None:
    page = page_for(tmp_path)
    rows = table(page, "Daemon end to end vs the raw client on the same topics")
    daemon = rows[1]
    assert daemon["vs consume + decode"] == "0.5x"
    assert daemon["events_per_s"] == "45,000"
    assert daemon["steady_events_per_s"] == TOO_SHORT  # NaN in older JSON files
    assert daemon["peak RSS MiB (the suite's process)"] == ""  # older rows: no memory figure
    assert re.search(r"\b(nan|inf)\b", page.lower()) is None
    assert "a 1 \\| b 2" in page  # a pipe inside a cell does not split the full table's row


def test_report_command_and_default_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(out, [suite("kafka", KAFKA)])
    assert write_report(out) == out / "README.md"
    assert "## kafka (`--quick` size)" in (out / "README.md").read_text()
    target = tmp_path / "page.md"
    assert main(["report", str(out), "--to", str(target)]) == 0
    assert f"`python -m benchmarks report {out} --to {target}`" in target.read_text()
    assert f"`python -m benchmarks report {out}`" in (out / "README.md").read_text()


def test_old_reports_without_date_or_ram_still_render(tmp_path: Path) -> None:
    old = suite("kafka", KAFKA, machine={k: v for k, v in MACHINE.items() if k != "ram_gib"})
    del old["finished_utc"], old["command"]
    write(tmp_path, [old])
    page = render(load(tmp_path), folder=tmp_path)
    assert "RAM not recorded" in page
    assert f"`python -m benchmarks kafka --quick --out {tmp_path}`" in page
    assert "- Date: " in page and "UTC" in page


def test_a_suite_whose_peers_are_missing_says_which_extra_installs_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from benchmarks import __main__ as runner

    present = object()  # whether the peers are installed here must not matter
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("vowpalwabbit", "river") else present,
    )
    assert runner.missing_peers(["bandits", "ope"]) == ["vowpalwabbit"]
    assert runner.main(["bandits", "--quick", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "vowpalwabbit not installed" in err and "pip install -e '.[bench]'" in err
    assert runner.missing_peers(["all", *runner.SUITES]) == ["vowpalwabbit", "river"]


def test_ratios_of_figures_too_short_to_measure_say_so() -> None:
    assert times(3.0, 2.0) == "1.5x"
    assert times(TOO_SHORT, 2.0) == TOO_SHORT
    assert times(3.0, TOO_SHORT) == TOO_SHORT
    assert times(3.0, 0.0) == TOO_SHORT
    assert times(math.inf, 2.0) == TOO_SHORT
    assert times(math.nan, 2.0) == TOO_SHORT
    assert times(None, 2.0) == ""  # no such figure: nothing to compare
    assert times(3.0, None) == ""


def test_memory_headlines_name_the_measure(tmp_path: Path) -> None:
    daemon = [
        {**DAEMON[1], "pss_peak_mb": 900.0, "memory": "PSS, daemon + decoding process"},
    ]
    soak = [
        {
            "system": "encore daemon, live stream",
            "events": 100_000,
            "events_per_s": 5000.0,
            "producer_events_per_s": TOO_SHORT,
            "pss_at_10pct_mb": 600.0,
            "pss_end_mb": 650.0,
            "pss_growth_mb_per_million_events_2nd_half": TOO_SHORT,
        }
    ]
    write(tmp_path, [suite("daemon", daemon), suite("soak", soak)])
    page = render(load(tmp_path), folder=tmp_path)
    rows = table(page, "Daemon end to end vs the raw client on the same topics")
    assert rows[0]["peak PSS MiB (daemon + decoding process)"] == "900.0"
    (row,) = table(page, "Live stream memory soak")
    assert row["MiB at 10 % (PSS, daemon + decoding process)"] == "600.0"
    assert row["growth over the 2nd half, MiB per M events"] == TOO_SHORT
    assert row["vs producer rate"] == TOO_SHORT


def test_soak_rows_from_resident_sizes_keep_their_name(tmp_path: Path) -> None:
    soak = [
        {"system": "encore daemon", "events": 10, "rss_at_10pct_mb": 500.0, "rss_end_mb": 510.0}
    ]
    write(tmp_path, [suite("soak", soak)])
    (row,) = table(render(load(tmp_path), folder=tmp_path), "Live stream memory soak")
    assert row["MiB at 10 % (RSS)"] == "500.0"
