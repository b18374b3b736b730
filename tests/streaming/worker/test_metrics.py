"""Metrics: the Prometheus endpoint scraped over HTTP, derived values, the status file and table."""

from __future__ import annotations

import io
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from streaming.config import Config
from streaming.worker.metrics import (
    KNOWN_KEYS,
    Metrics,
    main,
    read_status,
    status_path,
    status_table,
    write_status,
)

SNAPSHOT: dict[str, Any] = {
    "now_ms": 70_000,
    "started_ms": 10_000,
    "events_total": {"encore.impressions": 1_000, "encore.outcomes": 3_000},
    "consumer_lag": {"encore.impressions/0": 12, "encore.outcomes/3": 0},
    "outcomes_total": 2_990,
    "joined_total": 2_600,
    "closed_total": 950,
    "late_total": {"outcome_after_window": 40, "outcome_orphan": 2},
    "dead_letters_total": {"invalid_json": 9, "bad_shape": 1},
    "reward_mean": {"linucb": 0.61, "logging": 0.44},
    "model_log_loss": {"completion": 0.52},
    "last_checkpoint_ms": 65_500,
    "checkpoints_total": 6,
    "snapshots_total": 12,
    "gc_collections_total": 11,
    "gc_seconds_total": 0.125,
    "align_pauses_total": 31,
    "limits_reached": {"join_evicted": 3, "history_listeners_evicted": 0},
    "history_listeners": 4_321,
    "tracks_seen": 1_000,
    "track_slots_shared": 0.25,
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_endpoint_exposes_the_snapshot_over_http() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.update_from(SNAPSHOT)
    server, port = metrics.serve("127.0.0.1", 0)
    try:
        assert port > 0
        text = scrape(port)
    finally:
        server.close()
    assert "# TYPE encore_events_total counter" in text
    assert "# TYPE encore_consumer_lag gauge" in text
    got = samples(text)
    assert got[("encore_events_total", (("topic", "encore.outcomes"),))] == 3_000
    assert got[("encore_events_total", (("topic", "encore.impressions"),))] == 1_000
    assert got[("encore_consumer_lag", (("partition", "0"), ("topic", "encore.impressions")))] == 12
    assert got[("encore_consumer_lag", (("partition", "3"), ("topic", "encore.outcomes")))] == 0
    assert got[("encore_late_total", (("kind", "outcome_after_window"),))] == 40
    assert got[("encore_dead_letters_total", (("code", "invalid_json"),))] == 9
    assert got[("encore_reward_mean", (("policy", "linucb"),))] == pytest.approx(0.61)
    assert got[("encore_model_log_loss", (("model", "completion"),))] == pytest.approx(0.52)
    assert got[("encore_joined_total", ())] == 2_600
    assert got[("encore_closed_total", ())] == 950
    assert got[("encore_snapshots_total", ())] == 12
    assert got[("encore_checkpoints_total", ())] == 6
    assert got[("encore_gc_collections_total", ())] == 11
    assert got[("encore_gc_seconds_total", ())] == pytest.approx(0.125)
    assert got[("encore_align_pauses_total", ())] == 31
    assert got[("encore_limits_reached", (("kind", "join_evicted"),))] == 3
    assert got[("encore_history_listeners", ())] == 4_321
    assert got[("encore_track_slots_shared", ())] == pytest.approx(0.25)
    assert got[("encore_tracks_seen", ())] == 1_000
    # Derived: join rate, checkpoint age, events/s since start, uptime.
    assert got[("encore_join_rate", ())] == pytest.approx(2_600 / 2_990)
    assert got[("encore_checkpoint_age_seconds", ())] == pytest.approx(4.5)
    assert got[("encore_events_per_s", ())] == pytest.approx(4_000 / 60)
    assert got[("encore_uptime_seconds", ())] == pytest.approx(60)


def test_updates_replace_values_and_rate_uses_the_interval() -> None:
    metrics = Metrics()
    metrics.update_from({"now_ms": 1_000, "events_total": {"t": 100}, "joined_total": 1})
    metrics.update_from({"now_ms": 3_000, "events_total": {"t": 500}, "joined_total": 7})
    snap = metrics.snapshot()
    assert snap["events_per_s"] == pytest.approx(200.0)
    assert snap["joined_total"] == 7
    metrics.update_from({"events_per_s": 5.0})  # given explicitly: used as is
    assert metrics.snapshot() == {"events_per_s": 5.0}
    server, port = metrics.serve()
    try:
        got = samples(scrape(port))
    finally:
        server.close()
        server.close()  # idempotent
    assert got == {("encore_events_per_s", ()): 5.0}


def test_own_registry_not_the_global_one() -> None:
    before = set(REGISTRY._names_to_collectors)  # pyright: ignore[reportPrivateUsage]
    a, b = Metrics(), Metrics()  # two in one process: no duplicate-name clash
    a.update_from({"snapshots_total": 1})
    b.update_from({"snapshots_total": 2})
    assert set(REGISTRY._names_to_collectors) == before  # pyright: ignore[reportPrivateUsage]
    assert a.registry.get_sample_value("encore_snapshots_total") == 1
    assert b.registry.get_sample_value("encore_snapshots_total") == 2


def test_server_binds_loopback_and_frees_its_port() -> None:
    metrics = Metrics()
    server, port = metrics.serve()
    assert server._httpd.server_address[0] == "127.0.0.1"  # pyright: ignore[reportPrivateUsage,reportOptionalMemberAccess]
    server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    with socket.socket() as s:  # the port can be bound again
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("stats", "message"),
    [
        ({"event_total": 1}, r"unknown metrics key\(s\) \['event_total'\]"),
        ({"joined_total": "7"}, "'joined_total' must be a number"),
        ({"joined_total": True}, "'joined_total' must be a number"),
        ({"late_total": 3}, "'late_total' must be a mapping"),
        ({"reward_mean": {"x": None}}, r"'reward_mean'\['x'\] must be a number"),
        ({"consumer_lag": {"encore.outcomes": 1}}, "must be 'topic/partition'"),
    ],
)
def test_bad_snapshots_are_clear_errors(stats: dict[str, Any], message: str) -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match=message):
        metrics.update_from(stats)
    assert metrics.snapshot() == {}


