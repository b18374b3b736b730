"""Scale-out against the real broker: two workers of one group learn one global policy."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from streaming.config import Config
from streaming.core import settle
from streaming.demo import produce_simulated
from streaming.kafka.clients import TopicPartition, ensure_topics, make_consumer
from streaming.worker.daemon import Daemon
from streaming.worker.deltas import WorkerIdConflictError

pytestmark = pytest.mark.integration


def config(
    servers: str, run: str, tmp: Path, name: str, *extra: str, share: bool, group: str
) -> Config:
    """A worker's config on the run's topics; ``extra`` overrides come last."""
    cfg = Config.load(
        env={},
        overrides=[
            f"kafka.bootstrap_servers={servers}",
            f"kafka.group_id={group}",
            f"kafka.client_id={name}",
            f"checkpoint.dir={tmp / name}",
            "checkpoint.every_ms=1000",
            "log.dir=",
            "metrics.enabled=false",
            "join.window_ms=1200000",
            "join.allowed_lateness_ms=60000",
            "join.slate_size=5",
            f"scale.share_deltas={'true' if share else 'false'}",
            # several workers of a group without shared statistics, on purpose
            f"scale.independent_workers={'false' if share else 'true'}",
            f"scale.worker_id={name}",
            *extra,
        ],
    )
    t = cfg.topics
    return dataclasses.replace(
        cfg,
        topics=t.for_run(run),
    )


def all_deltas(cfg: Config, servers: str) -> list[bytes]:
    consumer = make_consumer(cfg.kafka, servers, group_id=None)
    tps = [
        TopicPartition(cfg.topics.deltas, p)
        for p in sorted(consumer.partitions_for_topic(cfg.topics.deltas) or {0})
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    out: list[bytes] = []
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        for recs in consumer.poll(timeout_ms=500).values():
            out.extend(r.value for r in recs)
    consumer.close(autocommit=False)
    return out


def assert_same_statistics(worker: Daemon, solo: Daemon, group: list[Daemon]) -> None:
    """The worker's global linear statistics equal the single worker's (float tolerance), each
    with the feedback still queued for its next update intervals learned (the group's: every
    worker's queue)."""
    mine = settle(worker.engine, worker.state.policy, *(w.state.policy_rows for w in group))
    theirs = settle(solo.engine, solo.state.policy, solo.state.policy_rows)
    for name in ("precision", "b"):
        np.testing.assert_allclose(
            np.asarray(getattr(mine, name)),
            np.asarray(getattr(theirs, name)),
            rtol=1e-4,
            atol=1e-3,
            err_msg=f"{worker.worker_id}.{name}",
        )
    assert int(mine.n) == int(theirs.n)


def test_two_workers_end_with_the_statistics_of_one(kafka_broker: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    one = config(kafka_broker, run, tmp_path, "solo", share=False, group=f"solo-{run}")
    ensure_topics(one, kafka_broker)

    group = f"pair-{run}"
    # Another worker given a's id, with state of its own, alive before a publishes anything.
    impostor_cfg = config(kafka_broker, run, tmp_path / "other", "a", share=True, group=group)
    impostor = Daemon(impostor_cfg, servers=kafka_broker)
    workers = [
        Daemon(
            config(kafka_broker, run, tmp_path, n, share=True, group=group), servers=kafka_broker
        )
        for n in ("a", "b")
    ]
    stops = [threading.Event() for _ in workers]
    threads = [
        threading.Thread(target=w.run, args=(s,)) for w, s in zip(workers, stops, strict=True)
    ]
    for t in threads:
        t.start()
    try:
        # Both workers own their partitions before the stream flows (a rebalance mid-stream is
        # test_rebalance.py's).
        deadline = time.monotonic() + 120
        while not all(w.consumer is not None and w.consumer.assignment() for w in workers):
            assert time.monotonic() < deadline, "the two workers never both owned partitions"
            time.sleep(0.2)
        n = produce_simulated(one, kafka_broker, n_requests=3000, slate_size=5, seed=7)
        deadline = time.monotonic() + 300
        while sum(w.stats.events for w in workers) < n:
            assert time.monotonic() < deadline, "the workers did not consume the stream"
            time.sleep(0.2)
    finally:
        for s in stops:
            s.set()
        for t in threads:
            t.join(timeout=120)
    solo = Daemon(one, servers=kafka_broker)
    solo.run(threading.Event(), exit_when_idle_ms=3000)
    assert solo.stats.events == n
    # Each split the partitions: together they saw every event exactly once.
    counts = [w.state.counters for w in workers]
    assert all(c.get("impressions", 0) > 0 for c in counts)  # both owned partitions
    for key in ("impressions", "outcomes", "closed", "feedback_rows"):
        assert sum(c.get(key, 0) for c in counts) == solo.state.counters[key], key
    # Fold in whatever deltas arrived after a worker stopped polling, as a running worker would.
    published = all_deltas(workers[0].config, kafka_broker)
    assert len(published) >= 2
    for w in workers:
        w.absorb_deltas(published)
        w.absorb_deltas(published)  # a redelivered delta is folded in once
        assert_same_statistics(w, solo, workers)
    # Worker ids must differ: a restarted worker keeps its lineage, skips its own deltas and
    # ends with the global statistics; the other worker given a's id, alive while a published,
    # is stopped by a's deltas; one that starts with a's id after them (a's checkpoints lost)
    # takes them for its id's past.
    again = Daemon(workers[0].config, servers=kafka_broker)
    assert again.lineage == workers[0].lineage
    again.absorb_deltas(published)
    assert_same_statistics(again, solo, [again, workers[1]])
    with pytest.raises(WorkerIdConflictError, match="two workers of the group share"):
        impostor.absorb_deltas(published)
    later = config(kafka_broker, run, tmp_path / "later", "a", share=True, group=group)
    Daemon(later, servers=kafka_broker).absorb_deltas(published)
