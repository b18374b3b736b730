"""Observability: a Prometheus endpoint, a status file and the ``encore status`` table.

Why one long module: the Prometheus names, the status file and the ``encore status`` table are
three views of the same numbers (``KNOWN_KEYS``), kept together so none of them drifts.

The daemon keeps cumulative counts; every tick it maps them to one plain *snapshot* dict and
hands it to ``Metrics.update_from``. The endpoint then exposes exactly that snapshot (a custom
collector on its own ``CollectorRegistry``, so totals are reported as the daemon counted them,
never re-accumulated), ``write_status`` saves the same dict as JSON (atomically) for
``encore status`` in another process, and ``status_table`` renders it.

The snapshot's keys (all optional; an unknown key is an error, so a typo cannot hide a metric):

=============================  ==========================  =============================================
key                            type                        exposed as
=============================  ==========================  =============================================
``now_ms``                     int, wall time of the       (used for ``events_per_s`` and
                               snapshot                    ``checkpoint_age_seconds``)
``started_ms``                 int                         ``encore_uptime_seconds``
``events_total``               {topic: int}                ``encore_events_total{topic}`` counter
``events_per_s``               float                       ``encore_events_per_s``; when absent, from the
                                                           change of the summed ``events_total`` between
                                                           two updates over the change of ``now_ms``
``consumer_lag``               {"topic/partition": int}    ``encore_consumer_lag{topic,partition}``
``outcomes_total``             int                         ``encore_outcomes_total``
``joined_total``               int                         ``encore_joined_total``
``join_rate``                  float                       ``encore_join_rate``: outcomes joined to an
                                                           impression / outcomes; when absent,
                                                           ``joined_total / outcomes_total``
``closed_total``               int                         ``encore_closed_total`` (impressions closed)
``late_total``                 {kind: int}                 ``encore_late_total{kind}``
``dead_letters_total``         {code: int}                 ``encore_dead_letters_total{code}``
``reward_mean``                {policy: float}             ``encore_reward_mean{policy}``
``model_log_loss``             {model: float}              ``encore_model_log_loss{model}``
``learning_queued``            {learner: int}              ``encore_learning_queued{learner}``: closed
                                                           rows waiting for the event-time frontier
``limits_reached``             {kind: int}                 ``encore_limits_reached{kind}``: times a
                                                           capacity limit acted, in the state of the
                                                           partitions held (a gauge: it moves with
                                                           them); docs/reliability.md
``history_listeners``          int                         ``encore_history_listeners``: listeners
                                                           whose recent plays the worker holds
``tracks_seen``                int                         ``encore_tracks_seen``: distinct track ids
                                                           the policy learned of
``track_slots_shared``         float                       ``encore_track_slots_shared``: the fraction
                                                           of them sharing a per-track slot
``policy_switches``            int                         ``encore_policy_switches``: times the
                                                           policy's challenger took over (adaptation)
``last_checkpoint_ms``         int                         (``checkpoint_age_seconds`` when absent)
``checkpoint_age_seconds``     float                       ``encore_checkpoint_age_seconds``
``checkpoints_total``          int                         ``encore_checkpoints_total``
``snapshots_total``            int                         ``encore_snapshots_total``
``handoffs_total``             {kind: int}                 ``encore_handoffs_total{kind}``: partitions
                                                           ``published``, ``installed``,
                                                           ``started_fresh`` on rebalances
``rejoins_total``              int                         ``encore_rejoins_total``: group rejoins the
                                                           watchdog made (``streaming.worker.liveness``)
``consumer_restarts_total``    int                         ``encore_consumer_restarts_total``: stalled
                                                           consumers replaced
``gc_collections_total``       int                         ``encore_gc_collections_total``: the poll
                                                           loop's timed full collections
``gc_seconds_total``           float                       ``encore_gc_seconds_total``: seconds they took
``align_pauses_total``         int                         ``encore_align_pauses_total``: partitions
                                                           paused for reading ahead in event time
``side_pending``               int                         ``encore_side_pending``: output records sent
                                                           and not yet acknowledged
``side_resent_total``          int                         ``encore_side_resent_total``: output records
                                                           sent again after a timeout or lost connection
``side_truncated_total``       {topic: int}                ``encore_side_truncated_total{topic}``:
                                                           records cut to fit their topic
``side_refused_total``         {topic: int}                ``encore_side_refused_total{topic}``: records
                                                           the broker refused for good (dropped)
``broker_away_seconds``        float                       ``encore_broker_away_seconds``: how long
                                                           the broker has not answered (0: it does)
=============================  ==========================  =============================================

Example:
    >>> m = Metrics()
    >>> m.update_from({"events_total": {"encore.outcomes": 7}, "joined_total": 5})
    >>> server, port = m.serve("127.0.0.1", 0)
    >>> import urllib.request
    >>> with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
    ...     'encore_events_total{topic="encore.outcomes"} 7.0' in r.read().decode()
    True
    >>> server.close()
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rich.table import Table

from streaming.config import Config

__all__ = [
    "KNOWN_KEYS",
    "Metrics",
    "MetricsServer",
    "main",
    "read_status",
    "status_path",
    "status_table",
    "write_status",
]

_LABELLED = {
    "events_total": "topic",
    "late_total": "kind",
    "dead_letters_total": "code",
    "reward_mean": "policy",
    "model_log_loss": "model",
    "learning_queued": "learner",
    "limits_reached": "kind",
    "handoffs_total": "kind",
    "side_truncated_total": "topic",
    "side_refused_total": "topic",
}
_SCALARS = (
    "now_ms",
    "started_ms",
    "events_per_s",
    "outcomes_total",
    "joined_total",
    "join_rate",
    "closed_total",
    "history_listeners",
    "tracks_seen",
    "track_slots_shared",
    "policy_switches",
    "last_checkpoint_ms",
    "checkpoint_age_seconds",
    "checkpoints_total",
    "snapshots_total",
    "rejoins_total",
    "consumer_restarts_total",
    "gc_collections_total",
    "gc_seconds_total",
    "align_pauses_total",
    "side_pending",
    "side_resent_total",
    "broker_away_seconds",
)
KNOWN_KEYS: frozenset[str] = frozenset({*_LABELLED, *_SCALARS, "consumer_lag"})
"""The keys a snapshot may hold (see the module docstring)."""

_HELP = {
    "events_total": "Events consumed, by source topic.",
    "events_per_s": "Events consumed per second, over the last update interval.",
    "consumer_lag": "Messages between the consumer's position and the end of the partition.",
    "outcomes_total": "Outcomes decoded.",
    "joined_total": "Outcomes joined to their impression within the reward window.",
    "join_rate": "Joined outcomes / decoded outcomes.",
    "closed_total": "Impressions whose reward window closed (learned from and logged).",
    "late_total": "Late, orphan or duplicate events sent to the late topic, by kind.",
    "dead_letters_total": "Malformed events sent to the dead-letter topic, by error code.",
    "reward_mean": "Mean top-position reward of closed impressions, by logging policy.",
    "model_log_loss": "Prequential log loss of each reward model.",
    "learning_queued": "Closed rows waiting for every partition's watermark before a learner "
    "takes them, by learner (policy, reward_model).",
    "limits_reached": "Times a capacity limit acted in the worker's state (a gauge: the join's "
    "counts move with their partitions), by kind: impressions evicted from a "
    "full join buffer (join_evicted), outcomes from a full pending buffer (join_evicted_outcomes), "
    "rows a full learning queue released early (model_rows_released_early, "
    "policy_rows_released_early), listeners dropped from a full history table "
    "(history_listeners_evicted).",
    "history_listeners": "Listeners whose recent plays the worker holds for the session reward "
    "model (reward.history_listeners per partition at most).",
    "tracks_seen": "Distinct track ids this worker's policy has learned of from the rows it "
    "closed (at most 4,194,304 counted; kept in its checkpoint, not moved with partitions).",
    "track_slots_shared": "Fraction of the tracks seen whose per-track bias slot (policy "
    "n_ids, ids hashed into it) holds another track too; past policy.warn_id_collisions the "
    "daemon warns.",
    "policy_switches": "Times the linear policy's challenger (fitted with forgetting) predicted "
    "clearly better and its statistics replaced the policy's: changes of taste it followed "
    "(policy params.adapt_window; kept in the policy state).",
    "checkpoint_age_seconds": "Seconds since the last checkpoint was written.",
    "checkpoints_total": "Checkpoints written.",
    "snapshots_total": "Policy snapshots published.",
    "handoffs_total": "Partitions handed between workers on a rebalance: published, installed "
    "(taken over with their open windows), started_fresh (behind the commit; windows lost).",
    "rejoins_total": "Times the daemon rejoined its group after holding no partition while "
    "the stable group left some unowned.",
    "consumer_restarts_total": "Times the daemon replaced a group consumer that returned no "
    "records for kafka.stall_restart_ms while its partitions had lag.",
    "gc_collections_total": "Timed full garbage collections of the poll loop "
    "(streaming.worker.gc_tuning).",
    "gc_seconds_total": "Seconds the poll loop spent in its timed full garbage collections.",
    "align_pauses_total": "Times a partition was paused for being read more than kafka.align_ms "
    "of event time ahead of the other stream's same partition (streaming.worker.alignment).",
    "side_pending": "Output records (dead letters, late rows, joined records, snapshots, "
    "deltas, handoffs) sent and not yet acknowledged by the broker.",
    "side_resent_total": "Output records sent again after a timeout or a lost connection.",
    "side_truncated_total": "Output records cut to fit their topic (a dead letter keeps a "
    "prefix of the original with its size and SHA-256), by topic.",
    "side_refused_total": "Output records the broker refused for good and that were dropped, by "
    "topic; past kafka.side_max_refused the daemon stops.",
    "broker_away_seconds": "Seconds the broker has not answered the daemon (0 while it "
    "does); the daemon waits for it.",
    "uptime_seconds": "Seconds since the daemon started.",
}


def _normalise(stats: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """Check the keys and types of a snapshot and fill the derived values."""
    unknown = sorted(set(stats) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown metrics key(s) {unknown}; known: {sorted(KNOWN_KEYS)}")
    snap: dict[str, Any] = {}
    for key in _SCALARS:
        if key in stats:
            value = stats[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"metrics key {key!r} must be a number, got {value!r}")
            snap[key] = value
    for key in (*_LABELLED, "consumer_lag"):
        if key in stats:
            value = stats[key]
            if not isinstance(value, Mapping):
                raise ValueError(f"metrics key {key!r} must be a mapping, got {value!r}")
            table: dict[str, float] = {}
            for label, v in value.items():  # pyright: ignore[reportUnknownVariableType]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ValueError(f"metrics key {key!r}[{label!r}] must be a number, got {v!r}")
                table[str(label)] = v  # pyright: ignore[reportUnknownArgumentType]
            snap[key] = table
    for label in snap.get("consumer_lag", {}):
        topic, sep, part = label.rpartition("/")
        if not sep or not topic or not part.isdigit():
            raise ValueError(f"consumer_lag key {label!r} must be 'topic/partition'")
    if "join_rate" not in snap and snap.get("outcomes_total"):
        snap["join_rate"] = snap.get("joined_total", 0) / snap["outcomes_total"]
    if "checkpoint_age_seconds" not in snap and "now_ms" in snap and "last_checkpoint_ms" in snap:
        snap["checkpoint_age_seconds"] = max(
            0.0, (snap["now_ms"] - snap["last_checkpoint_ms"]) / 1e3
        )
    if "events_per_s" not in snap and "events_total" in snap and "now_ms" in snap:
        if "events_total" in previous and "now_ms" in previous:
            dt = (snap["now_ms"] - previous["now_ms"]) / 1e3
            if dt > 0:
                de = sum(snap["events_total"].values()) - sum(previous["events_total"].values())
                snap["events_per_s"] = max(0.0, de / dt)
        elif "started_ms" in snap and snap["now_ms"] > snap["started_ms"]:
            dt = (snap["now_ms"] - snap["started_ms"]) / 1e3
            snap["events_per_s"] = sum(snap["events_total"].values()) / dt
    return snap


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot()
        for key, label in _LABELLED.items():
            if key not in snap:
                continue
            kind = CounterMetricFamily if key.endswith("_total") else GaugeMetricFamily
            fam = kind(f"encore_{key}", _HELP[key], labels=[label])
            for value_label, value in sorted(snap[key].items()):
                fam.add_metric([value_label], float(value))
            yield fam
        if "consumer_lag" in snap:
            fam = GaugeMetricFamily(
                "encore_consumer_lag", _HELP["consumer_lag"], labels=["topic", "partition"]
            )
            for tp, lag in sorted(snap["consumer_lag"].items()):
                topic, _, part = tp.rpartition("/")
                fam.add_metric([topic, part], float(lag))
            yield fam
        for key in (
            "events_per_s",
            "outcomes_total",
            "joined_total",
            "join_rate",
            "closed_total",
            "history_listeners",
            "tracks_seen",
            "track_slots_shared",
            "policy_switches",
            "checkpoint_age_seconds",
            "checkpoints_total",
            "snapshots_total",
            "rejoins_total",
            "consumer_restarts_total",
            "gc_collections_total",
            "gc_seconds_total",
            "align_pauses_total",
            "side_pending",
            "side_resent_total",
            "broker_away_seconds",
        ):
            if key in snap:
                kind = CounterMetricFamily if key.endswith("_total") else GaugeMetricFamily
                yield kind(f"encore_{key}", _HELP[key], value=float(snap[key]))
        if "started_ms" in snap and "now_ms" in snap:
            yield GaugeMetricFamily(
                "encore_uptime_seconds",
                _HELP["uptime_seconds"],
                value=max(0.0, (snap["now_ms"] - snap["started_ms"]) / 1e3),
            )


class MetricsServer:
    """A running metrics endpoint; ``close()`` stops it and frees the port (idempotent)."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = int(httpd.server_port)

    def close(self, timeout_s: float = 5.0) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout_s)
        self._httpd = None


