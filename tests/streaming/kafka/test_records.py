"""Lean consumer records against kafka-python's own ``PartitionRecords`` on the same bytes.

Every test parses one fetched partition's bytes (``MemoryRecords``) with the stock and the lean
class, takes records in the same cuts, and compares after every cut: the ``(offset, key, value,
timestamp)`` taken, ``next_fetch_offset``, ``records_read``, ``bytes_read``, ``leader_epoch``,
whether the part is drained, and the error raised (type) where the bytes are corrupt. Every test runs twice: with
the compiled regular path (``streaming.kafka._native``) in front of the Python loop, and with the
Python loop alone.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from streaming.kafka import records as kafka_records
from streaming.kafka.records import (
    LeanPartitionRecords,
    LeanRecord,
    use_lean_records,
    uses_lean_records,
)

TP = TopicPartition("t", 0)

_COMPILED = kafka_records._NativeRecords


@pytest.fixture(autouse=True, scope="module", params=["compiled", "python"])
def parser(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the module's tests with the compiled regular path, then with the Python loop alone."""
    kafka_records._NativeRecords = _COMPILED if request.param == "compiled" else None
    try:
        yield request.param
    finally:
        kafka_records._NativeRecords = _COMPILED


def test_the_compiled_path_is_built() -> None:
    """``make test`` installs with a C compiler present, so the compiled path must be there; a
    machine without one sets ENCORE_PURE_PYTHON=1 to test the Python parser alone."""
    if os.environ.get("ENCORE_PURE_PYTHON") == "1":
        assert kafka_records.NATIVE is (_COMPILED is not None)
    else:
        assert kafka_records.NATIVE and _COMPILED is not None


class Aborted(NamedTuple):
    """What a fetch response's ``aborted_transactions`` holds."""

    producer_id: int
    first_offset: int


Rec = tuple[int, int | None, bytes | None, bytes | None, list[tuple[str, bytes | None]]]
# (offset delta, timestamp delta, key, value, headers)

ATTRIBUTES_OFFSET = 21
CRC_OFFSET = 17
CONTROL = 0x20
LOG_APPEND_TIME = 0x08
FIRST_TIMESTAMP_OFFSET = 27
MAX_TIMESTAMP_OFFSET = 35


def batch(
    base_offset: int,
    records: Sequence[Rec],
    *,
    compression: int = 0,
    last_offset_delta: int | None = None,
    producer_id: int = -1,
    transactional: bool = False,
    control: bool = False,
    leader_epoch: int = 0,
    append_time: int | None = None,
    first_timestamp: int | None = None,
) -> bytes:
    """One v2 batch; ``last_offset_delta`` past the last record's makes a compacted batch;
    ``append_time`` sets the batch's timestamp type to LogAppendTime with that max timestamp
    (as a broker with ``log.message.timestamp.type=LogAppendTime`` writes it);
    ``first_timestamp`` overwrites the header's first timestamp (the records' deltas stay)."""
    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=transactional,
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1,
        batch_size=1 << 30,
    )
    for delta, ts, key, value, headers in records:
        b.append(
            delta, timestamp=1_700_000_000_000 + (ts or 0), key=key, value=value, headers=headers
        )
    buf = b.build()
    struct.pack_into(">q", buf, 0, base_offset)
    struct.pack_into(">i", buf, 12, leader_epoch)  # neither is covered by the CRC
    if first_timestamp is not None:
        struct.pack_into(">q", buf, FIRST_TIMESTAMP_OFFSET, first_timestamp)
    if (
        last_offset_delta is not None
        or control
        or append_time is not None
        or first_timestamp is not None
    ):
        if last_offset_delta is not None:
            struct.pack_into(">i", buf, 23, last_offset_delta)
        flags = (CONTROL if control else 0) | (LOG_APPEND_TIME if append_time is not None else 0)
        attrs = struct.unpack_from(">h", buf, ATTRIBUTES_OFFSET)[0] | flags
        struct.pack_into(">h", buf, ATTRIBUTES_OFFSET, attrs)
        if append_time is not None:
            struct.pack_into(">q", buf, MAX_TIMESTAMP_OFFSET, append_time)
        struct.pack_into(">I", buf, CRC_OFFSET, calc_crc32c(memoryview(buf)[ATTRIBUTES_OFFSET:]))
    return bytes(buf)


