"""``Daemon.on_revoked`` / ``on_assigned`` without a broker: which state each partition runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandits import linear
from streaming import join
from streaming.config import Config
from streaming.core import step
from streaming.kafka.clients import OffsetAndMetadata, TopicPartition
from streaming.worker import checkpoint, handoff
from streaming.worker.connections import Connections
from streaming.worker.daemon import Daemon
from streaming.worker.lock import InUseError
from streaming.worker.stats import summary_line
from tests.streaming.worker.test_handoff import batches


class FakeConsumer:
    def __init__(self, committed: dict[TopicPartition, int]) -> None:
        self.committed_offsets = committed
        self.committed_meta: dict[TopicPartition, str] = {}
        self.owned: set[TopicPartition] = set()
        self.seeks: dict[TopicPartition, int] = {}
        self.log: list[str] = []  # "commit" entries, in order with the producer's (shared)

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    def committed(self, tp: TopicPartition, metadata: bool = False) -> Any:
        offset = self.committed_offsets.get(tp)
        if not metadata or offset is None:
            return offset
        return OffsetAndMetadata(offset, self.committed_meta.get(tp, ""), -1)

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed_offsets.update({tp: m.offset for tp, m in offsets.items()})
        self.committed_meta.update({tp: m.metadata for tp, m in offsets.items()})
        self.log.append("commit")

    def close(self, autocommit: bool = False) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeks.update({tp: 0 for tp in tps})


class FakeProducer:
    def __init__(self) -> None:
        self.sent: dict[bytes, bytes] = {}

    def send(self, topic: str, *, key: bytes, value: bytes) -> None:
        self.sent[key] = value

    def flush(self, timeout: float = 0) -> None:
        pass

    def close(self, timeout: float = 0) -> None:
        pass


def daemon(
    tmp: Path,
    name: str,
    committed: dict[TopicPartition, int],
    *extra: str,
    source: FakeConsumer | None = None,
) -> Daemon:
    """A worker on fakes: ``source`` (else a ``FakeConsumer(committed)``) and a state producer."""
    cfg = Config.load(
        env={},
        overrides=[
            "kafka.bootstrap_servers=127.0.0.1:1",
            "kafka.group_id=g",
            f"checkpoint.dir={tmp / name}",
            f"log.dir={tmp / name / 'log'}",
            "join.slate_size=3",
            "join.window_ms=1800000",
            "join.allowed_lateness_ms=600000",
            "metrics.enabled=false",
            f"scale.worker_id={name}",
            *extra,
        ],
    )
    fakes = Connections(source=source or FakeConsumer(committed), state=FakeProducer())
    return Daemon(cfg, servers="127.0.0.1:1", connections=fakes)


def tps(d: Daemon, *parts: int) -> list[TopicPartition]:
    t = d.config.topics
    return [TopicPartition(x, p) for p in parts for x in (t.impressions, t.outcomes)]


def fed(d: Daemon, n_batches: int) -> None:
    """Run a few batches of two partitions through ``d``'s state, with offsets."""
    t = d.config.topics
    for i, (ib, ob, ip, op) in enumerate(batches(300, cuts=6, seed=9)[:n_batches]):
        offsets = {(x, p): 10 * (i + 1) for p in (0, 1) for x in (t.impressions, t.outcomes)}
        d.state, _ = step(
            d.engine,
            d.state,
            ib,
            ob,
            offsets=offsets,
            impression_partition=ip,
            outcome_partition=op,
        )


