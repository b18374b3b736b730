"""A worker's Kafka clients: the source of its records and the sinks of what it writes.

- ``source``: the group consumer of the impressions and outcomes topics (opened by the daemon,
  which owns the rebalance listener);
- ``side``: the side producer (dead letters, late rows, joined records);
- ``state``: the state producer (deltas, snapshots), one request in flight so each key's records
  land in the order sent;
- ``records``: the transactional producer of partition records: a checkpoint's records reach the
  handoff topic all together or not at all (``streaming.worker.handoff_topic``);
- ``handoff_reader`` and ``delta_reader``: consumers outside the group that read the handoff
  and delta topics;
- ``group``: describes the worker's consumer group (who else is in it,
  ``streaming.worker.membership``); asked before the source is opened and at each assignment.

Whatever is given when the worker is built is used as it is (tests pass fakes here); whatever is
None is opened from the configuration when the worker opens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streaming.config import Config
from streaming.kafka.clients import (
    HANDOFF_MAX_BYTES,
    KafkaTimeoutError,
    make_producer,
    max_message_bytes,
    topic_specs,
)
from streaming.worker.outbound import Counts, Outbound

__all__ = [
    "RECORDS_TRANSACTION_MS",
    "SEND_BLOCK_MS",
    "SIDE_REQUEST_BYTES",
    "STATE_REQUEST_BYTES",
    "Connections",
    "open_records",
]

log = logging.getLogger(__name__)

SIDE_REQUEST_BYTES = 4 * 1024 * 1024  # the side producer's max_request_size
STATE_REQUEST_BYTES = HANDOFF_MAX_BYTES + 1024 * 1024  # the state producer's (handoff records)
# The longest a send waits for a topic's metadata; past it the record waits in the outbound
# queue for the broker (streaming.worker.outbound), so a send never blocks the loop for
# kafka-python's default of 60 s.
SEND_BLOCK_MS = 5_000
# How long the broker keeps a records transaction open before it aborts it: a worker killed in
# the middle of one holds back every reader of the handoff topic until then (or until it is back).
RECORDS_TRANSACTION_MS = 20_000


@dataclass
class Connections:
    """The worker's clients; see the module's docstring for each one's job."""

    source: Any = None
    side: Any = None
    state: Any = None
    records: Any = None
    handoff_reader: Any = None
    delta_reader: Any = None
    group: Callable[[], Mapping[str, Any]] | None = None

    def open_sinks(self, config: Config, servers: str, transactional_id: str = "") -> None:
        """Open the producers not given: the side and state ones, each wrapped in an ``Outbound``,
        and, with ``transactional_id``, the records producer (``open_records``).

        Neither the side nor the state producer is idempotent: an idempotent kafka-python
        producer that has one record refused fails every record after it, and these records may
        arrive twice anyway (keyed; readers keep the newest or one per key). Each topic's limit is read from the broker, else what
        ``topic_specs`` creates it with, else ``kafka.side_max_message_bytes``. Both count
        refusals in one ``Counts``, against one limit.
        """
        if self.side is not None and self.state is not None:
            return
        if transactional_id and self.records is None:
            self.records = open_records(config, servers, transactional_id)
        kc, t = config.kafka, config.topics
        names = [t.dlq, t.late, t.joined, t.snapshots, t.deltas, t.handoff]
        created = {
            name: int(spec["configs"]["max.message.bytes"])
            for name, spec in topic_specs(t).items()
            if "max.message.bytes" in spec.get("configs", {})
        }
        topic_bytes = {**created, **max_message_bytes(kc, servers, names)}
        counts = next(
            (o.counts for o in (self.side, self.state) if isinstance(o, Outbound)), Counts()
        )
        common: dict[str, Any] = {
            "topic_bytes": topic_bytes,
            "default_topic_bytes": kc.side_max_message_bytes,
            "max_refused": kc.side_max_refused,
            "counts": counts,
        }
        if self.side is None:
            self.side = Outbound(
                make_producer(
                    kc,
                    servers,
                    max_request_size=SIDE_REQUEST_BYTES,
                    enable_idempotence=False,
                    max_block_ms=SEND_BLOCK_MS,
                ),
                name="side outputs",
                max_request_bytes=SIDE_REQUEST_BYTES,
                **common,
            )
        if self.state is None:
            self.state = Outbound(
                make_producer(
                    kc,
                    servers,
                    client_id=f"{kc.client_id}-handoff",
                    max_request_size=STATE_REQUEST_BYTES,
                    linger_ms=0,
                    enable_idempotence=False,
                    max_in_flight_requests_per_connection=1,
                    max_block_ms=SEND_BLOCK_MS,
                ),
                name="state outputs",
                max_request_bytes=STATE_REQUEST_BYTES,
                **common,
            )

    def close(self) -> None:
        """Flush and close the producers, close the readers (the source is the daemon's to close:
        closing it runs the revocation's checkpoint and handoff)."""
        for producer in (self.side, self.state, self.records):
            if producer is not None:
                producer.flush(timeout=10)
                producer.close(timeout=10)
        for consumer in (self.delta_reader, self.handoff_reader):
            if consumer is not None:
                consumer.close(autocommit=False)
        self.side = self.state = self.records = self.handoff_reader = self.delta_reader = None


def open_records(config: Config, servers: str, transactional_id: str) -> Any:
    """The transactional producer of partition records, its transactions initialised.

    ``transactional_id`` is the same on every restart of a worker (its group and token): the
    initialisation aborts whatever transaction a killed run of it left open, and fences that run
    off should it still be alive. While no broker answers, it waits (warning every 30 s).
    """
    kc = config.kafka
    producer = make_producer(
        kc,
        servers,
        client_id=f"{kc.client_id}-records",
        max_request_size=STATE_REQUEST_BYTES,
        linger_ms=0,
        enable_idempotence=True,
        transactional_id=transactional_id,
        transaction_timeout_ms=RECORDS_TRANSACTION_MS,
        max_block_ms=SEND_BLOCK_MS,
    )
    tries = 0
    while True:
        tries += 1
        try:
            producer.init_transactions()
            return producer
        except KafkaTimeoutError:  # retrying goes on waiting for the same request
            if tries % 6 == 0:
                log.warning(
                    "waiting %d s for the broker to initialise the transactions of %s",
                    tries * SEND_BLOCK_MS // 1000,
                    transactional_id,
                )
