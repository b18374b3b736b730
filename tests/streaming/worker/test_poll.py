"""``Daemon.poll_once`` without a broker: a fake consumer's records through decode and step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from streaming.config import Config
from streaming.sim import traffic as sim_traffic
from streaming.sim.simulator import SimConfig, Simulator
from streaming.worker.connections import Connections
from streaming.worker.daemon import Daemon


class TP(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    offset: int
    value: bytes | None


class FakeConsumer:
    """The consumer calls ``poll_once`` makes: polls as scripted, assignment (every partition
    polled so far), high watermarks as set, pause and resume."""

    def __init__(self, polls: list[dict[TP, list[Record]]]) -> None:
        self.polls = polls
        self.assigned: set[TP] = set()
        self.highwaters: dict[TP, int] = {}
        self.paused_now: set[TP] = set()

    def poll(self, timeout_ms: int = 0, max_records: int = 0) -> dict[TP, list[Record]]:
        got = self.polls.pop(0) if self.polls else {}
        self.assigned |= set(got)
        return {tp: recs for tp, recs in got.items() if tp not in self.paused_now}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters.get(TP(*tp))

    def paused(self) -> set[TP]:
        return set(self.paused_now)

    def pause(self, *tps: TP) -> None:
        self.paused_now |= {TP(*tp) for tp in tps}

    def resume(self, *tps: TP) -> None:
        self.paused_now -= {TP(*tp) for tp in tps}


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.keys: list[bytes | None] = []

    def send(self, topic: str, *, value: bytes, key: bytes | None = None, **_: Any) -> None:
        self.sent.append((topic, json.loads(value)))
        self.keys.append(key)

    def flush(self, timeout: float = 0) -> None:
        pass

    def close(self, timeout: float = 0) -> None:
        pass


def traffic(n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """``n`` simulated requests as encoded impressions and outcomes, in wire order."""
    sim = Simulator(SimConfig(seed=seed, request_gap_ms=1000))
    req = sim.requests(n)
    sl = sim.log_slates(req, 3)
    wire = list(
        sim_traffic.wire(
            sim_traffic.impressions(req, sl.shown, sl.propensity, policy="logging"),
            sim_traffic.outcomes(req, sim.play(req, sl.shown)),
        )
    )
    return (
        [w.value for w in wire if w.role == "impressions"],
        [w.value for w in wire if w.role == "outcomes"],
    )


TOPICS = Config.load(env={}).topics


def daemon(tmp: Path, connections: Connections | None = None) -> Daemon:
    """A daemon on fakes: ``connections`` holds its source of records and its sinks."""
    cfg = Config.load(
        env={},
        overrides=[
            "kafka.bootstrap_servers=127.0.0.1:1",
            f"checkpoint.dir={tmp / 'ckpt'}",
            f"log.dir={tmp / 'log'}",
            "join.slate_size=3",
            "metrics.enabled=false",
        ],
    )
    return Daemon(cfg, servers="127.0.0.1:1", connections=connections)


def test_poll_once_routes_each_record_and_names_where_rejects_came_from(tmp_path: Path) -> None:
    topics = TOPICS
    imps, outs = traffic(6, seed=3)
    polled = {
        TP(topics.impressions, 2): [Record(10 + i, v) for i, v in enumerate(imps[:3])],
        TP(topics.impressions, 0): [
            Record(5, b"{"),
            *(Record(6 + i, v) for i, v in enumerate(imps[3:])),
        ],
        TP(topics.outcomes, 1): [
            Record(40, None),
            *(Record(41 + i, v) for i, v in enumerate(outs)),
        ],
    }
    producer = FakeProducer()
    d = daemon(tmp_path, Connections(source=FakeConsumer([polled]), side=producer))
    n = d.poll_once()
    assert n == len(imps) + len(outs) + 2
    dead = sorted(
        (m["topic"], m["partition"], m["offset"], m["code"])
        for t, m in producer.sent
        if t == topics.dlq
    )
    assert dead == [
        (topics.impressions, 0, 5, "invalid_json"),
        (topics.outcomes, 1, 40, "invalid_json"),
    ]
    keys = sorted(
        k for (t, _), k in zip(producer.sent, producer.keys, strict=True) if t == topics.dlq
    )
    assert keys == [f"{topics.impressions}/0/5".encode(), f"{topics.outcomes}/1/40".encode()]
    assert d.state.offsets == {
        (topics.impressions, 2): 13,
        (topics.impressions, 0): 6 + len(imps) - 3,
        (topics.outcomes, 1): 41 + len(outs),
    }
    assert d.state.counters["impressions"] == len(imps)
    assert d.state.counters["outcomes"] == len(outs)
    assert sorted(d.state.join) == [0, 1, 2]  # one join state per partition number seen
    assert d.stats.events_by_topic == {
        topics.impressions: len(imps) + 1,
        topics.outcomes: len(outs) + 1,
    }
    assert d.poll_once() == 0


def test_records_of_a_revoked_partition_are_skipped(tmp_path: Path) -> None:
    tp = TP(TOPICS.outcomes, 3)
    producer = FakeProducer()
    d = daemon(tmp_path, Connections(source=FakeConsumer([{tp: [Record(0, b"{")]}]), side=producer))
    d.revoked.add((tp.topic, tp.partition))
    assert d.poll_once() == 0
    assert producer.sent == [] and d.state.offsets == {}
    assert np.asarray(d.state.side.payload).size == 0


Later = Callable[[TP, list[bytes]], list[dict[TP, list[Record]]]]


def read_ahead(tmp_path: Path, later: Later) -> tuple[Daemon, FakeConsumer, TP, TP]:
    """A daemon whose first poll reads one impression and, on the same partition number, 60
    requests' outcomes (about 60 s of event time ahead); ``later(impression partition,
    impressions)`` gives the polls after it."""
    topics = TOPICS
    imps, outs = traffic(60, seed=4)
    imp_tp, out_tp = TP(topics.impressions, 0), TP(topics.outcomes, 0)
    first = {imp_tp: [Record(0, imps[0])], out_tp: [Record(i, v) for i, v in enumerate(outs)]}
    fake = FakeConsumer([first, *later(imp_tp, imps)])
    fake.highwaters = {imp_tp: 100, out_tp: 1_000}
    d = daemon(tmp_path, Connections(source=fake, side=FakeProducer()))
    return d, fake, imp_tp, out_tp


def test_outcomes_read_ahead_wait_only_while_their_impressions_move_on(tmp_path: Path) -> None:
    """Outcomes far ahead in event time are paused while their partition's impressions still
    deliver newer events; impressions that return only malformed records do not hold them."""
    import time

    d, fake, _, out_tp = read_ahead(
        tmp_path,
        lambda imp_tp, imps: [
            {imp_tp: [Record(1, imps[1])]},  # newer: the impressions move on
            {imp_tp: [Record(2, b"{"), Record(3, b"{")]},  # dead letters only
        ],
    )
    d.aligner.stall_ms = 300
    topics = d.config.topics
    d.poll_once()  # the outcomes reach ~60 s past the first impression: ahead by > align_ms
    assert fake.paused_now == {out_tp} and d.stats.align_pauses == 1
    d.poll_once()
    assert fake.paused_now == {out_tp}  # the impressions delivered newer events: still waiting
    d.poll_once()
    assert fake.paused_now == {out_tp}  # dead letters are no progress, but not stalled yet
    time.sleep(0.35)
    d.poll_once()  # nothing polled; the impressions moved on no event time for 300 ms
    assert fake.paused_now == set()
    fake.pause(TP(topics.impressions, 9))  # somebody else's pause is left alone
    d.poll_once()
    assert fake.paused_now == {TP(topics.impressions, 9)}


def test_time_the_daemon_spends_elsewhere_does_not_stall_the_partition_waited_on(
    tmp_path: Path,
) -> None:
    """Alignment counts only polling time: a daemon busy between two polls (a checkpoint, a slow
    step) gave the impressions no chance to deliver, so the outcomes stay paused."""
    import time

    d, fake, _, out_tp = read_ahead(tmp_path, lambda imp_tp, imps: [])
    d.aligner.stall_ms, d.aligner.max_gap_ms = 300, 100
    d.poll_once()
    assert fake.paused_now == {out_tp}
    time.sleep(0.5)  # busy elsewhere: counts 100 ms
    d.poll_once()
    assert fake.paused_now == {out_tp}
    for _ in range(3):  # polling with nothing from the impressions: 300 ms more
        time.sleep(0.11)
        d.poll_once()
    assert fake.paused_now == set()


def test_lag_comes_from_fetched_high_watermarks_while_records_flow_and_from_the_broker_else(
    tmp_path: Path,
) -> None:
    class Lagging(FakeConsumer):
        def __init__(self) -> None:
            super().__init__([])
            self.positions: dict[TP, int] = {}
            self.asked: list[list[TP]] = []

        def position(self, tp: TP) -> int:
            return self.positions[tp]

        def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
            self.asked.append(sorted(tps))
            return {tp: 50 for tp in tps}

    t = TOPICS
    fetched, never = TP(t.impressions, 0), TP(t.outcomes, 0)
    fake = Lagging()
    fake.assigned = {fetched, never}
    fake.highwaters = {fetched: 120}
    fake.positions = {fetched: 100, never: 10}
    d = daemon(tmp_path, Connections(source=fake))
    d._delivered = True  # pyright: ignore[reportPrivateUsage]  (a poll returned records)
    d.publish_metrics()
    assert d.stats.lag == {f"{t.impressions}/0": 20, f"{t.outcomes}/0": 40}
    assert fake.asked == [[never]]  # only the partition no fetch response has covered yet
    fake.highwaters[never] = 10
    d._delivered = True  # pyright: ignore[reportPrivateUsage]
    d.publish_metrics()
    assert d.stats.lag == {f"{t.impressions}/0": 20, f"{t.outcomes}/0": 0}
    assert len(fake.asked) == 1
    # A refresh interval with nothing read (a consumer that stopped fetching, say): the broker
    # is asked for every end, so new records behind a frozen high watermark show as lag.
    d.publish_metrics()
    assert fake.asked[-1] == sorted([fetched, never])
    assert d.stats.lag == {f"{t.impressions}/0": 0, f"{t.outcomes}/0": 40}


def test_with_the_decoding_process_a_batch_is_stepped_one_round_later_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """Each poll's batch decodes in the child while the daemon steps the batch before it; an
    empty poll, a revocation and ``caught_up`` all see the batch in flight stepped first. The
    end state is the in-process daemon's."""
    from streaming.events.process import Decoding

    imps, outs = traffic(30, seed=6)

    def polls() -> list[dict[TP, list[Record]]]:
        t = TOPICS
        imp_tp, out_tp = TP(t.impressions, 0), TP(t.outcomes, 1)
        return [
            {imp_tp: [Record(i, v) for i, v in enumerate(imps[:15])]},
            {
                imp_tp: [Record(15 + i, v) for i, v in enumerate(imps[15:])],
                out_tp: [Record(i, v) for i, v in enumerate(outs[:40])],
            },
            {},
            {out_tp: [Record(40 + i, v) for i, v in enumerate(outs[40:])]},
        ]

    here = daemon(tmp_path / "here", Connections(source=FakeConsumer(polls()), side=FakeProducer()))
    for _ in range(4):
        here.poll_once()
    fake = FakeConsumer(polls())
    d = daemon(tmp_path / "there", Connections(source=fake, side=FakeProducer()))
    d.decoding = Decoding(d.limits)
    try:
        assert d.poll_once() == 15
        assert d.stats.events == 0 and d.state.offsets == {}  # in flight
        assert not d.caught_up()
        assert d.poll_once() == 15 + 40
        assert d.stats.events == 15  # the first batch, stepped while the second decoded
        assert d.poll_once() == 0
        assert d.stats.events == 15 + 15 + 40  # nothing polled: the batch in flight is stepped
        assert d.poll_once() == len(outs) - 40
        assert d.stats.events == 15 + 15 + 40
        d.on_revoked([])  # a revocation steps the batch in flight before anything else
        assert d.stats.events == len(imps) + len(outs)
        assert not d.decoding.in_process
        assert d.state.offsets == here.state.offsets
        assert d.state.counters == here.state.counters
        assert d.stats.events_by_topic == here.stats.events_by_topic
    finally:
        d.decoding.close()


def test_the_daemon_names_each_logging_policy_it_reads(tmp_path: Path) -> None:
    from streaming.events import key64

    imps, _ = traffic(4, seed=5)
    tp = TP(TOPICS.impressions, 0)
    d = daemon(
        tmp_path,
        Connections(
            source=FakeConsumer([{tp: [Record(i, v) for i, v in enumerate(imps)]}]),
            side=FakeProducer(),
        ),
    )
    key = int(key64(["logging"])[0])
    assert d.policy_name(key) == str(key)  # nothing read yet: the key is all it has
    d.poll_once()
    d.poll_once()  # (stepped one round later with the decoding process)
    assert d.policy_name(key) == "logging"