def test_revoke_publishes_each_held_partition_and_assign_takes_the_newest(tmp_path: Path) -> None:
    a = daemon(tmp_path, "a", {})
    fed(a, 3)
    a.consumer.owned = set(tps(a, 0, 1))
    open_1 = a.state.join[1].open_key.size
    open_before = a.state.side.payload.size
    assert open_1 > 0
    a.on_revoked(tps(a, 0, 1))
    assert set(a.handoff_producer.sent) == {b"g/0", b"g/1"}
    assert a.stats.checkpoints == 1  # the state was durable before it was handed off

    # b is assigned partition 1: it installs a's record, windows and all, and seeks there.
    b = daemon(tmp_path, "b", dict(a.consumer.committed_offsets))
    published = {p: handoff.decode(v, "test") for p, v in ((1, a.handoff_producer.sent[b"g/1"]),)}
    b.ownership.read = lambda partitions, timeout_s=60.0: {  # type: ignore[method-assign]
        p: r for p, r in published.items() if p in set(partitions)
    }
    b.consumer.owned = set(tps(b, 1))
    b.on_assigned(tps(b, 1))
    assert b.stats.handoffs_installed == 1
    assert b.state.join[1].open_key.size == open_1
    assert set(b.consumer.seeks.values()) == {30}
    # a keeps partition 0 (its own state, nothing newer published) and drops partition 1.
    a.ownership.read = lambda partitions, timeout_s=60.0: {}  # type: ignore[method-assign]
    a.consumer.owned = set(tps(a, 0))
    a.on_assigned(tps(a, 0))
    assert set(a.state.join) == {0}
    assert a.stats.handoffs_installed == 0 and a.stats.partitions_started_fresh == 0
    assert join.counters(a.state.join[0])["opened"] > 0
    # Between them they hold every open impression once.
    assert a.state.side.payload.size + b.state.side.payload.size == open_before


@pytest.mark.parametrize("assigned", [(0, 1), (0, 1, 2)])
def test_every_assigned_partition_holds_the_learners_back_until_it_has_read_both_topics(
    tmp_path: Path, assigned: tuple[int, ...]
) -> None:
    """A partition assigned with nothing read yet gets an empty join, whose watermark is the
    start of time: the learners release no row until it has read both of its topics (else the
    rows its first windows close would come after rows already learned), or until it turns out
    to have nothing to read."""
    short = ("join.window_ms=20000", "join.allowed_lateness_ms=5000")
    a = daemon(tmp_path, "a", {}, *short)
    a.ownership.read = lambda partitions, timeout_s=60.0: {}  # type: ignore[method-assign]
    a.consumer.owned = set(tps(a, *assigned))
    a.on_assigned(tps(a, *assigned))
    assert sorted(a.state.join) == list(assigned)
    assert all(int(js.watermark_ms) == join.NO_TIME_MS for js in a.state.join.values())
    fed(a, 3)  # events of partitions 0 and 1 only
    assert a.state.counters["closed"] > 0
    # the learners release rows up to the smallest watermark of the worker's partitions
    frontier = min(int(js.watermark_ms) for js in a.state.join.values())
    if 2 in assigned:  # partition 2 has read nothing: no closed row is released
        assert frontier == join.NO_TIME_MS
    else:
        assert frontier > join.NO_TIME_MS
    if 2 in assigned:  # ... until it turns out to have nothing to read
        t = a.config.topics
        a.stats.lag = {f"{t.impressions}/2": 5, f"{t.outcomes}/2": 0}
        a._unhold_empty_partitions()
        assert 2 in a.state.join  # events still to read: it keeps holding the frontier
        a.stats.lag = {f"{t.impressions}/2": 0, f"{t.outcomes}/2": 0}
        a._unhold_empty_partitions()
        assert sorted(a.state.join) == [0, 1]  # empty: the others' watermarks decide
        a.stats.lag = {f"{t.impressions}/{p}": 0 for p in (0, 1)}
        a._unhold_empty_partitions()
        assert sorted(a.state.join) == [0, 1]  # partitions that have read something stay


def test_a_state_behind_the_commit_is_never_installed(tmp_path: Path) -> None:
    a = daemon(tmp_path, "a", {})
    fed(a, 2)
    stale = handoff.extract(
        a.state, 1, (a.config.topics.impressions, a.config.topics.outcomes), "a"
    )
    # Someone learned partition 1 up to offset 50 and was killed before handing it off.
    t = a.config.topics
    committed = {TopicPartition(t.impressions, 1): 50, TopicPartition(t.outcomes, 1): 50}
    c = daemon(tmp_path, "c", committed)
    c.ownership.read = lambda partitions, timeout_s=60.0: {1: stale}  # type: ignore[method-assign]
    c.consumer.owned = set(tps(c, 1))
    c.on_assigned(tps(c, 1))
    assert c.stats.partitions_started_fresh == 1 and c.stats.handoffs_installed == 0
    # empty windows: the stale ones would count events twice
    assert join.counters(c.state.join[1])["opened"] == 0 and c.state.join[1].open_key.size == 0
    assert c.consumer.seeks == {
        TopicPartition(t.impressions, 1): 50,
        TopicPartition(t.outcomes, 1): 50,
    }
    assert c.state.counters["partitions_started_fresh"] == 1


