"""A rebalance mid-stream against the real broker: a second worker joins, then leaves.

The moved partitions carry open join windows both ways (the stream pauses with plays still held
back), and the group ends with exactly the counts and statistics of one uninterrupted worker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from streaming.core import join_counters
from streaming.demo import SimulatedStream
from streaming.kafka.clients import ensure_topics
from streaming.worker.daemon import Daemon
from tests.integration.test_scale_out import all_deltas, assert_same_statistics, config

pytestmark = pytest.mark.integration


def wait(
    what: str,
    ok: Callable[[], bool],
    timeout_s: float = 240,
    state: Callable[[], str] = lambda: "",
) -> None:
    """Wait until ``ok()``; fail with ``what`` and ``state()`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} in {timeout_s:.0f} s {state()}".rstrip())
        time.sleep(0.2)


def test_join_then_leave_loses_and_double_counts_nothing(kafka_broker: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    group = f"rb-{run}"
    solo_cfg = config(kafka_broker, run, tmp_path, "solo", share=False, group=f"solo-{run}")
    ensure_topics(solo_cfg, kafka_broker)
    a = Daemon(
        config(kafka_broker, run, tmp_path, "a", share=True, group=group), servers=kafka_broker
    )
    b = Daemon(
        config(kafka_broker, run, tmp_path, "b", share=True, group=group), servers=kafka_broker
    )
    stops = {w.worker_id: threading.Event() for w in (a, b)}
    threads = {
        w.worker_id: threading.Thread(target=w.run, args=(stops[w.worker_id],)) for w in (a, b)
    }
    stream = SimulatedStream(solo_cfg, kafka_broker, slate_size=5, seed=11)
    sent = 0
    try:
        threads["a"].start()
        wait(
            "a never owned partitions",
            lambda: a.consumer is not None and bool(a.consumer.assignment()),
        )
        sent += stream.produce(1500, last=False)
        wait("a did not read the first part", lambda: a.stats.events >= sent)
        open_before = sum(js.open_key.size for js in a.state.join.values())
        assert open_before > 0  # windows are open when the partitions move

        threads["b"].start()  # joins: a hands half its partitions, windows and all, to b
        wait(
            "b never took over partitions",
            lambda: (
                b.consumer is not None
                and bool(b.consumer.assignment())
                and bool(a.consumer.assignment())
            ),
        )
        wait("b installed nothing", lambda: b.stats.handoffs_installed > 0)
        sent += stream.produce(1500, last=False)
        wait(
            "the pair did not read the second part", lambda: a.stats.events + b.stats.events >= sent
        )
        assert b.stats.events > 0

        stops["b"].set()  # leaves: its partitions go back to a with their open windows
        threads["b"].join(timeout=120)
        assert not threads["b"].is_alive()
        wait("a took nothing back from b", lambda: a.stats.handoffs_installed > 0)
        sent += stream.produce(1000, last=True)
        wait("a did not read the last part", lambda: a.stats.events + b.stats.events >= sent)
    finally:
        stream.close()
        for s in stops.values():
            s.set()
        for t in threads.values():
            if t.is_alive() or t.ident is not None:
                t.join(timeout=120)

    solo = Daemon(solo_cfg, servers=kafka_broker)
    solo.run(threading.Event(), exit_when_idle_ms=3000)
    assert solo.stats.events == sent
    assert a.stats.events + b.stats.events == sent  # nothing read twice, nothing skipped
    assert a.stats.partitions_started_fresh == b.stats.partitions_started_fresh == 0
    # a ends holding every partition's join, which went a -> b -> a for half of them.
    assert join_counters(a.state, cut_dependent=False) == join_counters(
        solo.state, cut_dependent=False
    )
    for key in ("impressions", "outcomes", "closed", "feedback_rows"):
        both = a.state.counters.get(key, 0) + b.state.counters.get(key, 0)
        assert both == solo.state.counters[key], key
    published = all_deltas(a.config, kafka_broker)
    a.absorb_deltas(published)
    assert_same_statistics(a, solo, [a, b])