def control_batch(base_offset: int, producer_id: int, *, abort: bool) -> bytes:
    key = struct.pack(">hh", 0, 0 if abort else 1)
    return batch(
        base_offset,
        [(0, 0, key, b"\x00\x00\x00\x00\x00\x00", [])],
        producer_id=producer_id,
        transactional=True,
        control=True,
    )


def lean_of(record: Any) -> tuple[int, bytes | None, bytes | None, int]:
    """What a lean record holds (a legacy v0 record's timestamp None is -1 there)."""
    ts = record.timestamp
    return (record.offset, record.key, record.value, -1 if ts is None else ts)


def run(
    cls: Any,
    data: bytes,
    cuts: Sequence[int],
    *,
    fetch_offset: int = 0,
    check_crcs: bool = True,
    read_committed: bool = False,
    aborted: Sequence[Aborted] = (),
) -> list[Any]:
    """Take records in ``cuts`` (cycled) until drained; everything observable after each take."""
    part = cls(
        fetch_offset,
        TP,
        MemoryRecords(data),
        check_crcs=check_crcs,
        isolation_level=(
            IsolationLevel.READ_COMMITTED if read_committed else IsolationLevel.READ_UNCOMMITTED
        ),
        aborted_transactions=list(aborted),
    )
    seen: list[Any] = []
    for i in range(10_000):
        if not part:
            break
        try:
            took = [lean_of(r) for r in part.take(cuts[i % len(cuts)])]
        except CorruptRecordError as e:  # also what kafka-python raises for a bad structure
            seen.append(("error", type(e).__name__))
            break
        seen.append(
            (took, part.next_fetch_offset, part.records_read, part.bytes_read, part.leader_epoch)
        )
        if not took and part:
            seen.append("stuck")
            break
    seen.append(("drained", not part))
    return seen


def same(data: bytes, cuts: Sequence[int] = (7,), **kw: Any) -> list[Any]:
    stock = run(Fetcher.PartitionRecords, data, cuts, **kw)
    lean = run(LeanPartitionRecords, data, cuts, **kw)
    assert lean == stock
    return stock


def taken(seen: list[Any]) -> list[tuple[int, bytes | None, bytes | None, int]]:
    return [
        r for step in seen if isinstance(step, tuple) and isinstance(step[0], list) for r in step[0]
    ]


def plain(n: int, *, key: bool = True, size: int = 230) -> list[Rec]:
    return [
        (i, 17 * i, (b"user-%d" % i) if key else None, bytes([65 + i % 26]) * size, [])
        for i in range(n)
    ]


def test_keys_no_keys_null_values_headers_large_values() -> None:
    records: list[Rec] = [
        (0, 0, b"k", b"v", []),
        (1, 5, None, b"no key", []),
        (2, 9, b"null value", None, []),
        (3, 11, None, None, []),
        (4, 100_000, b"h", b"with headers", [("a", b"1"), ("", None), ("\u00e9", b"")]),
        (5, 3, b"", b"", []),
        (6, 70_000_000, b"big", bytes(range(256)) * 4096, []),  # 1 MiB, 3-byte varints
        (7, -5, b"k" * 300, b"v" * 20_000, []),  # negative timestamp delta
    ]
    data = batch(0, records) + batch(8, plain(200), leader_epoch=3)
    seen = same(data, cuts=(1, 3, 1000))
    got = taken(seen)
    assert got[:8] == [(d, k, v, 1_700_000_000_000 + (t or 0)) for d, t, k, v, _ in records]
    assert len(got) == 208
    assert isinstance(LeanPartitionRecords(0, TP, MemoryRecords(data)).take(1)[0], LeanRecord)
    # what the daemon reads of a record, under the same names as kafka-python's
    assert set(LeanRecord._fields) <= set(ConsumerRecord._fields)