def test_two_workers_cannot_share_a_checkpoint_dir(tmp_path: Path) -> None:
    a = daemon(tmp_path, "a", {})
    with pytest.raises(InUseError, match=r"checkpoint.dir .*a is in use by another worker"):
        daemon(tmp_path, "a", {})
    a.close()
    b = daemon(tmp_path, "a", {})  # free once the first one closed
    assert b.state.offsets == {}


def test_a_lineage_survives_restarts_and_one_is_derived_for_a_checkpoint_without(
    tmp_path: Path,
) -> None:
    def restarted() -> Daemon:
        d = daemon(tmp_path, "a", {})
        return d

    first = restarted()
    first.write_checkpoint()
    drawn = first.lineage
    first.close()
    again = restarted()
    assert (again.lineage, again.lineage_born_ms) == (drawn, first.lineage_born_ms)
    # A checkpoint written before lineages existed: no lineage in its header.
    arrays, header = checkpoint.load_latest(again.ckpt_dir) or ({}, {})
    dropped = ("lineage", "lineage_born_ms", "created_at_ms", "format_version", "sequence")
    checkpoint.write(again.ckpt_dir, arrays, {k: v for k, v in header.items() if k not in dropped})
    again.close()
    derived = []
    for _ in range(2):
        derived.append(restarted())
        derived[-1].close()
    assert derived[0].lineage == derived[1].lineage != drawn  # the same on every restart
    assert derived[0].lineage_born_ms == 0


def test_a_checkpoint_of_other_topics_is_refused_and_leaves_the_directory_free(
    tmp_path: Path,
) -> None:
    first = daemon(tmp_path, "a", {})
    first.state = first.state._replace(offsets={("old.impressions", 0): 7, ("old.outcomes", 1): 3})
    first.write_checkpoint()
    first.close()
    with pytest.raises(checkpoint.CheckpointError) as refused:
        daemon(tmp_path, "a", {})
    t = first.config.topics
    assert str(refused.value) == (
        f"{tmp_path / 'a'} holds the state of topics old.impressions, old.outcomes, but the "
        f"config reads {t.impressions} and {t.outcomes}: use another checkpoint.dir"
    )
    # Refused, it let go of the directory: a worker of those topics still opens it.
    cfg = first.config
    old = dataclasses.replace(
        cfg,
        topics=dataclasses.replace(
            cfg.topics, impressions="old.impressions", outcomes="old.outcomes"
        ),
    )
    again = Daemon(old, servers="127.0.0.1:1")
    assert again.state.offsets == {("old.impressions", 0): 7, ("old.outcomes", 1): 3}
    again.close()


class NoEnds(FakeConsumer):
    """A consumer holding partitions whose ends the broker never gives (a client that is not
    fetching either), or gives once ``ends`` is set."""

    ends: dict[TopicPartition, int] | None = None

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.ends is None:
            raise TimeoutError("Failed to get offsets by timestamps in 1000 ms")
        return {tp: self.ends[tp] for tp in tps}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def position(self, tp: TopicPartition) -> int:
        return 10


