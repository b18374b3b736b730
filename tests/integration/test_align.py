"""Event-time alignment against the real broker: a backlog's outcomes do not outrun their
impressions into the join's pending-buffer limit (streaming.worker.alignment).

The daemons read the same backlog, 100 records per poll, with a pending buffer of 300 outcomes
per partition. Kafka's first fetch (1 MiB per partition, set here: the daemon's default of 4 MiB
fetches the whole backlog at once, so even the unaligned control would not overflow) holds every outcome of a partition but
only about half of its impressions, which are ten times larger. Unaligned, the outcomes run ahead
and overflow the buffer; that run is the control that shows the backlog does overflow. Aligned,
nothing overflows, and the join refuses and learns exactly what a buffer with no limit gives.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from streaming.demo import produce_simulated
from streaming.kafka.clients import ensure_topics
from streaming.worker.daemon import Daemon
from tests.integration.test_scale_out import config

pytestmark = pytest.mark.integration


def test_aligned_reading_of_a_backlog_overflows_nothing(kafka_broker: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]

    def daemon(name: str, align_ms: int, max_pending: int) -> Daemon:
        cfg = config(
            kafka_broker,
            run,
            tmp_path,
            name,
            f"kafka.align_ms={align_ms}",
            "kafka.max_poll_records=100",
            "kafka.max_partition_fetch_bytes=1048576",  # kafka-python's default, as said above
            f"join.max_pending={max_pending}",
            share=False,
            group=f"{name}-{run}",
        )
        return Daemon(cfg, servers=kafka_broker)

    unbounded = daemon("unbounded", 0, 1_000_000)
    ensure_topics(unbounded.config, kafka_broker)
    n = produce_simulated(unbounded.config, kafka_broker, n_requests=3000, slate_size=5, seed=11)
    runs = {
        "unbounded": unbounded,
        "unaligned": daemon("unaligned", 0, 300),
        "aligned": daemon("aligned", 1_000, 300),
    }
    # The impressions it waits on always deliver here: on a loaded machine a fetch can take
    # longer than the stall limit, which would release the outcomes (streaming.worker.pausing
    # tests that release); this test is about what alignment holds back.
    runs["aligned"].aligner.stall_ms = 120_000
    for d in runs.values():
        d.run(threading.Event(), exit_when_idle_ms=3000)
        assert d.stats.events == n
        assert d.stats.dead_letters == 0
    assert runs["unaligned"].stats.late_by_kind.get("outcome_overflow", 0) > 500
    assert runs["unaligned"].stats.align_pauses == 0
    aligned = runs["aligned"]
    assert aligned.stats.align_pauses > 0
    assert "outcome_overflow" not in aligned.stats.late_by_kind
    # What it joined, closed and learned is what a buffer with no limit gives.
    assert aligned.stats.late_by_kind == unbounded.stats.late_by_kind
    for key in ("impressions", "outcomes", "closed", "feedback_rows"):
        assert aligned.state.counters[key] == unbounded.state.counters[key], key
    assert int(aligned.state.policy.n) == int(unbounded.state.policy.n)