def test_timestamps_create_time_and_log_append_time() -> None:
    """CreateTime: the batch's first timestamp plus each record's delta (one, two and more
    varint bytes, negative too); LogAppendTime: the batch's max timestamp for every record."""
    records: list[Rec] = [
        (i, t, b"k", b"v", []) for i, t in enumerate([0, 63, -64, 8191, -(2**40), 2**45])
    ]
    create = batch(0, records)
    appended = batch(6, records, append_time=1_800_000_000_123)
    got = taken(same(create + appended, cuts=(4,)))
    base = 1_700_000_000_000
    want = [base + (t or 0) for _, t, *_ in records] + [1_800_000_000_123] * 6
    assert [t for *_, t in got] == want
    # A batch of timestamps past int64 once its deltas are added (no broker writes one, but
    # kafka-python reads it with Python ints, and so must both parsers)
    far = batch(12, records, first_timestamp=2**63 - 2**41)
    assert taken(same(far, cuts=(3,)))[-1][-1] == 2**63 - 2**41 + 2**45


@pytest.mark.parametrize("cuts", [(1,), (2, 5), (63, 64, 65), (10_000,)])
def test_many_batches_and_max_records_cuts(cuts: tuple[int, ...]) -> None:
    data = b"".join(batch(100 * i, plain(100, key=i % 2 == 0)) for i in range(12))
    seen = same(data, cuts=cuts)
    assert [o for o, *_ in taken(seen)] == list(range(1200))


@pytest.mark.parametrize("compression", [1, 2, 3, 4])  # gzip, snappy, lz4, zstd
def test_compressed_batches(compression: int) -> None:
    from kafka.codec import has_lz4, has_snappy, has_zstd

    available = {1: True, 2: has_snappy(), 3: has_lz4(), 4: has_zstd()}
    assert available[compression], "the test extra installs python-snappy, lz4 and zstandard"
    data = batch(0, plain(300), compression=compression) + batch(300, plain(5))
    assert len(taken(same(data, cuts=(50,)))) == 305
    # a fetch from the middle of a compressed batch skips the records before the fetch offset
    assert taken(same(data, cuts=(50,), fetch_offset=123))[0][0] == 123


def test_fetch_offset_inside_a_batch_and_seeks() -> None:
    data = b"".join(batch(50 * i, plain(50)) for i in range(4))
    for fetch_offset in (0, 1, 49, 50, 51, 199, 200, 500):
        same(data, cuts=(3, 40), fetch_offset=fetch_offset)


def test_compacted_gaps_and_empty_batches() -> None:
    """Compaction leaves offset gaps inside batches, batches whose last records are gone (the
    next fetch must start after ``last_offset_delta``), and batches with no records at all."""
    gappy: list[Rec] = [(0, 0, b"a", b"1", []), (4, 1, b"b", b"2", []), (9, 2, b"c", None, [])]
    data = (
        batch(0, gappy, last_offset_delta=19)
        + batch(20, [], last_offset_delta=9)
        + batch(30, gappy[:1], last_offset_delta=4)
    )
    seen = same(data, cuts=(1, 2))
    assert [o for o, *_ in taken(seen)] == [0, 4, 9, 30]
    assert seen[-2][1] == 35  # next fetch after the last batch's last offset
    assert same(batch(0, gappy, last_offset_delta=19))[-2][1] == 20
    for fetch_offset in (3, 5, 10, 25, 31):
        same(data, cuts=(2,), fetch_offset=fetch_offset)


def test_control_and_transactional_batches() -> None:
    pid_committed, pid_aborted = 7, 8
    data = (
        batch(0, plain(3), producer_id=pid_committed, transactional=True)
        + batch(3, plain(4), producer_id=pid_aborted, transactional=True)
        + control_batch(7, pid_committed, abort=False)
        + control_batch(8, pid_aborted, abort=True)
        + batch(9, plain(2))
        + batch(11, plain(2), producer_id=pid_aborted, transactional=True)
    )
    aborted = [Aborted(pid_aborted, 3)]
    uncommitted = taken(same(data, cuts=(2, 5), aborted=aborted))
    assert [o for o, *_ in uncommitted] == [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12]
    committed = same(data, cuts=(2, 5), read_committed=True, aborted=aborted)
    assert [o for o, *_ in taken(committed)] == [0, 1, 2, 9, 10, 11, 12]
    # a fetch that starts with only an aborted batch and its marker
    same(
        data[len(batch(0, plain(3), producer_id=pid_committed, transactional=True)) :],
        cuts=(1,),
        fetch_offset=3,
        read_committed=True,
        aborted=aborted,
    )


