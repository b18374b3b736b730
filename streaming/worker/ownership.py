"""What one worker owns of the partitions, and how they move: the records it publishes, the
partitions it takes over, and what it reconciles before joining its group.

``streaming.worker.handoff`` holds the rules (what a partition record is, whose record a new owner
installs) and ``streaming.worker.handoff_topic`` the Kafka I/O; this object applies them to one
worker: it publishes the records of the partitions its state holds with every checkpoint, takes
over the newest record of each partition it is assigned, and, before the worker joins its group,
makes what the group sees of its partitions agree with the checkpoint it resumes from. The
daemon's rebalance callbacks and its start call it; it changes no state of its own but the
clients it reads and writes with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streaming.config import Config
from streaming.core import WorkerState
from streaming.kafka.clients import HANDOFF_MAX_BYTES, TopicPartition, make_consumer
from streaming.worker import handoff
from streaming.worker import handoff_topic as topic_io
from streaming.worker.connections import Connections, open_records
from streaming.worker.stats import Stats

log = logging.getLogger(__name__)

__all__ = ["Lineage", "Ownership"]

Lineage = tuple[str, int]
"""A worker's lineage and one of its checkpoint sequences."""


class Ownership:
    """The partition records of one worker (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        servers: str,
        links: Connections,
        stats: Stats,
        clock: Callable[[], int],
        token: str,
    ) -> None:
        self.config = config
        self.servers = servers
        self.links = links
        self.stats = stats
        self.clock = clock
        self.token = token
        self.topic_partitions: list[int] = [0]  # the handoff topic's own partitions

    @property
    def pair(self) -> tuple[str, str]:
        """The co-partitioned impressions and outcomes topics, whose partitions move."""
        return (self.config.topics.impressions, self.config.topics.outcomes)

    @property
    def worker_id(self) -> str:
        return self.config.scale.worker_id or self.config.kafka.client_id

    @property
    def transactional_id(self) -> str:
        """The records producer's: the group and the worker's token, the same on every restart."""
        return f"encore-{self.config.kafka.group_id}-{self.token}"

    def numbers(self, tps: Iterable[TopicPartition]) -> set[int]:
        """The partition numbers of ``tps`` on the impressions and outcomes topics."""
        pair = self.pair
        return {tp.partition for tp in tps if tp.topic in pair}

    def held(self, state: WorkerState) -> set[int]:
        """Partition numbers ``state`` holds anything of (windows or offsets)."""
        pair = self.pair
        return set(state.join) | {p for t, p in state.offsets if t in pair}

    def record(self, state: WorkerState, p: int, at: Lineage) -> handoff.PartitionRecord:
        """Partition ``p`` of ``state``, written with checkpoint ``at`` of its lineage."""
        return handoff.extract(state, p, self.pair, self.worker_id, lineage=at[0], sequence=at[1])

    # ------------------------------------------------------------------ clients
    def open_reader(self) -> None:
        """Open the handoff topic's reader (reads committed records only) if none was given."""
        topic = self.config.topics.handoff
        if self.links.handoff_reader is None:
            self.links.handoff_reader = make_consumer(
                self.config.kafka,
                self.servers,
                group_id=None,
                max_partition_fetch_bytes=HANDOFF_MAX_BYTES + 1024 * 1024,
                isolation_level="read_committed",  # all of a checkpoint's records, or none
            )
        reader = self.links.handoff_reader
        self.topic_partitions = sorted(reader.partitions_for_topic(topic) or {0})
        reader.assign([TopicPartition(topic, q) for q in self.topic_partitions])

    def _reopen_records(self) -> Any:
        old, self.links.records = self.links.records, None
        if old is not None:
            try:
                old.close(timeout=5)
            except Exception as exc:  # a fenced producer may refuse to close cleanly
                log.debug("closing the fenced records producer: %s", exc)
        self.links.records = open_records(self.config, self.servers, self.transactional_id)
        return self.links.records

    # ------------------------------------------------------------------ publish and read
    def publish(self, state: WorkerState, partitions: Iterable[int], at: Lineage) -> int:
        """Publish the records of ``partitions`` (written with checkpoint ``at``); returns how
        many, once they are durable: in one transaction with the records producer, else with the
        state producer (a worker built on fakes)."""
        records = (self.record(state, p, at) for p in sorted(partitions))
        group, topic = self.config.kafka.group_id, self.config.topics.handoff
        if self.links.records is not None:
            sent = topic_io.publish(
                self.links.records, topic, group, records, self.clock(), reopen=self._reopen_records
            )
        else:
            sent = topic_io.publish(self.links.state, topic, group, records, self.clock())
        self.stats.handoffs_published += sent
        return sent

    def read(
        self, partitions: Iterable[int], timeout_s: float = 60.0
    ) -> dict[int, handoff.PartitionRecord]:
        """The newest published record of each of ``partitions`` (damaged ones are logged, skipped)."""
        return topic_io.read_newest(
            self.links.handoff_reader,
            self.config.topics.handoff,
            self.topic_partitions,
            self.config.kafka.group_id,
            partitions,
            timeout_s,
        )

    def committed(self, consumer: Any, numbers: Iterable[int]) -> dict[int, handoff.Commit]:
        """Each partition's committed group offsets, with the checkpoint they name."""
        return topic_io.committed(consumer, self.pair, numbers)

    # ------------------------------------------------------------------ assignment
    def take_over(
        self, state: WorkerState, numbers: set[int], consumer: Any, durable: Lineage
    ) -> tuple[handoff.TakeOver, dict[int, handoff.PartitionRecord], dict[int, handoff.Commit]]:
        """Keep, take over or start each of ``numbers`` (the new assignment), drop the others,
        and say so; also returns the records and commits it decided from."""
        published = self.read(numbers)
        committed = self.committed(consumer, numbers)
        taken = handoff.take_over(
            state,
            numbers,
            self.held(state),
            published,
            committed,
            self.pair,
            self.worker_id,
            durable=durable,
        )
        for record in taken.installed:
            log.info(
                "took over partition %d from %s at offsets %s",
                record.partition,
                record.worker,
                record.offsets,
            )
        for p, record, floor in taken.fresh:
            log.warning(
                "partition %d: the newest handed-off state %s is behind the committed "
                "offsets %s (its owner stopped between a checkpoint and its handoff); "
                "starting fresh there: its open windows are lost",
                p,
                record.offsets if record is not None else None,
                floor,
            )
        self.stats.handoffs_installed += len(taken.installed)
        self.stats.partitions_started_fresh += len(taken.fresh)
        return taken, published, committed

    # ------------------------------------------------------------------ before joining
    def fallback_needed(
        self,
        state: WorkerState,
        at: Lineage,
        published: Mapping[int, handoff.PartitionRecord],
        delta_published: bool,
    ) -> list[int]:
        """With shared statistics: the partitions that make the worker resume from the
        checkpoint before ``at`` (none: ``at`` stands).

        Records go out before the delta, so a published delta means published records. A
        record of ``at`` on the topic says all its records reached it (one transaction): a
        partition taken over since was taken from one of them, and falling back would lose what
        the checkpoint had learned there. None of them there, and a partition taken by another
        worker was taken from an older record: its new owner closes that interval's windows
        again, so what ``at`` learned of them (its sealed delta) and what it holds of them (the
        feedback still queued for the policy, the closed counts) would count twice, whether or
        not ``at`` sealed a delta.
        """
        if state.outbox is not None and delta_published:
            return []
        held = self.held(state)
        if any(
            published[p].lineage == at[0] and published[p].sequence == at[1]
            for p in held
            if p in published
        ):
            return []
        return sorted(p for p in held if p in published and published[p].lineage != at[0])

    def reconcile(
        self,
        state: WorkerState,
        at: Lineage,
        durable_seq: int,
        *,
        share_deltas: bool,
        delta_published: Callable[[str, int], bool],
        earlier: Callable[[int], tuple[WorkerState, int] | None],
        fell_back: bool = False,
    ) -> tuple[WorkerState, int, int]:
        """Make what the group sees of this worker's partitions agree with the state it resumes
        from (``at``: its lineage and checkpoint); returns the state, its checkpoint (older
        after a fallback) and the number of records published.

        - Records or commits this lineage made after a checkpoint newer than ``durable_seq``
          (damaged or lost since) are void: the state's records replace them, and the events
          between are read again (counted in ``events_reread``).
        - Records of ``at`` that never reached the topic (a stop between the checkpoint and its
          records) are published, unless ``fallback_needed``: then the worker resumes from
          ``earlier(at[1])`` (the checkpoint before, with its sequence) instead; at most once
          (``fell_back``): the records of a checkpoint reach the topic before the next one is
          written.
        """
        held = self.held(state)
        if not held:
            return state, at[1], 0
        published = self.read(held)
        kc = self.config.kafka
        probe = make_consumer(kc, self.servers, group_id=kc.group_id)  # reads, never joins
        try:
            committed = self.committed(probe, held)
        finally:
            probe.close(autocommit=False)
        if share_deltas and not fell_back:
            taken = self.fallback_needed(
                state, at, published, delta_published(at[0], state.delta_seq)
            )
            older = earlier(at[1]) if taken else None
            if older is not None:
                log.warning(
                    "checkpoint %d's partition records never reached %s and partitions %s were "
                    "taken over from older ones: resuming from checkpoint %d instead, so what it "
                    "learned there is not counted twice",
                    at[1],
                    self.config.topics.handoff,
                    taken,
                    older[1],
                )
                return self.reconcile(
                    older[0],
                    (at[0], older[1]),
                    older[1],
                    share_deltas=share_deltas,
                    delta_published=delta_published,
                    earlier=earlier,
                    fell_back=True,
                )
        durable = (at[0], durable_seq)
        mine = {p: self.record(state, p, at) for p in held}
        lost = handoff.lost_offsets(held, published, committed, durable)
        if lost:
            again = sum(
                max(0, far - now)
                for p, fars in lost.items()
                for far, now in zip(fars, mine[p].offsets, strict=True)
            )
            log.warning(
                "resuming from checkpoint %d, the newest in %s that verifies; a later one had "
                "reached partitions %s further and is damaged or missing: reading again the %d "
                "events it had learned",
                at[1],
                self.config.checkpoint.dir,
                sorted(lost),
                again,
            )
            state = state._replace(
                counters={
                    **state.counters,
                    "events_reread": state.counters.get("events_reread", 0) + again,
                }
            )
            if share_deltas:
                log.error(
                    "with shared statistics, the deltas this worker published from the lost "
                    "checkpoint stay folded in by the other workers: those %d events count twice "
                    "in the group's policy",
                    again,
                )
        publish = {
            p
            for p in held
            if p not in published
            or p in lost
            or handoff.newer(mine[p].offsets, published[p].offsets)
        }
        return state, at[1], self.publish(state, publish, at) if publish else 0
