"""Lean consumer records: ``(offset, key, value, timestamp)`` parsed from v2 record batches in one
tight loop.

kafka-python turns every fetched record into a ``ConsumerRecord`` through a chain of Python calls
per record (``DefaultRecordBatch.__next__`` -> ``_read_msg`` -> ``decode_varint`` seven times ->
``DefaultRecord`` -> deserializers -> header sizes -> ``ConsumerRecord``). The daemon reads only a
record's offset, value and timestamp (its partition comes from the poll's ``TopicPartition``), so
this module parses each v2 batch's records in one loop with the varints decoded inline and yields
a :class:`LeanRecord` per record. The timestamp is kafka-python's: the batch's first timestamp
plus the record's delta (CreateTime), or the batch's max timestamp (LogAppendTime).

Everything above the record level is kafka-python's own and unchanged: fetching, positions,
``max_records`` cuts (``take`` via ``islice``), the skip of records before the fetch offset,
the batch CRC check (``check_crcs``), control batches, aborted transactions under
``read_committed``, the compacted-batch ``next_fetch_offset``, ``records_read``/``bytes_read``
(the same sums: ``bytes_read`` adds each record's length field, as kafka-python does).
Legacy v0/v1 message sets go through kafka-python's own record objects.

The loop's regular path is also compiled (``streaming/kafka/_native.c``, built by the install where a
C compiler is present; :data:`NATIVE` says whether it was): it reads records until the first one
that is anything but regular (headers, a varint over nine bytes, a read past the end, a length
that does not add up), and the Python loop below carries on from there. So this module's Python
parser is the one definition of the format and of every error message; the compiled one only
ever takes records it would take identically, without the interpreter's cost per field.

The hook is narrow: :func:`use_lean_records` sets the ``PartitionRecords`` class on ONE
consumer's fetcher (kafka-python calls ``self.PartitionRecords(...)``), so no other consumer in
the process changes. It is refused, with a warning, for a kafka-python other than the version
this parser was written against, and for consumers with key or value deserializers (lean records
carry raw bytes). A lean consumer must be read with ``poll()``: its iterator interface expects
full ``ConsumerRecord`` objects.

Like :mod:`streaming.kafka.clients`, this module may import ``kafka``; nothing else in encore does.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

import kafka
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel

try:
    from streaming.kafka._native import Records as _NativeRecords
except ImportError:  # not built (no C compiler at install): the Python parser reads everything
    _NativeRecords = None

log = logging.getLogger(__name__)

NATIVE = _NativeRecords is not None
"""Whether the compiled regular path (``streaming.kafka._native``) is in use."""

__all__ = [
    "NATIVE",
    "SUPPORTED_KAFKA_PYTHON",
    "LeanPartitionRecords",
    "LeanRecord",
    "use_lean_records",
    "uses_lean_records",
]

# The parser re-implements kafka-python's record-level code of these versions (fetcher.py's
# ``PartitionRecords._unpack_records`` and default_records.py's ``_read_msg``).
SUPPORTED_KAFKA_PYTHON = frozenset({"3.0.12"})


class LeanRecord(NamedTuple):
    """One consumed record: what the daemon reads of it (the partition is the poll's key).

    ``timestamp`` is in ms since the epoch, as kafka-python's ``ConsumerRecord.timestamp``
    (-1 where the record has none: a legacy v0 message).
    """

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


_tuple_new = tuple.__new__  # what the NamedTuple constructor calls, without its Python frame


def _v2_records(
    part: Any,
    buffer: bytes,
    pos: int,
    count: int,
    base_offset: int,
    base_timestamp: int,
    timestamp_deltas: bool,
) -> Iterator[LeanRecord]:
    """Yield the ``count`` records of one v2 batch whose first record starts at ``pos``.

    ``buffer`` holds the batch's records (decompressed if the batch was compressed). Each
    record's timestamp is ``base_timestamp`` plus its delta where ``timestamp_deltas``
    (CreateTime: the batch's first timestamp), else ``base_timestamp`` (LogAppendTime: the
    batch's max timestamp), as in kafka-python. Before each
    record is yielded, ``part``'s ``records_read``, ``bytes_read`` (the record's length field,
    kafka-python's ``size_in_bytes``) and ``next_fetch_offset`` advance as in kafka-python.
    Raises ``CorruptRecordError`` where kafka-python's ``DefaultRecordBatch`` iteration does
    (record length, header count and key sizes, header keys as UTF-8, bytes left after the last
    record, truncated records), with kafka-python's messages.
    """
    new = _tuple_new
    cls = LeanRecord
    i = 0
    try:
        while i < count:
            # Seven varints: length, attributes, timestamp delta, offset delta, key length,
            # value length, header count. They are decoded inline when one or two bytes long
            # (zig-zag), by kafka-python's loop (_varint) when longer.
            b = buffer[pos]
            if b < 128:
                length = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (c := buffer[pos + 1]) < 128:
                b = (b & 127) | (c << 7)
                length = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                length, pos = _varint(buffer, pos)
            start = pos
            # attributes: skipped (only their bytes are read), but an over-long varint is
            # still an error, as in kafka-python
            if buffer[pos] < 128:
                pos += 1
            elif buffer[pos + 1] < 128:
                pos += 2
            else:
                pos = _varint(buffer, pos)[1]
            b = buffer[pos]
            if b < 128:
                ts = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (c := buffer[pos + 1]) < 128:
                b = (b & 127) | (c << 7)
                ts = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                ts, pos = _varint(buffer, pos)
            b = buffer[pos]
            if b < 128:
                delta = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (c := buffer[pos + 1]) < 128:
                b = (b & 127) | (c << 7)
                delta = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                delta, pos = _varint(buffer, pos)
            b = buffer[pos]
            if b < 128:
                n = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (c := buffer[pos + 1]) < 128:
                b = (b & 127) | (c << 7)
                n = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                n, pos = _varint(buffer, pos)
            if n >= 0:
                key = buffer[pos : pos + n]
                pos += n
            else:
                key = None
            b = buffer[pos]
            if b < 128:
                n = (b >> 1) ^ -(b & 1)
                pos += 1
            elif (c := buffer[pos + 1]) < 128:
                b = (b & 127) | (c << 7)
                n = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                n, pos = _varint(buffer, pos)
            if n >= 0:
                value = buffer[pos : pos + n]
                pos += n
            else:
                value = None
            if buffer[pos] == 0:  # no headers
                pos += 1
            else:
                pos = _skip_headers(buffer, pos)
            if pos - start != length:
                raise CorruptRecordError(
                    f"Invalid record size: expected to read {length} bytes in record "
                    f"payload, but instead read {pos - start}"
                )
            offset = base_offset + delta
            part.records_read += 1
            part.bytes_read += length
            part.next_fetch_offset = offset + 1
            timestamp = base_timestamp + ts if timestamp_deltas else base_timestamp
            yield new(cls, (offset, key, value, timestamp))
            i += 1
    except (ValueError, IndexError) as err:
        raise CorruptRecordError(f"Found invalid record structure: {err!r}") from err
    if pos != len(buffer):
        raise CorruptRecordError(f"{len(buffer) - pos} unconsumed bytes after all records consumed")


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    """kafka-python's ``decode_varint`` (zig-zag; an over-long one is a ``ValueError``)."""
    result = buffer[pos]
    if not (result & 0x81):
        return (result >> 1), pos + 1
    if not (result & 0x80):
        return (result >> 1) ^ (~0), pos + 1
    result &= 0x7F
    pos += 1
    shift = 7
    while True:
        b = buffer[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not (b & 0x80):
            return ((result >> 1) ^ -(result & 1)), pos
        shift += 7
        if shift >= 64:
            raise ValueError("Out of int64 range")


def _skip_headers(buffer: bytes, pos: int) -> int:
    """Read past a record's headers with kafka-python's checks; returns the position after."""
    count, pos = _varint(buffer, pos)
    if count < 0:
        raise CorruptRecordError(f"Found invalid number of record headers {count}")
    while count:
        n, pos = _varint(buffer, pos)
        if n < 0:
            raise CorruptRecordError(f"Invalid negative header key size {n}")
        buffer[pos : pos + n].decode("utf-8")  # kafka-python decodes (and so checks) the key
        pos += n
        n, pos = _varint(buffer, pos)
        if n >= 0:
            pos += n
        count -= 1
    return pos


# kafka-python 3's class; the typeshed stubs pyright falls back to describe kafka-python 2's.
_StockPartitionRecords: Any = Fetcher.PartitionRecords


class LeanPartitionRecords(_StockPartitionRecords):
    """kafka-python's ``PartitionRecords`` yielding :class:`LeanRecord` for v2 batches.

    Only ``_unpack_records`` differs; its batch-level logic is kafka-python 3.0.12's, line for
    line. Legacy (v0/v1) batches yield ``LeanRecord`` made from kafka-python's own records.
    """

    def _unpack_records(
        self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[Any]:
        if key_deserializer is not None or value_deserializer is not None:
            # use_lean_records refuses such consumers; this keeps a stray instance correct.
            yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
            return
        try:
            batch = records.next_batch()
            last_batch = None
            read_committed = self.isolation_level == IsolationLevel.READ_COMMITTED
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset "
                        f"{batch.base_offset} failed crc check"
                    )
                if batch.magic == 2:
                    self.leader_epoch = batch.leader_epoch
                    if read_committed and batch.has_producer_id():
                        self._consume_aborted_transactions_up_to(batch.last_offset)
                        producer_id = batch.producer_id
                        if self._contains_abort_marker(batch):
                            self.aborted_producer_ids.discard(producer_id)
                        elif self._is_batch_aborted(batch):
                            self.next_fetch_offset = batch.next_offset
                            batch = records.next_batch()
                            continue
                    if batch.is_control_batch:
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                    batch._maybe_uncompress()  # kafka-python 3.0.12's own step, as __iter__ does
                    buf = bytes(batch._buffer)
                    start, count, base = batch._pos, batch.records_count, batch.base_offset
                    deltas = batch.timestamp_type != batch.LOG_APPEND_TIME
                    ts = batch.first_timestamp if deltas else batch.max_timestamp
                    if _NativeRecords is not None:
                        native = _NativeRecords(
                            self, buf, start, count, base, LeanRecord, ts, deltas
                        )
                        yield from native
                        start, count = native.pos, count - native.done
                    yield from _v2_records(self, buf, start, count, base, ts, deltas)
                else:
                    for legacy in batch:
                        if self.check_crcs and not legacy.validate_crc():
                            raise CorruptRecordError(
                                f"Record for partition {self.topic_partition} at offset "
                                f"{legacy.offset} failed crc check"
                            )
                        self.records_read += 1
                        self.bytes_read += legacy.size_in_bytes
                        self.next_fetch_offset = legacy.offset + 1
                        stamp = legacy.timestamp
                        yield LeanRecord(
                            legacy.offset, legacy.key, legacy.value, -1 if stamp is None else stamp
                        )
                batch = records.next_batch()
            else:
                # As kafka-python: a v2 batch keeps its last offset even when compaction
                # removed its last records, so the next fetch starts after the batch.
                if last_batch is not None and last_batch.magic == 2:
                    self.next_fetch_offset = last_batch.next_offset
                self.drain()
        except StopIteration:
            log.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset") from None


_refused: weakref.WeakSet[Any] = weakref.WeakSet()  # consumers already warned about


def uses_lean_records(consumer: Any) -> bool:
    """Whether ``consumer``'s fetcher makes :class:`LeanRecord` objects."""
    fetcher = getattr(consumer, "_fetcher", None)
    return fetcher is not None and vars(fetcher).get("PartitionRecords") is LeanPartitionRecords


def use_lean_records(consumer: Any) -> bool:
    """Make ``consumer``'s polls return :class:`LeanRecord` lists; False (and a warning) if refused.

    Call it before the first poll (records fetched before keep their type); calling it again is
    cheap and warns once per consumer. Only this consumer changes: the fetcher's ``PartitionRecords``
    is set on the fetcher instance. Refused for a kafka-python other than
    :data:`SUPPORTED_KAFKA_PYTHON`, and for consumers with key or value deserializers; the
    consumer then keeps kafka-python's ``ConsumerRecord`` (which has the same ``offset``,
    ``key``, ``value`` and ``timestamp`` attributes).
    """
    if uses_lean_records(consumer):
        return True
    if consumer in _refused:
        return False
    version = getattr(kafka, "__version__", "?")
    fetcher = getattr(consumer, "_fetcher", None)
    reason = None
    if version not in SUPPORTED_KAFKA_PYTHON:
        reason = f"kafka-python {version} (written for {sorted(SUPPORTED_KAFKA_PYTHON)})"
    elif fetcher is None or getattr(fetcher, "PartitionRecords", None) is not (
        Fetcher.PartitionRecords
    ):
        reason = "the consumer has no stock kafka-python fetcher"
    elif consumer.config.get("key_deserializer") or consumer.config.get("value_deserializer"):
        reason = "the consumer has key or value deserializers"
    if reason is not None:
        log.warning("lean consumer records off: %s; using kafka-python's own records", reason)
        with contextlib.suppress(TypeError):  # an object without weak references warns again
            _refused.add(consumer)
        return False
    cast(Any, fetcher).PartitionRecords = LeanPartitionRecords
    return True
