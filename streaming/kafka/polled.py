"""One poll's records of one topic, by partition: values in order, and where each came from."""

from __future__ import annotations

import itertools
import operator
from typing import Any

import numpy as np
import numpy.typing as npt

from streaming.events import Reject

__all__ = ["Polled", "good_partitions"]

_TIMESTAMP = operator.attrgetter("timestamp")


class Polled:
    """One topic's records of a poll, by partition, without a Python object per record."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.partitions: list[int] = []
        self.records: list[list[Any]] = []
        self.n = 0

    def add(self, partition: int, records: list[Any]) -> None:
        self.partitions.append(partition)
        self.records.append(records)
        self.n += len(records)

    def values(self) -> list[bytes]:
        """Every record's value in order (a null value as empty bytes: it is rejected as such)."""
        return [r.value or b"" for records in self.records for r in records]

    def timestamps(self) -> npt.NDArray[np.int64]:
        """Every record's Kafka timestamp in order, ms (-1 where a record has none).

        Lean records and kafka-python's ``ConsumerRecord`` both have ``timestamp``; a legacy
        v0 message's is None there, and a record type without the attribute has none.
        """
        stamps = map(_TIMESTAMP, itertools.chain.from_iterable(self.records))
        try:
            return np.fromiter(stamps, np.int64, count=self.n)
        except (TypeError, AttributeError):  # a None among them, or records without one
            each = (getattr(r, "timestamp", None) for r in itertools.chain(*self.records))
            return np.fromiter((-1 if t is None else t for t in each), np.int64, count=self.n)

    def partition_of_each(self) -> npt.NDArray[np.int32]:
        counts = [len(records) for records in self.records]
        return np.repeat(np.asarray(self.partitions, np.int32), counts)

    def source(self, row: int) -> tuple[str, int, int]:
        """``(topic, partition, offset)`` of the ``row``-th value."""
        for partition, records in zip(self.partitions, self.records, strict=True):
            if row < len(records):
                return self.topic, partition, int(records[row].offset)
            row -= len(records)
        raise IndexError(f"row {row} is past the {self.n} records polled from {self.topic}")


def good_partitions(where: Polled, rejects: list[Reject]) -> npt.NDArray[np.int32]:
    """The partition of every message that decoded, in order (rejects removed)."""
    part = where.partition_of_each()
    if rejects:
        part = np.delete(part, [r.row for r in rejects])
    return part
