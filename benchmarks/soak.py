"""Memory soak: the daemon over a long live stream, its memory sampled against events.

A producer process streams simulated traffic (5-track slates from 20 candidates, continuing
event time) into a local broker while one daemon, with everything on (decode, join, reward
model, composite reward, the default policy, Parquet log, checkpoints, snapshots, metrics),
consumes it live.
Every two seconds (every second with ``--quick``), from a thread of its own, the daemon's memory
is sampled with its event count: the proportional set size (PSS) of its process and of its
decoding process (``streaming.events.process``) together, so the pages the two share count
once. Flat means the memory of the second half of the events grows by no more than a few MiB
per million events (the slope is fitted by least squares, printed, and drawn on the plot).
Full size: 10 million events; ``--quick``: 100,000; the ``ENCORE_SOAK_EVENTS`` environment
variable sets another size.
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

from benchmarks._runner import (
    MIN_FIT_POINTS,
    TOO_SHORT,
    Context,
    Row,
    peak_rss_mb,
    rate,
)
from benchmarks.daemon import (
    MEMORY,
    Sample,
    daemon_pss_mb,
    default_policy,
    draw_memory,
    second_half_fit,
)
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


def run(ctx: Context) -> list[Row]:
    from streaming.config import Config
    from streaming.kafka.clients import ensure_topics
    from streaming.worker.daemon import Daemon

    target_events = int(os.environ.get("ENCORE_SOAK_EVENTS", 100_000 if ctx.quick else 10_000_000))
    sample_s = 1.0 if ctx.quick else 2.0  # a short run samples more often, to fit its slope
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
        samples: list[Sample] = []
        produced: list[float] = []  # events sent, seconds it took
        t0 = time.perf_counter()
        done = threading.Event()

        def sample() -> None:  # on a thread of its own: the loop may be busy for seconds
            while not done.wait(sample_s):
                mib = daemon_pss_mb(daemon)
                if mib is not None:
                    samples.append((time.perf_counter() - t0, daemon.stats.events, mib))

        def tick(d: Daemon) -> None:
            if not produced and producer.poll() is not None:
                out, _ = producer.communicate()
                if producer.returncode != 0:
                    stop.set()
                    raise RuntimeError(f"the soak producer failed (exit {producer.returncode})")
                sent, seconds = out.strip().splitlines()[-1].split()
                produced.extend((int(sent), float(seconds)))
            if produced and d.stats.events >= produced[0]:
                stop.set()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stats = daemon.run(stop, on_tick=tick, tick_ms=2000)
        finally:
            done.set()
            sampler.join()
            if producer.poll() is None:
                producer.kill()
        elapsed = time.perf_counter() - t0
        files = list(Path(tmp, "log").rglob("*.parquet"))
    fit = second_half_fit(samples)
    first = next((m for _, e, m in samples if e >= target_events * 0.1), TOO_SHORT)
    rows: list[Row] = [
        {
            "system": f"encore daemon, live stream (decode, join, reward model, {default_policy()}, "
            "log, checkpoints)",
            "events": stats.events,
            "produced": int(produced[0]) if produced else -1,
            "events_per_s": rate(stats.events, elapsed),
            "producer_events_per_s": rate(produced[0], produced[1]) if produced else TOO_SHORT,
            "memory": MEMORY,
            "pss_at_10pct_mb": first,
            "pss_end_mb": samples[-1][2] if samples else TOO_SHORT,
            "pss_peak_mb": max(m for _, _, m in samples) if samples else TOO_SHORT,
            "pss_growth_mb_per_million_events_2nd_half": fit.slope if fit else TOO_SHORT,
            "samples_2nd_half": fit.n if fit else 0,
            "peak_rss_mb": peak_rss_mb(),
            "closed": stats.counters.get("closed", 0),
            "parquet_files": len(files),
        }
    ]

    def draw(ax: Any) -> None:
        draw_memory(
            ax,
            {"encore daemon": samples},
            f"encore daemon memory over a {stats.events:,}-event live stream",
        )

    if samples:
        ctx.save_plot("soak_pss", draw)
    ctx.notes.append(
        f"{target_events:,} events streamed by a separate producer process (one simulated block "
        "of 20,000 requests, replayed with event time shifted past the previous block and new "
        "request ids) while the daemon consumed them live; the rate is the slower of the two, "
        "which share the machine's cores. "
        "The Parquet log keeps candidates without their features, to bound the disk the run "
        "needs; everything else is on."
    )
    ctx.notes.append(
        f"Memory is the {MEMORY} (proportional set size from /proc/PID/smaps_rollup: pages the "
        "two processes share count once; peak_rss_mb is this process's peak resident size). "
        "Flat memory: the least-squares growth over the second half of the events, in MiB per "
        "million events, should be near 0 (a leak of even 100 bytes per event would show as "
        f"~95 MiB per million); '{TOO_SHORT}' where that half holds fewer than "
        f"{MIN_FIT_POINTS} samples at distinct event counts (one every {sample_s:g} s)."
    )
    return rows
