"""Shared statistics between the workers of one group: sealed deltas out, the others' deltas in.

The wire format and its checks are :mod:`streaming.worker.deltas`; this module is the exchange:
``publish`` sends the worker's sealed delta with the state producer and forgets it once the
broker has it, ``absorb`` folds in the deltas of the other workers not folded in before, and
``published`` reads the deltas topic to its end to tell whether a delta of this worker's lineage
reached it. Each takes the worker's state and returns the new one; the daemon holds the state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from streaming.config import Config
from streaming.core import Engine, WorkerState, merge_delta
from streaming.kafka.clients import TopicPartition, make_consumer
from streaming.worker import deltas
from streaming.worker.connections import Connections
from streaming.worker.outbound import Outbound
from streaming.worker.stats import Stats

__all__ = ["DeltaSharing", "Lineage"]

log = logging.getLogger(__name__)

Lineage = tuple[str, int]  # (lineage id, when it was born in wall-clock ms)


class DeltaSharing:
    """One worker's side of the delta exchange."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        servers: str,
        links: Connections,
        stats: Stats,
        clock: Callable[[], int],
    ) -> None:
        self.config = config
        self.engine = engine
        self.servers = servers
        self.links = links
        self.stats = stats
        self.clock = clock

    @property
    def worker_id(self) -> str:
        return self.config.scale.worker_id or self.config.kafka.client_id

    def publish(self, state: WorkerState, lineage: Lineage) -> WorkerState:
        """Send the sealed delta (if any) and forget it once the broker has it.

        Sent by the state producer, which waits out a broker outage however long. A delta the
        broker refuses (one over the topic's max.message.bytes, say) stays sealed in the state,
        is sent again after the next checkpoint, and counts toward ``kafka.side_max_refused``.
        """
        out = self.links.state
        if state.outbox is None or out is None:
            return state
        spec = self.engine.policy.spec
        value = deltas.encode(
            self.worker_id,
            state.delta_seq,
            spec.name,
            spec.version,
            state.outbox,
            lineage[0],
            self.clock(),
        )
        sent = out.send(self.config.topics.deltas, key=self.worker_id.encode(), value=value)
        out.flush()
        if isinstance(out, Outbound) and sent.state != "acked":
            return state  # refused: logged and counted by the outbound; sent again next time
        self.stats.deltas_published += 1
        return state._replace(outbox=None)

    def absorb(
        self, state: WorkerState, lineage: Lineage, values: Iterable[bytes]
    ) -> tuple[WorkerState, int]:
        """Fold in other workers' deltas not folded in before; returns how many were."""
        folded = 0
        spec = self.engine.policy.spec
        for value in values:
            try:
                d = deltas.decode(value)
            except ValueError as exc:
                log.warning("skipping a malformed delta: %s", exc)
                continue
            deltas.check_own(d, self.worker_id, *lineage, self.config.topics.deltas)
            if d.worker == self.worker_id or d.seq <= state.seen.get(d.worker, 0):
                continue
            if (d.policy, d.version) != (spec.name, spec.version):
                log.warning("skipping a delta of policy %s v%d", d.policy, d.version)
                continue
            state = state._replace(
                policy=merge_delta(state.policy, d.stats), seen={**state.seen, d.worker: d.seq}
            )
            folded += 1
        self.stats.deltas_merged += folded
        return state, folded

    def poll(self, state: WorkerState, lineage: Lineage) -> tuple[WorkerState, int]:
        """Absorb what the delta reader has (without waiting)."""
        reader: Any = self.links.delta_reader
        if reader is None:
            return state, 0
        polled = reader.poll(timeout_ms=0, max_records=1000)
        return self.absorb(
            state, lineage, (r.value for rs in polled.values() for r in rs if r.value)
        )

    def published(self, lineage_id: str, seq: int) -> bool:
        """Whether this lineage's delta ``seq`` is on the deltas topic (read to its end)."""
        topic = self.config.topics.deltas
        reader = make_consumer(self.config.kafka, self.servers, group_id=None)
        try:
            tps = [
                TopicPartition(topic, q) for q in sorted(reader.partitions_for_topic(topic) or {0})
            ]
            reader.assign(tps)
            reader.seek_to_beginning(*tps)
            ends = reader.end_offsets(tps)
            deadline = time.monotonic() + 60
            while any((reader.position(tp) or 0) < ends[tp] for tp in tps):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} to its end")
                for records in reader.poll(timeout_ms=200).values():
                    for r in records:
                        try:
                            d = deltas.decode(r.value)
                        except ValueError:
                            continue
                        if (d.worker, d.lineage, d.seq) == (self.worker_id, lineage_id, seq):
                            return True
            return False
        finally:
            reader.close(autocommit=False)