def test_status_file_round_trip(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.update_from(SNAPSHOT)
    path = tmp_path / "state" / "status.json"
    write_status(path, metrics.snapshot())
    assert read_status(path) == json.loads(json.dumps(metrics.snapshot()))
    assert read_status(path)["events_total"]["encore.outcomes"] == 3_000
    write_status(path, {"snapshots_total": 3})  # replaced atomically
    assert read_status(path) == {"snapshots_total": 3}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temporary left


def test_status_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no status file"):
        read_status(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_status(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        read_status(bad)
    with pytest.raises(ValueError):
        write_status(bad, {"join_rate": float("nan")})


def test_status_table_shows_every_metric() -> None:
    metrics = Metrics()
    metrics.update_from(SNAPSHOT)
    table = status_table(metrics.snapshot(), now_ms=72_000)
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(table)
    text = out.getvalue()
    for needle in (
        "status age (s)",
        "2.0",
        "uptime (s)",
        "events_total{encore.outcomes}",
        "3,000",
        "events_total (sum)",
        "4,000",
        "consumer_lag{encore.impressions/0}",
        "late_total{outcome_after_window}",
        "dead_letters_total{invalid_json}",
        "reward_mean{linucb}",
        "0.610",
        "model_log_loss{completion}",
        "join_rate",
        "0.870",
        "checkpoint_age_seconds",
        "4.500",
        "snapshots_total",
        "gc_collections_total",
        "gc_seconds_total",
        "align_pauses_total",
        "limits_reached{join_evicted}",
        "history_listeners",
        "track_slots_shared",
    ):
        assert needle in text, needle
    assert set(SNAPSHOT) <= KNOWN_KEYS


def test_encore_status_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "encore.toml"
    cfg_file.write_text(f'[checkpoint]\ndir = "{tmp_path / "ckpt"}"\n')
    assert main(["--config", str(cfg_file)]) == 3
    assert "no status file" in capsys.readouterr().out
    write_status(tmp_path / "ckpt" / "status.json", SNAPSHOT)
    assert status_path(Config.load(cfg_file, env={})) == tmp_path / "ckpt" / "status.json"
    assert main(["--config", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "encore status" in out
    assert "snapshots_total" in out
    assert main(["--status-file", str(tmp_path / "ckpt" / "status.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SNAPSHOT


def test_a_status_says_whether_its_worker_runs_has_stopped_or_went_quiet() -> None:
    import os
    import subprocess
    import sys

    from streaming.worker.metrics import process_fields, worker_state

    live = {"now_ms": 10_000, **process_fields(refresh_ms=1_000)}
    assert worker_state(live, now_ms=12_000) == "running"
    assert worker_state(live, now_ms=14_000).startswith("stale (not rewritten for 4 s)")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = {**live, "pid": int(gone.stdout)}
    assert worker_state(dead, now_ms=10_500) == f"stopped (process {dead['pid']} is not running)"
    elsewhere = {**dead, "host": "another-host"}
    assert worker_state(elsewhere, now_ms=10_500) == "running"  # its pid says nothing here
    assert os.getpid() == live["pid"]


def test_encore_status_without_flags_finds_the_running_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streaming.worker.metrics import (
        process_fields,
        register,
        registered_status_files,
        unregister,
        workers_dir,
    )

    monkeypatch.setenv("ENCORE_WORKERS_DIR", str(tmp_path / "workers"))
    monkeypatch.chdir(tmp_path)  # the default config's checkpoint.dir is relative: nothing there
    assert main([]) == 3
    said = capsys.readouterr().out
    assert "no running worker registered" in said and str(workers_dir()) in said
    status = tmp_path / "elsewhere" / "status.json"
    write_status(status, {**SNAPSHOT, **process_fields(refresh_ms=1_000)})
    entry = register(status)
    assert registered_status_files() == [status.resolve()]
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "snapshots_total" in out and "state" in out
    # A pointer left by a worker that died is dropped when read.
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = workers_dir() / "0000000000000000.json"
    write_status(
        stale, {"status_file": str(status), "pid": int(gone.stdout), "host": socket.gethostname()}
    )
    assert registered_status_files() == [status.resolve()] and not stale.exists()
    unregister(entry)
    assert registered_status_files() == []


def test_the_worker_reports_every_limit_it_reached_by_kind() -> None:
    from streaming.worker.stats import LIMITS, Stats, metrics_snapshot

    stats = Stats(counters={"evicted": 2, "model_rows_released_early": 5, "closed": 9})
    snap = metrics_snapshot(stats, {}, "session", now_ms=1, listeners=17)
    assert snap["limits_reached"] == {kind: 0 for kind in LIMITS} | {
        "join_evicted": 2,
        "model_rows_released_early": 5,
    }
    assert snap["history_listeners"] == 17
    Metrics(CollectorRegistry()).update_from(snap)  # every key known, every value a number
