"""Memory soak: the daemon over a long live stream, resident memory sampled against events.

A producer process streams simulated traffic (5-track slates from 20 candidates, continuing
event time) into a local broker while one daemon, with everything on (decode, join, reward
model, composite reward, LinUCB, Parquet log, checkpoints, snapshots, metrics), consumes it live.
Every two seconds the daemon's resident memory (its process and its decoding process,
``streaming.events.process``) is sampled with its event count. Flat means the
resident memory of the second half of the run grows by no more than a few MiB per million
events (the slope is fitted by least squares and printed, with the plot). Full size: 10 million
events; ``--quick``: 150,000; the ``ENCORE_SOAK_EVENTS`` environment variable sets
another size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._runner import Context, Row, peak_rss_mb
from benchmarks.daemon import _daemon_rss_mb  # pyright: ignore[reportPrivateUsage]
from benchmarks.kafka_raw import broker_for_bench


def _types() -> dict[str, Any]:
    from streaming.events import Impression, Outcome

    return {"impressions": Impression, "outcomes": Outcome}


def produce_looped(
    servers: str, overrides: list[str], n_events: int, block: int = 20_000
) -> tuple[int, float]:
    """Stream ``n_events`` events: one simulated block of ``block`` requests, replayed.

    Each replay shifts event time past the previous block's last event and renames the request
    ids, so the daemon sees a fresh, event-time-ordered stream (the same listeners and tracks
    recur: this measures memory over volume, not learning). Returns how many were sent, and the
    seconds sending took.
    """
    import msgspec

    from streaming.config import Config
    from streaming.demo import LOGGING
    from streaming.events import encode
    from streaming.kafka.clients import make_producer
    from streaming.sim import traffic
    from streaming.sim.simulator import SimConfig, Simulator

    cfg = Config.load(env={}, overrides=overrides)
    sim = Simulator(SimConfig(seed=3, request_gap_ms=1000))
    req = sim.requests(block)
    sl = sim.log_slates(req, 5)
    plays = sim.play(req, sl.shown)
    release = traffic.EventTimeRelease()
    imps = traffic.impressions(req, sl.shown, sl.propensity, policy=LOGGING, run_id="r")
    release.hold(traffic.wire(imps, traffic.outcomes(req, plays, run_id="r")))
    messages = release.release()
    span = messages[-1].ts_ms - messages[0].ts_ms + 60_000
    topics = {"impressions": cfg.topics.impressions, "outcomes": cfg.topics.outcomes}
    decoded = [
        (topics[w.role], w.key, msgspec.json.decode(w.value, type=_types()[w.role]))
        for w in messages
    ]
    producer = make_producer(cfg.kafka, servers)
    t0 = time.perf_counter()
    sent, k = 0, 0
    try:
        while sent < n_events:
            shift = k * span
            for topic, key, event in decoded:
                moved = msgspec.structs.replace(
                    event, ts=event.ts + shift, request_id=f"{event.request_id}-{k}"
                )
                producer.send(topic, key=key, value=encode(moved))
                sent += 1
                if sent >= n_events:
                    break
            k += 1
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    return sent, time.perf_counter() - t0


def _slope_mb_per_million(samples: list[tuple[int, float]]) -> float:
    """Least-squares growth of resident MiB per million events over the run's second half."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return float("nan")
    x = np.array([e for e, _ in half], np.float64) / 1e6
    y = np.array([m for _, m in half], np.float64)
    if np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def run(ctx: Context) -> list[Row]:
    from streaming.config import Config
    from streaming.kafka.clients import ensure_topics
    from streaming.worker.daemon import Daemon

    target_events = int(os.environ.get("ENCORE_SOAK_EVENTS", 150_000 if ctx.quick else 10_000_000))
    with broker_for_bench() as servers, tempfile.TemporaryDirectory(prefix="encore-soak-") as tmp:
        run_id = uuid.uuid4().hex[:8]
        overrides = [
            f"kafka.bootstrap_servers={servers}",
            f"kafka.group_id=soak-{run_id}",
            f"checkpoint.dir={tmp}/ckpt",
            "checkpoint.every_events=200000",
            "checkpoint.every_ms=30000",
            f"log.dir={tmp}/log",
            "log.candidate_features=false",
            "join.window_ms=1200000",
            "join.allowed_lateness_ms=60000",
            "join.slate_size=5",
            "metrics.port=0",
            f"topics.impressions=soak-i-{run_id}",
            f"topics.outcomes=soak-o-{run_id}",
            f"topics.dlq=soak-d-{run_id}",
            f"topics.late=soak-l-{run_id}",
            f"topics.snapshots=soak-s-{run_id}",
            f"topics.deltas=soak-x-{run_id}",
            f"topics.joined=soak-j-{run_id}",
            f"topics.handoff=soak-h-{run_id}",
        ]
        cfg = Config.load(env={}, overrides=overrides)
        ensure_topics(cfg, servers)
        script = (
            "import sys; from benchmarks.soak import produce_looped; "
            "print(*produce_looped(sys.argv[1], sys.argv[3:], int(sys.argv[2])), flush=True)"
        )
        producer = subprocess.Popen(
            [sys.executable, "-c", script, servers, str(target_events), *overrides],
            stdout=subprocess.PIPE,
            text=True,
        )
        daemon = Daemon(cfg, servers=servers)
        stop = threading.Event()
        samples: list[tuple[int, float]] = []
        produced: list[float] = []  # events sent, seconds it took

        def tick(d: Daemon) -> None:
            samples.append((d.stats.events, _daemon_rss_mb(d)))
            if not produced and producer.poll() is not None:
                out, _ = producer.communicate()
                if producer.returncode != 0:
                    stop.set()
                    raise RuntimeError(f"the soak producer failed (exit {producer.returncode})")
                sent, seconds = out.strip().splitlines()[-1].split()
                produced.extend((int(sent), float(seconds)))
            if produced and d.stats.events >= produced[0]:
                stop.set()

        t0 = time.perf_counter()
        try:
            stats = daemon.run(stop, on_tick=tick, tick_ms=2000)
        finally:
            if producer.poll() is None:
                producer.kill()
        elapsed = time.perf_counter() - t0
        files = list(Path(tmp, "log").rglob("*.parquet"))
    slope = _slope_mb_per_million(samples)
    first = next((m for e, m in samples if e >= target_events * 0.1), float("nan"))
    rows: list[Row] = [
        {
            "system": "encore daemon, live stream (decode, join, reward model, LinUCB, log, "
            "checkpoints)",
            "events": stats.events,
            "produced": int(produced[0]) if produced else -1,
            "events_per_s": stats.events / max(elapsed, 1e-9),
            "producer_events_per_s": produced[0] / produced[1] if produced else float("nan"),
            "rss_at_10pct_mb": first,
            "rss_end_mb": samples[-1][1] if samples else float("nan"),
            "rss_growth_mb_per_million_events_2nd_half": slope,
            "peak_rss_mb": peak_rss_mb(),
            "closed": stats.counters.get("closed", 0),
            "parquet_files": len(files),
        }
    ]

    def draw(ax: Any) -> None:
        ax.plot([e / 1e6 for e, _ in samples], [m for _, m in samples])
        ax.set_xlabel("million events consumed")
        ax.set_ylabel("resident MiB")
        ax.set_title(f"encore daemon memory over a {stats.events:,}-event live stream")

    if samples:
        ctx.save_plot("soak_rss", draw)
    ctx.notes.append(
        f"{target_events:,} events streamed by a separate producer process (one simulated block "
        "of 20,000 requests, replayed with event time shifted past the previous block and new "
        "request ids) while the daemon consumed them live; the rate is the slower of the two, "
        "which share the machine's cores. "
        "The Parquet log keeps candidates without their features, to bound the disk the run "
        "needs; everything else is on."
    )
    ctx.notes.append(
        "Resident memory is the daemon's process and its decoding process together. "
        "Flat memory: the fitted growth over the second half of the run, in resident MiB per "
        "million events, should be near 0 (a leak of even 100 bytes per event would show as "
        "~95 MiB per million)."
    )
    return rows