class Metrics:
    """The daemon's metrics, on their own registry (never the process-global one).

    Args:
        registry: where the collector is registered; a fresh ``CollectorRegistry`` when None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._snap: dict[str, Any] = {}
        self.registry.register(_Collector(self))

    def update_from(self, stats: Mapping[str, Any]) -> None:
        """Replace the exposed values with ``stats`` (a snapshot dict; keys in ``KNOWN_KEYS``).

        Raises:
            ValueError: an unknown key, a value that is not a number (or a mapping of numbers
                for the labelled metrics), or a ``consumer_lag`` key not of the form
                ``topic/partition``.
        """
        with self._lock:
            self._snap = _normalise(stats, self._snap)

    def snapshot(self) -> dict[str, Any]:
        """The latest snapshot, with derived values filled in (what ``write_status`` saves)."""
        with self._lock:
            return {k: dict(v) if isinstance(v, dict) else v for k, v in self._snap.items()}

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> tuple[MetricsServer, int]:
        """Expose ``/metrics`` over HTTP on ``host:port`` (0: any free port) in a thread.

        Returns:
            The server (call ``close()`` to stop it) and the port it listens on.
        """
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        server = MetricsServer(httpd, thread)
        return server, server.port


def write_status(path: str | Path, snapshot: Mapping[str, Any]) -> None:
    """Save a snapshot as JSON, atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(dict(snapshot), sort_keys=True, indent=1, allow_nan=False).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_status(path: str | Path) -> dict[str, Any]:
    """The snapshot saved by ``write_status``.

    Raises:
        FileNotFoundError: no status file (the daemon has not run here yet).
        ValueError: the file is not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no status file at {path}: is `encore run` running with this config?"
        ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"status file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"status file {path} does not hold a JSON object")
    return data  # pyright: ignore[reportUnknownVariableType]


def _fmt(value: int | float) -> str:
    if type(value) is int or (math.isfinite(value) and value == int(value) and abs(value) > 99):
        return f"{int(value):,}"
    return f"{value:,.3f}"


def status_table(snapshot: Mapping[str, Any], *, now_ms: int | None = None) -> Table:
    """The snapshot as a two-column table (what ``encore status`` prints).

    Args:
        snapshot: a snapshot dict (``read_status`` or ``Metrics.snapshot``).
        now_ms: the reader's wall time; when given with the snapshot's ``now_ms``, the table
            says how old the status is.
    """
    table = Table(title="encore status")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if "pid" in snapshot:
        table.add_row("state", worker_state(snapshot, now_ms=now_ms))
    if now_ms is not None and "now_ms" in snapshot:
        table.add_row("status age (s)", f"{max(0, now_ms - snapshot['now_ms']) / 1e3:.1f}")
    if "started_ms" in snapshot and "now_ms" in snapshot:
        table.add_row("uptime (s)", f"{(snapshot['now_ms'] - snapshot['started_ms']) / 1e3:,.0f}")
    for key in (
        "events_per_s",
        "events_total",
        "consumer_lag",
        "outcomes_total",
        "joined_total",
        "join_rate",
        "closed_total",
        "late_total",
        "dead_letters_total",
        "reward_mean",
        "model_log_loss",
        "learning_queued",
        "limits_reached",
        "history_listeners",
        "tracks_seen",
        "track_slots_shared",
        "policy_switches",
        "checkpoint_age_seconds",
        "checkpoints_total",
        "snapshots_total",
        "handoffs_total",
        "rejoins_total",
        "consumer_restarts_total",
        "gc_collections_total",
        "gc_seconds_total",
        "align_pauses_total",
        "side_pending",
        "side_resent_total",
        "side_truncated_total",
        "side_refused_total",
        "broker_away_seconds",
    ):
        if key not in snapshot:
            continue
        value = snapshot[key]
        if isinstance(value, Mapping):
            items = sorted(value.items())  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType, reportUnknownMemberType]
            if not items:
                table.add_row(key, "-")
            for label, v in items:  # pyright: ignore[reportUnknownVariableType]
                table.add_row(f"{key}{{{label}}}", _fmt(v))  # pyright: ignore[reportUnknownArgumentType]
            if key in ("events_total", "consumer_lag") and len(items) > 1:
                table.add_row(f"{key} (sum)", _fmt(sum(v for _, v in items)))  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
        else:
            table.add_row(key, _fmt(value))
    return table


def status_path(config: Config) -> Path:
    """Where a daemon with this config writes its status file: ``<checkpoint.dir>/status.json``."""
    return Path(config.checkpoint.dir) / "status.json"


STALE_REFRESHES = 3  # a status not rewritten for this many refresh intervals is stale


def process_fields(refresh_ms: int) -> dict[str, Any]:
    """What the status file says of the process writing it, so a reader can tell it stopped."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "refresh_ms": int(refresh_ms)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def worker_state(snapshot: Mapping[str, Any], *, now_ms: int | None = None) -> str:
    """``running``, ``stopped (...)`` or ``stale (...)`` for a status written with
    ``process_fields``: stopped when its process is gone (same host), stale when it has not been
    rewritten for ``STALE_REFRESHES`` refresh intervals."""
    pid, host = snapshot.get("pid"), snapshot.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
        return f"stopped (process {pid} is not running)"
    refresh = snapshot.get("refresh_ms")
    written = snapshot.get("now_ms")
    if now_ms is not None and isinstance(refresh, int) and isinstance(written, int):
        age = now_ms - written
        if age > STALE_REFRESHES * refresh:
            return f"stale (not rewritten for {age / 1e3:.0f} s)"
    return "running"