def test_legacy_message_formats_use_kafka_pythons_records() -> None:
    for magic in (0, 1):
        builder = MemoryRecordsBuilder(magic=magic, compression_type=0, batch_size=1 << 30)
        for i in range(20):
            builder.append(
                1_700_000_000_000 + i,
                key=b"k%d" % i if i % 3 else None,
                value=None if i == 5 else b"v%d" % i,
            )
        builder.close()
        data = bytes(builder.buffer())
        seen = same(data, cuts=(3,))
        assert len(taken(seen)) == 20


def test_crc_failure_and_corrupt_records() -> None:
    first = len(batch(0, plain(10)))
    good = batch(0, plain(10)) + batch(10, plain(10))
    flipped = bytearray(good)
    flipped[len(good) // 2 + 30] ^= 0x40
    assert same(bytes(flipped), cuts=(4,))[-2] == ("error", "CorruptRecordError")
    # without CRC checks a corrupt record is still found by its structure
    for pos in (61, 62, 63, 70, len(good) - 5):
        broken = bytearray(good)
        broken[pos] ^= 0xFF
        same(bytes(broken), cuts=(4,), check_crcs=False)
    # a records count that disagrees with the records: bytes left over, or records missing
    for count in (9, 11, 0, -1):
        wrong = bytearray(good)
        struct.pack_into(">i", wrong, 57, count)
        crc = calc_crc32c(memoryview(wrong)[ATTRIBUTES_OFFSET:first])
        struct.pack_into(">I", wrong, CRC_OFFSET, crc)
        assert same(bytes(wrong), cuts=(4,))[-2] == ("error", "CorruptRecordError")
    # a batch cut short where a fetch ends is not a batch (kafka-python stops before it)
    same(good[:-7], cuts=(4,))


def test_use_lean_records_is_per_consumer_and_guarded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class FakeFetcher:
        PartitionRecords = Fetcher.PartitionRecords

    class FakeConsumer:
        def __init__(self, **config: Any) -> None:
            self._fetcher = FakeFetcher()
            self.config = {"key_deserializer": None, "value_deserializer": None, **config}

    a, b = FakeConsumer(), FakeConsumer()
    assert use_lean_records(a) and uses_lean_records(a)
    assert use_lean_records(a)  # idempotent
    assert not uses_lean_records(b) and FakeFetcher.PartitionRecords is Fetcher.PartitionRecords
    assert Fetcher.PartitionRecords is not LeanPartitionRecords
    with caplog.at_level(logging.WARNING):
        assert not use_lean_records(FakeConsumer(value_deserializer=bytes))
        monkeypatch.setattr(kafka_records.kafka, "__version__", "9.9.9")
        assert not use_lean_records(b)
    assert "deserializers" in caplog.text and "9.9.9" in caplog.text
    assert not uses_lean_records(b)


# ----- property tests: random batches, random cuts, random fetch offsets -----

header = st.tuples(st.text(max_size=4), st.none() | st.binary(max_size=8))
blob = st.none() | st.binary(max_size=40) | st.binary(min_size=100, max_size=400)
record_lists = st.lists(
    st.tuples(st.integers(-(2**40), 2**40), blob, blob, st.lists(header, max_size=2)),
    max_size=12,
)


@st.composite
def fetched(draw: st.DrawFn) -> tuple[bytes, int]:
    """A fetch's bytes: batches in offset order, some with gaps, some control/transactional."""
    data = b""
    offset = draw(st.integers(0, 2**40))
    first = offset
    for recs in draw(st.lists(record_lists, min_size=1, max_size=5)):
        deltas: list[int] = []
        d = 0
        for _ in recs:
            deltas.append(d)
            d += draw(st.sampled_from([1, 1, 1, 2, 70, 20_000]))
        extra = draw(st.sampled_from([0, 0, 3, 200]))
        last = (deltas[-1] if deltas else 0) + extra
        records = [(dl, ts, k, v, h) for dl, (ts, k, v, h) in zip(deltas, recs, strict=True)]
        kind = draw(st.sampled_from(["plain", "plain", "gzip", "txn", "control"]))
        if kind == "control":
            data += control_batch(offset, 5, abort=draw(st.booleans()))
            offset += 1
            continue
        data += batch(
            offset,
            records,
            compression=1 if kind == "gzip" else 0,
            last_offset_delta=last if (extra or not records) else None,
            producer_id=5 if kind == "txn" else -1,
            transactional=kind == "txn",
            leader_epoch=draw(st.integers(0, 5)),
        )
        offset += last + 1
    return data, draw(st.integers(first, offset + 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fetched(),
    st.lists(st.integers(1, 20), min_size=1, max_size=4),
    st.booleans(),
)
def test_property_same_as_kafka_python(
    data_fetch: tuple[bytes, int], cuts: list[int], committed: bool
) -> None:
    data, fetch_offset = data_fetch
    same(
        data,
        cuts=cuts,
        fetch_offset=fetch_offset,
        read_committed=committed,
        aborted=[Aborted(5, fetch_offset)],
    )


@settings(max_examples=150, deadline=None)
@given(record_lists, st.data())
def test_property_corrupt_bytes_fail_alike(recs: list[Any], data: st.DataObject) -> None:
    records = [(i, ts, k, v, h) for i, (ts, k, v, h) in enumerate(recs)]
    raw = bytearray(batch(0, records))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(61, max(61, len(raw) - 1)))
        if pos < len(raw):
            raw[pos] = data.draw(st.integers(0, 255))
    same(bytes(raw), cuts=(data.draw(st.integers(1, 5)),), check_crcs=False)


# ----- the compiled regular path on its own: where it stops, and never past the buffer -----


class Counters:
    def __init__(self) -> None:
        self.records_read = 0
        self.bytes_read = 0
        self.next_fetch_offset = -1


def records_of(data: bytes) -> tuple[bytes, int, int, int, int, bool]:
    """A v2 batch's records buffer, first record position, record count, base offset, base
    timestamp and whether each record's timestamp delta is added to it (CreateTime)."""
    (b,) = [b for b in [MemoryRecords(data).next_batch()] if b is not None]
    b._maybe_uncompress()
    deltas = b.timestamp_type != b.LOG_APPEND_TIME
    ts = b.first_timestamp if deltas else b.max_timestamp
    return bytes(b._buffer), b._pos, b.records_count, b.base_offset, ts, deltas


def test_compiled_path_stops_at_the_first_irregular_record() -> None:
    if _COMPILED is None:
        pytest.skip("not built; test_the_compiled_path_is_built says whether that is allowed")
    recs: list[Rec] = [*plain(3), (3, 0, b"k", b"v", [("h", b"1")]), (4, 0, b"k", b"v", [])]
    buf, pos, count, base, ts, deltas = records_of(batch(1000, recs))
    part = Counters()
    native = _COMPILED(part, buf, pos, count, base, LeanRecord, ts, deltas)
    got = list(native)
    assert [(r.offset, r.key) for r in got] == [
        (1000, b"user-0"),
        (1001, b"user-1"),
        (1002, b"user-2"),
    ]
    assert all(type(r) is LeanRecord for r in got)
    assert native.done == 3 and part.records_read == 3 and part.next_fetch_offset == 1003
    # the Python loop takes over at the record with headers, and reads the rest
    rest = list(kafka_records._v2_records(part, buf, native.pos, count - 3, base, ts, deltas))
    assert [(r.offset, r.value) for r in rest] == [(1003, b"v"), (1004, b"v")]
    assert part.records_read == 5 and part.next_fetch_offset == 1005
    # a regular batch is read to its end
    buf, pos, count, base, ts, deltas = records_of(batch(7, plain(50)))
    whole = _COMPILED(Counters(), buf, pos, count, base, LeanRecord, ts, deltas)
    assert len(list(whole)) == 50 and whole.pos == len(buf)


@settings(max_examples=300, deadline=None)
@given(record_lists, st.data())
def test_property_compiled_path_on_damaged_records(recs: list[Any], data: st.DataObject) -> None:
    """Real records with bytes overwritten, a wrong count, any base offset or start position:
    no crash, no read past the buffer, and every record it returns is the one the Python loop
    returns there, with the same counters."""
    if _COMPILED is None:
        pytest.skip("not built; test_the_compiled_path_is_built says whether that is allowed")
    append_time = data.draw(st.sampled_from([None, None, 5]))
    buf, pos, count, _, ts, deltas = records_of(
        batch(0, [(i, *r) for i, r in enumerate(recs)], append_time=append_time)
    )
    # near the ends of int64: some deltas take the timestamp past them
    ts = data.draw(st.sampled_from([ts, ts, 2**63 - 2**39, -(2**63) + 2**39]))
    raw = bytearray(buf)
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    buf = bytes(raw[: data.draw(st.integers(0, len(raw)))] if data.draw(st.booleans()) else raw)
    pos += data.draw(st.sampled_from([0, 0, 0, -pos - 1, 1, len(buf)]))
    count += data.draw(st.sampled_from([0, 0, -1, 1, -count - 1]))
    base = data.draw(st.sampled_from([0, 2**40, 2**63 - 3, -(2**63)]))
    a, b = Counters(), Counters()
    native = _COMPILED(a, buf, pos, count, base, LeanRecord, ts, deltas)
    got = list(native)
    assert native.done == len(got) <= max(count, 0)
    if got:
        assert native.pos <= len(buf)
        python = itertools.islice(
            kafka_records._v2_records(b, buf, pos, count, base, ts, deltas), len(got)
        )
        assert [tuple(r) for r in python] == [tuple(r) for r in got]
        assert vars(a) == vars(b)
    elif not recs or pos < 0:
        assert native.pos == pos


class Logged(Counters):
    """Counters behind a custom ``__setattr__``: every write must go through it."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "writes":
            self.writes.append(name)
        super().__setattr__(name, value)


class Scaled:
    """``records_read`` behind a property (a data descriptor): never bypassed."""

    def __init__(self) -> None:
        self._read = 0
        self.bytes_read = 0
        self.next_fetch_offset = -1

    @property
    def records_read(self) -> int:
        return self._read

    @records_read.setter
    def records_read(self, value: int) -> None:
        self._read = value * 10


@pytest.mark.parametrize("kind", [Counters, Logged, Scaled])
def test_compiled_path_updates_counters_as_python_does(kind: Any) -> None:
    if _COMPILED is None:
        pytest.skip("not built; test_the_compiled_path_is_built says whether that is allowed")
    buf, pos, count, base, ts, deltas = records_of(batch(40, plain(4)))
    a, b = kind(), kind()
    assert list(_COMPILED(a, buf, pos, count, base, LeanRecord, ts, deltas)) == list(
        kafka_records._v2_records(b, buf, pos, count, base, ts, deltas)
    )
    assert vars(a) == vars(b)
    a.records_read = b.records_read = 7  # written between batches: the next one starts there
    list(_COMPILED(a, buf, pos, count, base, LeanRecord, ts, deltas))
    list(kafka_records._v2_records(b, buf, pos, count, base, ts, deltas))
    assert vars(a) == vars(b)


def test_polled_timestamps_in_order_with_unknown_ones_as_minus_one() -> None:
    """What the daemon hands the decoder with each value: lean records, kafka-python's records
    (a legacy v0 one has None), and record types without the attribute."""
    from streaming.kafka.polled import Polled

    class Bare(NamedTuple):
        offset: int
        value: bytes | None

    class Stock(NamedTuple):
        offset: int
        value: bytes | None
        timestamp: int | None

    lean = Polled("t")
    lean.add(0, [LeanRecord(0, None, b"a", 5), LeanRecord(1, None, b"b", -1)])
    lean.add(3, [LeanRecord(7, b"k", b"c", 2**62)])
    assert lean.timestamps().tolist() == [5, -1, 2**62]
    assert lean.timestamps().dtype == "int64" and lean.values() == [b"a", b"b", b"c"]
    mixed = Polled("t")
    mixed.add(0, [Stock(0, b"a", None), Stock(1, b"b", 9)])
    mixed.add(1, [Bare(0, b"c")])
    assert mixed.timestamps().tolist() == [-1, 9, -1]
    assert Polled("t").timestamps().tolist() == []
