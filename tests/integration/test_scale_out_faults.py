"""Scale-out under kill -9 against the real broker: three workers sharing statistics, the stream
flowing, one of them killed at seeded moments (in steady state and while the group rebalances)
and restarted after delays from none to several session timeouts. The group's global policy and
join counters end equal to those of one uninterrupted worker.

Each worker is ``python -m streaming run`` in a subprocess (the helpers of ``test_faults``); the
uninterrupted worker reads the same topics in a group of its own, without shared statistics.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streaming import join
from streaming.config import Config
from streaming.core import join_counters, settle
from streaming.demo import SimulatedStream
from streaming.kafka.clients import HANDOFF_MAX_BYTES, TopicPartition, ensure_topics, make_consumer
from streaming.worker import handoff
from streaming.worker import handoff_topic as handoff_io
from streaming.worker.daemon import Daemon
from tests.integration.test_faults import (
    SLATE,
    Topics,
    final_state,
    fresh_topics,
    newest_sequence,
    start_daemon,
    stop,
    tail,
    wait_done,
    write_config,
)
from tests.integration.test_scale_out import all_deltas

pytestmark = pytest.mark.integration

SESSION_S = 6.0  # write_config's kafka.session_timeout_ms
CHUNKS, CHUNK_REQUESTS, CHUNK_GAP_S = 30, 1_200, 2.5  # about 200,000 events over 75 s
# (when to kill, then how long the victim stays away): "steady" after it wrote two checkpoints
# since its start, "rebalance" right after its first one (the checkpoint it writes once assigned
# its partitions, while the group is still settling the rebalance its join set off)
SCHEDULE = [
    ("steady", 0.0),
    ("rebalance", 2 * SESSION_S + 1),
    ("steady", 0.5),
    ("rebalance", 3 * SESSION_S + 2),
    ("steady", SESSION_S / 2),
]
IDLE_MS = 25_000  # longer than the longest restart delay: nobody leaves while the victim is away


def worker_config(tmp: Path, servers: str, topics: Topics, name: str, group: str) -> Config:
    toml = tmp / f"{name}.toml"
    write_config(toml, servers, topics, group=group, ckpt_dir=tmp / f"ck-{name}")
    share = "true" if group.startswith("g-") else "false"
    with toml.open("a") as out:
        out.write(f'\n[scale]\nshare_deltas = {share}\nworker_id = "{name}"\n')
        out.write(f"independent_workers = {'false' if share == 'true' else 'true'}\n")
    return Config.load(toml, env={})


def produce_flowing(cfg: Config, servers: str, done: threading.Event, sent: list[int]) -> None:
    stream = SimulatedStream(cfg, servers, slate_size=SLATE, seed=21)
    try:
        for i in range(CHUNKS):
            sent.append(stream.produce(CHUNK_REQUESTS, last=i == CHUNKS - 1))
            time.sleep(CHUNK_GAP_S)
    finally:
        stream.close()
        done.set()


def group_records(cfg: Config, servers: str) -> dict[int, handoff.PartitionRecord]:
    """The newest handoff record of every partition of the group: its join state, as a whole."""
    consumer = make_consumer(
        cfg.kafka,
        servers,
        group_id=None,
        max_partition_fetch_bytes=HANDOFF_MAX_BYTES + 1024 * 1024,
        isolation_level="read_committed",
    )
    try:
        parts = sorted(consumer.partitions_for_topic(cfg.topics.handoff) or {0})
        consumer.assign([TopicPartition(cfg.topics.handoff, q) for q in parts])
        return handoff_io.read_newest(
            consumer,
            cfg.topics.handoff,
            parts,
            cfg.kafka.group_id,
            range(cfg.topics.partitions),
        )
    finally:
        consumer.close(autocommit=False)


def assert_same_policy(got: Any, want: Any, who: str) -> None:
    """Same count, precision within float32 rounding of its terms, same b (tolerance)."""
    assert int(got.n) == int(want.n), who
    x, y = np.asarray(got.precision), np.asarray(want.precision)
    scale = np.sqrt(np.outer(np.diag(y), np.diag(y)))
    worst = float(np.max(np.abs(x - y) / (1e-4 + 2e-6 * scale)))
    assert worst <= 1.0, f"{who}: precision {worst:.2f} times the rounding tolerance"
    np.testing.assert_allclose(
        np.asarray(got.b), np.asarray(want.b), rtol=1e-4, atol=1e-3, err_msg=who
    )
    np.testing.assert_array_equal(np.asarray(got.id_count), np.asarray(want.id_count), err_msg=who)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_worker_killed_at_any_moment_and_back_after_any_delay_loses_and_doubles_nothing(
    kafka_broker: str, tmp_path: Path
) -> None:
    topics = fresh_topics()
    run = uuid.uuid4().hex[:6]
    names = ("a", "b", "c")
    cfgs = {n: worker_config(tmp_path, kafka_broker, topics, n, f"g-{run}") for n in names}
    solo = worker_config(tmp_path, kafka_broker, topics, "solo", f"s-{run}")
    ensure_topics(solo, kafka_broker)
    logs = {n: tmp_path / f"{n}.log" for n in (*names, "solo")}
    procs = {n: start_daemon(tmp_path / f"{n}.toml", logs[n], idle_ms=IDLE_MS) for n in names}
    procs["solo"] = start_daemon(tmp_path / "solo.toml", logs["solo"], idle_ms=IDLE_MS)
    produced = threading.Event()
    sent: list[int] = []
    producer = threading.Thread(
        target=produce_flowing, args=(solo, kafka_broker, produced, sent), daemon=True
    )
    delays = np.random.default_rng(17).uniform(0.0, 0.6, size=len(SCHEDULE))
    victim, ckpt_dir = "c", tmp_path / "ck-c"
    try:
        producer.start()
        for i, ((when, away_s), jitter) in enumerate(zip(SCHEDULE, delays, strict=True)):
            proc, since = procs[victim], newest_sequence(ckpt_dir)
            wanted = since + (2 if when == "steady" or i == 0 else 1)
            deadline = time.monotonic() + 120
            while newest_sequence(ckpt_dir) < wanted:
                assert proc.poll() is None, (
                    f"{victim} stopped before kill {i}:\n{tail(logs[victim])}"
                )
                assert time.monotonic() < deadline, f"no checkpoint before kill {i}"
                time.sleep(0.02)
            if when == "steady":
                time.sleep(float(jitter))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            time.sleep(away_s)
            procs[victim] = start_daemon(tmp_path / f"{victim}.toml", logs[victim], idle_ms=IDLE_MS)
        assert produced.wait(timeout=300), "the producer did not finish"
        for n, proc in procs.items():
            wait_done(proc, logs[n], timeout_s=420)
    finally:
        for proc in procs.values():
            stop(proc)
    n_sent = sum(sent)
    want = final_state(solo)
    assert int(want.counters["impressions"]) + int(want.counters["outcomes"]) == n_sent

    # The group's join counters: the newest record of each partition, as the group holds it.
    records = group_records(cfgs["a"], kafka_broker)
    assert sorted(records) == list(range(solo.topics.partitions))
    total: dict[str, int] = {}
    for record in records.values():
        assert record.join is not None
        for k, v in join.counters(record.join).items():
            if k not in join.CUT_DEPENDENT:
                total[k] = total.get(k, 0) + v
    assert total == join_counters(want, cut_dependent=False)

    # Every closed window learned once: the workers' own counts add up to the solo worker's.
    # (Their counts of events stepped are not compared: a worker stopped between a checkpoint
    # file and its partition records keeps, in that checkpoint, counts of events its partition's
    # next owner reads again from the record before; when those events closed nothing they
    # taught it nothing, and there is no delta to fall back from. The join counters above count
    # every event of the group once.)
    states = {n: final_state(cfgs[n]) for n in names}
    for key in ("closed", "feedback_rows"):
        assert sum(int(s.counters.get(key, 0)) for s in states.values()) == int(
            want.counters[key]
        ), key
    # Every worker's global policy, with every published delta folded in, is the solo one's,
    # each with the feedback still queued for its next update intervals learned (the group's:
    # every worker's queue).
    published = all_deltas(cfgs["a"], kafka_broker)
    queues = [s.policy_rows for s in states.values()]
    for n in names:
        worker = Daemon(cfgs[n], servers=kafka_broker)
        try:
            worker.absorb_deltas(published)
            assert_same_policy(
                settle(worker.engine, worker.state.policy, *queues),
                settle(worker.engine, want.policy, want.policy_rows),
                n,
            )
        finally:
            worker.close()
    for n in names:  # no partition's windows were lost on the way
        assert "starting fresh there" not in logs[n].read_text(errors="replace"), tail(logs[n])
