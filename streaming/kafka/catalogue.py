"""Following the catalogue topic into an in-memory :class:`streaming.core.catalogue.Catalogue`.

The topic is compacted and keyed by track id: reading it from the beginning gives the newest
record of every track (and recent tombstones), and following it gives every change after. The
follower owns its consumer (no group: every reader reads the whole topic) and is polled from one
thread; readers of the catalogue never wait for it (see ``streaming.core.catalogue``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from streaming.config import Config
from streaming.core.catalogue import Catalogue, decode_tracks
from streaming.kafka.clients import TopicPartition, make_consumer

__all__ = ["CatalogueFollower", "MissingCatalogueError", "read_catalogue"]

log = logging.getLogger(__name__)


class MissingCatalogueError(RuntimeError):
    """The catalogue topic does not exist."""


class CatalogueFollower:
    """Reads ``topics.catalogue`` from its beginning into ``catalogue``, then follows it.

    Args:
        config: topic name, Kafka settings and ``events.d_track`` (the features per track).
        servers: bootstrap servers.
        catalogue: where the records go (a new one of ``events.d_track`` when None).
    """

    def __init__(self, config: Config, servers: str, catalogue: Catalogue | None = None) -> None:
        self.topic = config.topics.catalogue
        self.catalogue = Catalogue(config.events.d_track) if catalogue is None else catalogue
        self.counts: Counter[str] = Counter()
        self.consumer: Any = make_consumer(
            config.kafka, servers, group_id=None, enable_auto_commit=False
        )
        parts = self.consumer.partitions_for_topic(self.topic)
        if not parts:
            self.consumer.close(autocommit=False)
            raise MissingCatalogueError(
                f"the catalogue topic {self.topic!r} does not exist on {servers}: create it "
                "first (`encore topics create`)"
            )
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self._end: dict[Any, int] = dict(self.consumer.end_offsets(self.partitions))
        self.max_norm = config.events.max_feature_norm
        self._caught_up = threading.Event()
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if not self._caught_up.is_set() and all(
            self.consumer.position(tp) >= end for tp, end in self._end.items()
        ):
            self._caught_up.set()

    def poll(self, timeout_ms: int = 0, max_records: int = 20_000) -> int:
        """Apply what the topic has (at most ``max_records`` records); how many were read.

        Only the thread that polls may call this (the consumer is not thread-safe). When the
        catalogue cannot take a batch, the consumer goes back to the batch's first records, so
        the next poll reads them again.
        """
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = [(r.key, r.value) for part in polled.values() for r in part]
        if records:
            batch, refused = decode_tracks(records, self.catalogue.d_track, self.max_norm)
            try:
                self.catalogue.apply(batch)
            except BaseException:
                for tp, part in polled.items():
                    self.consumer.seek(tp, part[0].offset)
                raise
            for _, reason in refused[:3]:
                log.warning("catalogue record refused: %s", reason)
            self.counts["refused"] += len(refused)
            self.counts["records"] += len(records)
        self._check_caught_up()
        return len(records)

    @property
    def caught_up(self) -> bool:
        """Whether the topic has been read up to where it ended when the follower started (a
        flag the polling thread sets: any thread may read it)."""
        return self._caught_up.is_set()

    def catch_up(self, timeout_s: float) -> bool:
        """Poll until caught up (True) or ``timeout_s`` has passed (False)."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(timeout_ms=int(min(200, left * 1000)) + 1)
        return True

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def read_catalogue(config: Config, servers: str, timeout_s: float = 60.0) -> Catalogue:
    """The whole catalogue as the topic holds it now.

    Raises:
        MissingCatalogueError: no catalogue topic.
        TimeoutError: the topic could not be read to its end within ``timeout_s``.
    """
    follower = CatalogueFollower(config, servers)
    try:
        if not follower.catch_up(timeout_s):
            raise TimeoutError(f"reading {follower.topic!r} took longer than {timeout_s} s")
        return follower.catalogue
    finally:
        follower.close()