def test_held_partitions_whose_lag_cannot_be_read_count_as_stalled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No records for ``stall_restart_ms`` and the lag unreadable: the consumer is replaced;
    with the lag read and zero (a daemon caught up), it is not; nor while within the limit."""
    consumer = NoEnds({})
    d = daemon(tmp_path, "a", {}, source=consumer)
    consumer.owned = set(tps(d, 0))
    limit = d.config.kafka.stall_restart_ms
    d.publish_metrics()
    assert d.stats.held == 2 and d.stats.lag == {}
    assert not d.stalled(limit - 1, 0)
    assert d.stalled(limit, 0)
    assert "lag of the 2 held partitions is unknown (TimeoutError" in caplog.text
    consumer.ends = dict.fromkeys(consumer.owned, 10)
    d.publish_metrics()
    assert sum(d.stats.lag.values()) == 0 and not d.stalled(limit, 0)  # caught up: idle, fine
    consumer.ends = dict.fromkeys(consumer.owned, 15)
    d.publish_metrics()
    assert d.stalled(limit, 0)  # records left and none delivered
    consumer.owned = set()
    consumer.ends = None
    d.publish_metrics()
    assert d.stats.held == 0 and not d.stalled(limit, 0)  # nothing held: the group watch's case
    assert "held 0 (lag 0)" in summary_line(d.stats, 0)


def fed_range(d: Daemon, lo: int, hi: int) -> None:
    """Batches ``lo`` to ``hi - 1`` of the same stream as ``fed`` (offsets 10 per batch)."""
    t = d.config.topics
    for i, (ib, ob, ip, op) in list(enumerate(batches(300, cuts=6, seed=9)))[lo:hi]:
        offsets = {(x, p): 10 * (i + 1) for p in (0, 1) for x in (t.impressions, t.outcomes)}
        d.state, _ = step(
            d.engine, d.state, ib, ob, offsets=offsets, impression_partition=ip,
            outcome_partition=op,
        )  # fmt: skip


def test_a_checkpoint_publishes_every_held_partition_before_it_commits(tmp_path: Path) -> None:
    a = daemon(tmp_path, "a", {})
    fed(a, 2)
    a.consumer.owned = set(tps(a, 0))  # owns partition 0 only; holds both
    order: list[str] = a.consumer.log
    sends = a.handoff_producer.send

    def logged_send(topic: str, *, key: bytes, value: bytes) -> None:
        order.append(f"record {key.decode()}")
        sends(topic, key=key, value=value)

    a.handoff_producer.send = logged_send  # type: ignore[method-assign]
    a.write_checkpoint()
    assert order == ["record g/0", "record g/1", "commit"]
    records = [handoff.decode(v, "test") for v in a.handoff_producer.sent.values()]
    assert {(r.lineage, r.sequence) for r in records} == {(a.lineage, 1)}
    assert set(a.consumer.committed_meta.values()) == {f"encore/{a.lineage}/1"}
    assert handoff.parse_commit_metadata(f"encore/{a.lineage}/1") == (a.lineage, 1)


def test_a_damaged_newest_checkpoint_reads_again_from_the_one_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoint 2 was written, published and committed, then damaged on disk: the worker
    resumes from checkpoint 1 and reads the events between again, instead of skipping them."""
    a = daemon(tmp_path, "a", {})
    a.consumer.owned = set(tps(a, 0, 1))
    fed_range(a, 0, 2)
    a.write_checkpoint()  # 1: offsets 20
    fed_range(a, 2, 4)
    a.write_checkpoint()  # 2: offsets 40
    published = {int(k.decode().split("/")[1]): v for k, v in a.handoff_producer.sent.items()}
    committed, meta = dict(a.consumer.committed_offsets), dict(a.consumer.committed_meta)
    assert set(committed.values()) == {40}
    newest = checkpoint.list_checkpoints(a.ckpt_dir)[-1]
    a.close()
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    b = daemon(tmp_path, "a", committed)
    b.consumer.committed_meta = dict(meta)
    assert b.ckpt_seq == 1 and set(b.state.offsets.values()) == {20}
    probe = FakeConsumer(committed)
    probe.committed_meta = dict(meta)
    monkeypatch.setattr("streaming.worker.ownership.make_consumer", lambda *a, **k: probe)
    b.ownership.read = lambda partitions, timeout_s=60.0: {  # type: ignore[method-assign]
        p: handoff.decode(published[p], "test") for p in partitions if p in published
    }
    assert b.reconcile() == 2  # checkpoint 1's records replace the lost checkpoint's
    assert b.state.counters["events_reread"] == 2 * 2 * 20  # 2 partitions x 2 topics x 20
    again = {p: handoff.decode(b.handoff_producer.sent[f"g/{p}".encode()], "t") for p in (0, 1)}
    assert {(r.lineage, r.sequence, r.offsets) for r in again.values()} == {
        (b.lineage, 1, (20, 20))
    }
    b.ownership.read = lambda partitions, timeout_s=60.0: {  # type: ignore[method-assign]
        p: again[p] for p in partitions
    }
    b.consumer.owned = set(tps(b, 0, 1))
    b.on_assigned(tps(b, 0, 1))
    assert set(b.consumer.seeks.values()) == {20}
    assert b.stats.partitions_started_fresh == 0

    # Another worker taking partition 1 now installs the republished record: the commit made
    # after the lost checkpoint does not count as a floor either.
    c = daemon(tmp_path, "c", committed)
    c.consumer.committed_meta = dict(meta)
    c.ownership.read = lambda partitions, timeout_s=60.0: {1: again[1]}  # type: ignore[method-assign]
    c.consumer.owned = set(tps(c, 1))
    c.on_assigned(tps(c, 1))
    assert c.stats.handoffs_installed == 1 and c.stats.partitions_started_fresh == 0
    assert set(c.consumer.seeks.values()) == {20}