def workers_dir() -> Path:
    """Where running workers leave a pointer to their status file, so ``encore status`` finds
    them without their flags: ``$ENCORE_WORKERS_DIR``, else ``~/.local/state/encore/workers``."""
    found = os.environ.get("ENCORE_WORKERS_DIR")
    return Path(found) if found else Path.home() / ".local" / "state" / "encore" / "workers"


def register(status_file: str | Path) -> Path | None:
    """Leave a pointer to ``status_file`` in ``workers_dir()``; returns it (None if it cannot be
    written: finding workers is a convenience, never a reason to stop one)."""
    target = Path(status_file).resolve()
    entry = workers_dir() / f"{hashlib.sha256(str(target).encode()).hexdigest()[:16]}.json"
    try:
        write_status(entry, {"status_file": str(target), **process_fields(0)})
    except OSError:
        return None
    return entry


def unregister(entry: Path | None) -> None:
    if entry is not None:
        with contextlib.suppress(OSError):
            entry.unlink()


def registered_status_files() -> list[Path]:
    """The status files of the workers registered on this host whose process still runs; the
    pointers of those that stopped without removing theirs are removed."""
    found: list[Path] = []
    here = socket.gethostname()
    for entry in sorted(workers_dir().glob("*.json")):
        try:
            data = read_status(entry)
        except (OSError, ValueError):
            continue
        pid = data.get("pid")
        if data.get("host") == here and isinstance(pid, int) and not _alive(pid):
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        if isinstance(data.get("status_file"), str):
            found.append(Path(data["status_file"]))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``encore status``: print the status a running daemon last wrote, as a table (or JSON).

    Returns:
        0, or 3 when there is no status file yet.
    """
    parser = argparse.ArgumentParser(
        prog="encore status",
        description="What the daemon last reported (no Kafka needed).",
        allow_abbrev=False,
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[])
    parser.add_argument(
        "--status-file", type=Path, help="default: <checkpoint.dir>/status.json of the config"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    args = parser.parse_args(argv)
    paths: list[Path]
    if args.status_file is not None:
        paths = [Path(args.status_file)]
    elif args.config is not None or args.set:
        paths = [status_path(Config.load(args.config, overrides=args.set))]
    else:  # no flags: the default config's status file, and every running worker's
        default = status_path(Config.load())
        found = [default] if default.exists() else []
        paths = [p for p in dict.fromkeys([*found, *registered_status_files()])]
        if not paths:
            print(
                f"encore status: no status file at {default} and no running worker registered "
                f"in {workers_dir()}; pass --config (the run's) or --status-file"
            )
            return 3
    now_ms = time.time_ns() // 1_000_000
    snapshots: list[tuple[Path, dict[str, Any]]] = []
    for path in paths:
        try:
            snapshots.append((path, read_status(path)))
        except FileNotFoundError as exc:
            print(f"encore status: {exc}")
            return 3
    if args.json:
        for _, snapshot in snapshots:
            print(json.dumps(snapshot, indent=1, sort_keys=True))
        return 0
    from rich.console import Console

    console = Console()
    for path, snapshot in snapshots:
        if len(snapshots) > 1:
            console.print(f"{path}:")
        console.print(status_table(snapshot, now_ms=now_ms))
    return 0
