"""Raw kafka-python rates against the local broker: the ceiling every encore daemon runs under.

Rows: produce (acks=all, linger 5 ms), consume counting only, and consume + encore's decode to
columnar batches, all on the same simulated outcome events (about 250 bytes each) in one
4-partition topic. Each consume row is measured on kafka-python's own record path
(``ConsumerRecord``) and on the lean one the daemon uses (``streaming.kafka.records``:
``(offset, key, value)`` parsed in one loop), interleaved. The broker is started for the run unless ``ENCORE_BENCH_BOOTSTRAP`` names one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

from benchmarks._runner import Context, Row, peak_rss_mb, rate


@contextlib.contextmanager
def broker_for_bench() -> Generator[str]:
    external = os.environ.get("ENCORE_BENCH_BOOTSTRAP")
    if external:
        yield external
        return
    from streaming.kafka.broker import TEST_SETTINGS, LocalBroker

    with tempfile.TemporaryDirectory(prefix="encore-bench-") as tmp:
        broker = LocalBroker(state_dir=Path(tmp), settings=TEST_SETTINGS, heap_mb=1024)
        info = broker.start()
        try:
            yield info.bootstrap_servers
        finally:
            broker.stop()


def outcome_messages(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` encoded outcome events from the simulator, keyed by user."""
    from streaming.sim import traffic
    from streaming.sim.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(seed=0, request_gap_ms=1000))
    out: list[tuple[bytes, bytes]] = []
    while len(out) < n:
        req = sim.requests(5000)
        plays = sim.play(req, sim.log_slates(req, 5).shown)
        out.extend((w.key, w.value) for w in traffic.wire([], traffic.outcomes(req, plays)))
    return out[:n]


def consume(servers: str, topic: str, n: int, *, decode: bool, lean: bool) -> tuple[float, int]:
    from kafka import KafkaConsumer

    from streaming.events import decode_outcomes
    from streaming.kafka.clients import use_lean_records

    consumer: Any = KafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    if lean and not use_lean_records(consumer):
        raise RuntimeError("lean records refused (see the warning): the lean rows would be stock")
    rows = 0
    # The clock starts at the first record: connecting and fetching metadata are not throughput.
    while not (first := consumer.poll(timeout_ms=500, max_records=1)):
        pass
    got = sum(len(r) for r in first.values())
    if decode:
        rows += sum(decode_outcomes([r.value for r in recs])[0].n for recs in first.values())
    started = time.perf_counter()
    deadline = started + 300
    while got < n and time.perf_counter() < deadline:
        for recs in consumer.poll(timeout_ms=500, max_records=10_000).values():
            got += len(recs)
            if decode:
                batch, _ = decode_outcomes([r.value for r in recs])
                rows += batch.n
    elapsed = time.perf_counter() - started
    consumer.close(autocommit=False)
    return elapsed, rows if decode else got


def run(ctx: Context) -> list[Row]:
    from kafka import KafkaProducer

    from streaming.config import Config
    from streaming.kafka.clients import ensure_topics

    n = 100_000 if ctx.quick else 1_000_000
    msgs = outcome_messages(n)
    size = sum(len(v) for _, v in msgs) / len(msgs)
    crc = importlib.util.find_spec("crc32c") is not None
    rows: list[Row] = []
    with broker_for_bench() as servers:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        cfg = Config.load(env={}, overrides=[f"kafka.bootstrap_servers={servers}"])
        ensure_topics(cfg, servers, extra={topic: {"num_partitions": 4, "replication_factor": 1}})
        producer: Any = KafkaProducer(
            bootstrap_servers=servers, acks="all", linger_ms=5, batch_size=256 * 1024
        )
        started = time.perf_counter()
        for k, v in msgs:
            producer.send(topic, key=k, value=v)
        producer.flush()
        elapsed = time.perf_counter() - started
        producer.close()
        rows.append(
            {
                "system": "kafka-python producer (acks=all, linger 5 ms)",
                "events": n,
                "event_bytes": round(size),
                "events_per_s": rate(n, elapsed),
                "mb_per_s": rate(n * size / 1e6, elapsed),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
        for decode, lean, label in (
            (False, False, "kafka-python consumer, count only"),
            (False, True, "kafka-python consumer + lean records, count only"),
            (True, False, "kafka-python consumer + encore decode to columns"),
            (True, True, "kafka-python consumer + lean records + encore decode to columns"),
        ):
            elapsed, got = consume(servers, topic, n, decode=decode, lean=lean)
            rows.append(
                {
                    "system": label,
                    "record_path": "lean" if lean else "stock",
                    "events": got,
                    "event_bytes": round(size),
                    "events_per_s": rate(got, elapsed),
                    "mb_per_s": rate(got * size / 1e6, elapsed),
                    "peak_rss_mb": peak_rss_mb(),
                }
            )
    ctx.notes.append(
        f"{n:,} simulated outcome events of ~{size:.0f} bytes, one 4-partition topic, "
        f"local single-node broker; crc32c package installed: {crc}; default fetch settings."
    )
    ctx.notes.append(
        "Reference for this kind of machine: ~240,000/s count only, "
        "~210,000/s decoding into typed records."
    )
    return rows