@pytest.mark.parametrize("delta_published", [True, False])
def test_a_checkpoint_whose_records_never_left_falls_back_when_its_partitions_were_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delta_published: bool
) -> None:
    """Shared statistics: a worker stopped right after a checkpoint file, before its records
    (and so its delta) reached the broker, while another worker took a partition from the
    record before. Publishing the checkpoint's delta would count that interval twice: it
    resumes from the checkpoint before instead. Had the delta gone out, the records had too,
    and the checkpoint stands."""
    a = daemon(tmp_path, "a", {}, "scale.share_deltas=true")
    a.consumer.owned = set(tps(a, 0, 1))

    def learned() -> None:  # something to seal: the windows of these batches stay open
        a.state = a.state._replace(pending=a.state.pending._replace(n=np.int32(3)))

    fed_range(a, 0, 2)
    learned()
    a.write_checkpoint()  # 1: records, delta 1 and commit at 20
    sent = a.handoff_producer.sent
    before = {int(k.decode().split("/")[1]): v for k, v in sent.items() if b"/" in k}
    assert b"a" in sent  # delta 1
    fed_range(a, 2, 4)
    learned()
    a.links.state = None  # stopped before the records of checkpoint 2 went out
    a.write_checkpoint()  # 2: offsets 40, its delta sealed in the file
    assert a.state.outbox is not None and a.state.delta_seq == 2
    a.consumer = None
    a.close()

    b = daemon(tmp_path, "a", {}, "scale.share_deltas=true")
    assert b.ckpt_seq == 2 and b.state.outbox is not None
    taken = handoff.decode(before[1], "t")._replace(lineage="other", worker="c")
    b.ownership.read = lambda partitions, timeout_s=60.0: {  # type: ignore[method-assign]
        0: handoff.decode(before[0], "t"),
        1: taken,
    }
    monkeypatch.setattr(
        "streaming.worker.ownership.make_consumer", lambda *a, **k: FakeConsumer({})
    )
    monkeypatch.setattr(b.sharing, "published", lambda lineage, seq: delta_published)
    b.reconcile()
    if delta_published:
        assert b.ckpt_seq == 2 and set(b.state.offsets.values()) == {40}
    else:
        assert b.ckpt_seq == 1 and set(b.state.offsets.values()) == {20}
        assert b.state.delta_seq == 1  # checkpoint 2's delta is gone with it


def test_the_fallback_is_decided_by_whether_any_record_of_the_checkpoint_was_read(
    tmp_path: Path,
) -> None:
    """A checkpoint's records reach readers all together or not at all: one of them on the
    topic means every partition taken since was taken from them (the checkpoint stands); none
    there means a partition another worker holds was taken from an older record (fall back)."""
    a = daemon(tmp_path, "a", {}, "scale.share_deltas=true")
    fed_range(a, 0, 2)
    a.state = a.state._replace(pending=a.state.pending._replace(n=np.int32(3)))
    a.write_checkpoint()
    a.state = a.state._replace(outbox=a.state.pending)  # sealed, not yet published
    h, at = a.ownership, ("L", 2)
    mine = {p: h.record(a.state, p, at) for p in (0, 1)}
    older = {p: h.record(a.state, p, ("L", 1)) for p in (0, 1)}
    taken = mine[1]._replace(lineage="M", sequence=7)
    assert h.fallback_needed(a.state, at, {0: mine[0], 1: taken}, False) == []
    assert h.fallback_needed(a.state, at, {0: older[0], 1: taken}, False) == [1]
    assert h.fallback_needed(a.state, at, {0: older[0], 1: taken}, True) == []
    assert h.fallback_needed(a.state, at, older, False) == []  # nothing taken: publish them
    # nothing sealed (the policy had learned nothing new): its queue and counts would still
    # count the interval twice
    assert h.fallback_needed(a.state._replace(outbox=None), at, {1: taken}, True) == [1]


def test_tracks_sharing_per_track_slots_are_measured_and_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    short = ("join.window_ms=20000", "join.allowed_lateness_ms=5000")
    a = daemon(tmp_path, "a", {}, 'policy.params={"n_ids": 64}', *short)
    fed(a, 3)
    seen = np.unique(a.state.policy_rows.action)  # the update interval has not passed yet
    np.testing.assert_array_equal(a.state.tracks, seen)  # every track the policy learned of
    snap = a.metrics_snapshot()
    assert snap["tracks_seen"] == seen.size > 64
    share = snap["track_slots_shared"]
    assert share == pytest.approx(linear.shared_slots(seen, 64) / seen.size) and share > 0.5
    with caplog.at_level("WARNING"):
        a._warn_shared_slots(snap)
        a._warn_shared_slots(snap)  # said once, until the share doubles
    said = [r.getMessage() for r in caplog.records if "per-track slot" in r.getMessage()]
    assert len(said) == 1 and "n_ids = 64" in said[0] and f"{20 * seen.size:,}" in said[0]
    roomy = daemon(tmp_path, "b", {}, 'policy.params={"n_ids": 1000000}', *short)
    fed(roomy, 3)
    snap = roomy.metrics_snapshot()
    assert snap["track_slots_shared"] < 0.01
    caplog.clear()
    roomy._warn_shared_slots(snap)
    assert not caplog.records


def test_partitions_that_read_nothing_are_neither_checkpointed_nor_handed_off(
    tmp_path: Path,
) -> None:
    a = daemon(tmp_path, "a", {})
    a.ownership.read = lambda partitions, timeout_s=60.0: {}  # type: ignore[method-assign]
    a.consumer.owned = set(tps(a, 0, 1))
    a.on_assigned(tps(a, 0, 1))
    assert sorted(a.state.join) == [0, 1] and a.stats.checkpoints == 0
    a.on_revoked(tps(a, 0, 1))
    assert a.stats.checkpoints == 0 and not a.handoff_producer.sent
    assert a.state.join == {}


def test_a_checkpoint_refused_in_a_rebalance_listener_is_found_behind_the_clients_error(
    tmp_path: Path,
) -> None:
    """kafka-python raises its own error for whatever a rebalance listener raised; the daemon
    finds the checkpoint's error behind it, so that ``encore run`` exits with its code."""
    from streaming.worker.daemon import _cause_in

    refused = checkpoint.CheckpointWriteError(tmp_path, OSError(28, "No space left on device"))
    try:
        try:
            raise refused
        except checkpoint.CheckpointWriteError:
            raise RuntimeError("User rebalance callback throws an error")  # noqa: B904
    except RuntimeError as wrapped:
        assert _cause_in(wrapped, (checkpoint.CheckpointWriteError,)) is refused
        assert _cause_in(wrapped, (KeyError,)) is None
