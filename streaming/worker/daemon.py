"""The imperative shell around ``step``: poll, decode, step, emit, checkpoint, publish.

Why one long module: the daemon is where the order of effects is decided (poll, step, emit,
checkpoint, hand off, commit, the rebalance callbacks), and that order is its correctness; it is
kept in one class so it reads top to bottom. What stands alone lives beside it: the clients
(``connections``), the timers (``schedule``), the delta exchange (``sharing``), the partition
records (``handoff``, ``handoff_topic``), the broker and group watches (``liveness``), the
alignment (``pausing``) and the counts (``stats``).

``Daemon.run`` loops until ``stop`` is set: poll (never longer than ``poll_timeout_ms``) ->
decode to columns (malformed messages to the dead-letter topic, with the reason, the original
bytes and where they came from) -> ``step`` -> late rows to the late topic -> checkpoint when due
(state and offsets together, atomically; then the offsets are committed to Kafka so lag shows in
the usual tools) -> snapshot when due. On start it loads the newest good checkpoint and seeks every
assigned partition to the offset stored with it, so a kill at any instant replays exactly the
events the state has not yet seen. Signal handlers only set ``stop``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bandits import linear, save
from streaming import join
from streaming.config import Config
from streaming.core import (
    WorkerState,
    from_arrays,
    init,
    join_counters,
    limits,
    make_engine,
    step,
    to_arrays,
    warm_up,
    zero_delta,
)
from streaming.events import Reject, key64
from streaming.events.process import Decoded, Decoding
from streaming.kafka.clients import (
    UNREACHABLE,
    OffsetAndMetadata,
    TopicPartition,
    client_state,
    describe_group,
    group_line,
    make_consumer,
    member_id,
    partitions_of,
    passing,
    reachable,
    rejoin,
    serve_parked,
    use_lean_records,
)
from streaming.kafka.polled import Polled, good_partitions
from streaming.kafka.rebalance import OffLoopListener
from streaming.worker import checkpoint, handoff, side_topics
from streaming.worker.compile_cache import restore_compilation_cache, use_compilation_cache
from streaming.worker.connections import Connections
from streaming.worker.gc_tuning import quiet_gc
from streaming.worker.liveness import BrokerAway, GroupWatch
from streaming.worker.lock import DirLock
from streaming.worker.membership import GroupSharedError, refusal, strangers, worker_token
from streaming.worker.metrics import (
    Metrics,
    MetricsServer,
    process_fields,
    register,
    status_path,
    unregister,
    write_status,
)
from streaming.worker.outbound import Outbound, SideOutputRefusedError
from streaming.worker.ownership import Ownership
from streaming.worker.parquet_log import (
    PLAYS_DIR,
    BackgroundLog,
    LogWriteError,
    ParquetLog,
    plays_table,
)
from streaming.worker.pausing import Aligner
from streaming.worker.schedule import Schedule
from streaming.worker.sharing import DeltaSharing
from streaming.worker.stats import Stats, metrics_snapshot

log = logging.getLogger(__name__)

Clock = Callable[[], int]
FORMAT = "encore.worker/1"
AWAY_WARN_EVERY_S = 30.0  # at most one warning per this long while the broker does not answer


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """Milliseconds on a clock that never steps (intervals; not a date)."""
    return time.monotonic_ns() // 1_000_000


@dataclass
class _Batch:
    """One poll's records, by topic, and the offset after each partition's last record."""

    impressions: Polled
    outcomes: Polled
    offsets: dict[tuple[str, int], int]


class Daemon:
    """One worker of the consumer group. Build it, then call ``run(stop)``."""

    def __init__(
        self,
        config: Config,
        *,
        servers: str,
        clock: Clock = wall_clock_ms,
        ticks: Clock = monotonic_ms,
        policy_names: Iterable[str] = (),
        connections: Connections | None = None,
    ) -> None:
        """Args:
        config: the worker's configuration.
        servers: the Kafka bootstrap servers.
        clock: wall-clock ms (dates: stats, checkpoint headers, handoff records, status).
        ticks: monotonic ms (intervals: schedules, stall and idle detection, alignment).
        policy_names: logging policies' names, to report rewards by name, not by key.
        connections: the Kafka clients to use; any left None is opened by ``open`` from
            the configuration (tests pass a fake source and fake sinks here).
        """
        self.config = config
        self.servers = servers
        self.clock = clock  # dates: stats, checkpoint headers, handoff records, status
        self.ticks = ticks  # intervals: the loop's schedules, stall and idle detection, alignment
        self.engine = make_engine(config)
        self._shared_warned = 0.0  # the share of tracks in shared slots last warned of
        self._shared: tuple[Any, int] = (None, 0)  # (state.tracks, how many share a slot)
        self.limits = limits(config)
        self.ckpt_dir = Path(config.checkpoint.dir)
        self.lineage = (
            ""  # this worker's lineage (streaming.worker.deltas), set with the state below
        )
        self.lineage_born_ms = 0  # when it was drawn (wall clock)
        self.ckpt_seq = 0  # the checkpoint the state was loaded from or last written as
        self.durable_seq = 0  # the newest checkpoint of this lineage whose learning survives
        self._delivered = False  # a poll returned records since the last lag refresh
        self._lag_unknown = ""  # why the last lag refresh failed ("": it did not)
        self.away = BrokerAway(servers, warn_every_s=AWAY_WARN_EVERY_S)
        self._away_refreshed = 0  # when the loop last refreshed the metrics while it was away
        # held from before the state is read until close: one worker per checkpoint directory
        self._ckpt_lock = DirLock(self.ckpt_dir / "LOCK", f"checkpoint.dir {self.ckpt_dir}")
        self.state: WorkerState = self._lock_and_load()
        self.revoked: set[tuple[str, int]] = set()
        self.stats = Stats(started_ms=clock())
        self._named: set[str] = set(policy_names)
        self._names = {
            int(k): n for k, n in zip(key64(list(policy_names)), policy_names, strict=True)
        }
        self.links = connections if connections is not None else Connections()
        self.token = worker_token(self.ckpt_dir)  # in the group consumer's client id
        self.sharing = DeltaSharing(config, self.engine, servers, self.links, self.stats, clock)
        self.ownership = Ownership(config, servers, self.links, self.stats, clock, self.token)
        self.log: ParquetLog | BackgroundLog | None = None
        if config.log.dir:
            parquet = ParquetLog(
                config.log.dir,
                rows_per_file=config.log.rows_per_file,
                max_file_age_ms=config.log.max_file_age_ms,
                clock=clock,
                writer=config.scale.worker_id or config.kafka.client_id,
            )
            self.log = BackgroundLog(parquet) if config.log.background else parquet
        self.plays_log: ParquetLog | None = None  # the reward model's plays, for its report
        if self.engine.log_predictions:
            self.plays_log = ParquetLog(
                Path(config.log.dir) / PLAYS_DIR,
                rows_per_file=config.log.rows_per_file,
                max_file_age_ms=config.log.max_file_age_ms,
                clock=clock,
                writer=config.scale.worker_id or config.kafka.client_id,
            )
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.metrics_port: int | None = None
        self._compiling: threading.Thread | None = None
        self.watch: GroupWatch | None = None
        self._consumer_since = 0  # when the group consumer was opened
        self._cache_set: tuple[Any, Any] | None = None  # JAX's cache settings before open set them
        t = config.topics
        self.aligner = Aligner(t.impressions, t.outcomes, config.kafka.align_ms)
        # decoding in this process until open() starts the decoding process
        self.decoding = Decoding(self.limits, process=False)
        self._pending: _Batch | None = None  # polled, decoding in the other process, not stepped
        self._ckpt_failed = False  # a checkpoint write failed: the worker is stopping
        self._registered: Path | None = None  # this worker's pointer for `encore status`

    # ------------------------------------------------------------------ clients
    @property
    def consumer(self) -> Any:
        """The group consumer: the source of records."""
        return self.links.source

    @consumer.setter
    def consumer(self, value: Any) -> None:
        self.links.source = value

    @property
    def producer(self) -> Any:
        """The side producer: dead letters, late rows, joined records."""
        return self.links.side

    @property
    def handoff_producer(self) -> Any:
        """The state producer: partition records, deltas, snapshots."""
        return self.links.state

    @property
    def handoff_consumer(self) -> Any:
        return self.links.handoff_reader

    @handoff_consumer.setter
    def handoff_consumer(self, value: Any) -> None:
        self.links.handoff_reader = value

    @property
    def delta_consumer(self) -> Any:
        return self.links.delta_reader

    @delta_consumer.setter
    def delta_consumer(self, value: Any) -> None:
        self.links.delta_reader = value

    # ------------------------------------------------------------------ state
    def _lock_and_load(self) -> WorkerState:
        """Hold the checkpoint directory, then read its state (let go if that is refused)."""
        try:
            self._ckpt_lock.acquire()
        except OSError as exc:  # not creatable, not writable, not a directory
            raise checkpoint.CheckpointWriteError(self.ckpt_dir, exc) from exc
        try:
            return self._load_or_init()
        except BaseException:
            self._ckpt_lock.release()
            raise

    def _load_or_init(self) -> WorkerState:
        found = checkpoint.load_latest(self.ckpt_dir, remove_temps=True)  # the lock is held
        self.ckpt_seq = self.durable_seq = 0 if found is None else int(found[1]["sequence"])
        if found is None:
            self.lineage = os.urandom(
                8
            ).hex()  # this worker's, from now on (streaming.worker.deltas)
            self.lineage_born_ms = self.clock()
            return init(self.engine)
        arrays, header = found
        if header.get("lineage"):
            self.lineage = str(header["lineage"])
            self.lineage_born_ms = int(header.get("lineage_born_ms", 0))
        else:  # a checkpoint from before lineages: the same one on every restart until stored
            where = f"{socket.gethostname()}:{self.ckpt_dir.resolve()}:{self.worker_id}"
            self.lineage = hashlib.sha256(where.encode()).hexdigest()[:16]
            self.lineage_born_ms = 0
        if header.get("format") != FORMAT:
            raise checkpoint.CheckpointError(
                f"{self.ckpt_dir}: checkpoint format {header.get('format')!r} is not {FORMAT!r}"
            )
        spec = header.get("policy_spec", {})
        if spec.get("name") != self.engine.policy.spec.name:
            raise checkpoint.CheckpointError(
                f"{self.ckpt_dir} holds state of policy {spec.get('name')!r}, but the config "
                f"runs {self.engine.policy.spec.name!r}: use another checkpoint.dir"
            )
        state = from_arrays(self.engine, arrays, header["worker"])
        theirs = {t for t, _ in state.offsets}
        if theirs and not theirs & set(self._pair):
            # Its windows and watermarks are those topics' event times: against other topics
            # every event would count as late, and its offsets would never be read again.
            raise checkpoint.CheckpointError(
                f"{self.ckpt_dir} holds the state of topics {', '.join(sorted(theirs))}, but the "
                f"config reads {self._pair[0]} and {self._pair[1]}: use another checkpoint.dir"
            )
        log.info(
            "resumed from checkpoint: %d offsets, counters %s", len(state.offsets), state.counters
        )
        return state

    def write_checkpoint(self) -> Path:
        self._flush_side_outputs()  # the outputs of the events it moves past: at-least-once
        if self.log is not None:
            self.log.flush()  # every record of a closed impression is durable before the state
        if self.plays_log is not None:
            self.plays_log.flush()
        st = self.state
        if st.pending is not None and st.outbox is None and int(st.pending.n) > 0:
            # Seal what was learned since the last delta; it is published once it is durable.
            self.state = st._replace(
                outbox=st.pending, pending=zero_delta(st.policy), delta_seq=st.delta_seq + 1
            )
        arrays, worker = to_arrays(self.engine, self.state)
        header = {
            "format": FORMAT,
            "created_ms": self.clock(),
            "config": self.config.redacted(),
            "policy_spec": {
                "name": self.engine.policy.spec.name,
                "version": self.engine.policy.spec.version,
                "params": dict(self.engine.policy.spec.params),
            },
            "reward": self.engine.composite.to_spec(),
            "reward_model": {
                "name": self.engine.reward_model.spec.name,
                "version": self.engine.reward_model.spec.version,
            },
            "worker": worker,
            "lineage": self.lineage,
            "lineage_born_ms": self.lineage_born_ms,
        }
        try:
            path = checkpoint.write(self.ckpt_dir, arrays, header, keep=self.config.checkpoint.keep)
        except checkpoint.CheckpointWriteError:
            # Nothing after this may act as if the state were durable: no offset commit, no
            # delta, no handoff (a revocation while closing skips its checkpoint and handoff).
            self._ckpt_failed = True
            raise
        self.ckpt_seq = self.durable_seq = checkpoint.sequence_of(path)
        self.stats.checkpoints += 1
        self.stats.last_checkpoint_ms = self.clock()
        # What the group may build on, in this order: every held partition's record (its next
        # owner resumes from it), the sealed delta, then the offsets. Whenever this worker stops,
        # the newest records are at least as far as the committed offsets.
        if self.handoff_producer is not None:
            self.hand_off(self.held_partitions())
        self.publish_outbox()
        if self.consumer is not None and self.state.offsets:
            owned = self.consumer.assignment()
            meta = handoff.commit_metadata(self.lineage, self.ckpt_seq)
            commit = {
                TopicPartition(t, p): OffsetAndMetadata(o, meta, -1)
                for (t, p), o in self.state.offsets.items()
                if TopicPartition(t, p) in owned
            }
            if commit:
                try:
                    self.consumer.commit(commit)
                except Exception as exc:  # the records published above carry the same offsets
                    log.warning("offset commit after checkpoint failed: %s", exc)
        return path

    # ------------------------------------------------------------------ scale-out
    @property
    def worker_id(self) -> str:
        return self.config.scale.worker_id or self.config.kafka.client_id

    def publish_outbox(self) -> None:
        """Send the sealed delta, if any (``DeltaSharing.publish``)."""
        self.state = self.sharing.publish(self.state, (self.lineage, self.lineage_born_ms))

    def absorb_deltas(self, values: Iterable[bytes]) -> int:
        """Fold in other workers' deltas not folded in before; returns how many were."""
        self.state, folded = self.sharing.absorb(
            self.state, (self.lineage, self.lineage_born_ms), values
        )
        return folded

    def poll_deltas(self) -> int:
        self.state, folded = self.sharing.poll(self.state, (self.lineage, self.lineage_born_ms))
        return folded

    # ------------------------------------------------------------------ partition handoff
    @property
    def _pair(self) -> tuple[str, str]:
        return (self.config.topics.impressions, self.config.topics.outcomes)

    def held_partitions(self) -> set[int]:
        """Partition numbers this worker's state holds anything of (windows or offsets)."""
        return self.ownership.held(self.state)

    def hand_off(self, partitions: Iterable[int]) -> int:
        """Publish the state of ``partitions`` to the handoff topic; returns once it is durable."""
        return self.ownership.publish(self.state, partitions, (self.lineage, self.ckpt_seq))

    def on_revoked(self, tps: list[TopicPartition]) -> None:
        """Step the batch in flight, checkpoint, then publish the revoked partitions' windows
        for their next owner."""
        if self._ckpt_failed:  # the state cannot be made durable: learn and hand off nothing
            self._pending = None
            return
        self._drain(align=False)  # polled before the revocation: ours to learn
        self.revoked.update((tp.topic, tp.partition) for tp in tps)
        gone = self.ownership.numbers(tps)
        self._drop_unread({p for p in gone if _unread(self.state.join.get(p))})  # nothing to hand
        numbers = gone & self.held_partitions()
        if not numbers:
            return
        self.write_checkpoint()  # with the records of every held partition, these included
        log.info("handed off partitions %s", sorted(numbers))

    def on_assigned(self, tps: list[TopicPartition]) -> None:
        """Keep, take over or start each assigned partition, drop the others, seek, checkpoint."""
        self._drain(align=False)  # (on_revoked did, unless the client skipped it)
        self._check_group(refuse=False)  # one that joined at the same moment as this one
        self.aligner.assigned(tps)
        before = self.held_partitions()
        durable = (self.lineage, self.durable_seq)
        numbers = self.ownership.numbers(tps)
        taken, published, committed = self.ownership.take_over(
            self.state, numbers, self.consumer, durable
        )
        # Every assigned partition holds the learners' event-time frontier back until it has
        # read both topics: a partition whose first events are still to come would otherwise
        # close windows behind rows the learners already took, in an order that depends on
        # when each partition's first poll came (streaming.core.learners.release_model_rows).
        self.state = taken.state
        changed = self.held_partitions() != before or bool(taken.installed)
        empty = {p: join.init(self.engine.join_config) for p in numbers - set(self.state.join)}
        self.state = self.state._replace(join={**self.state.join, **empty})
        pair = self._pair
        for tp in tps:
            stored = self.state.offsets.get((tp.topic, tp.partition))
            if stored is not None:
                self.consumer.seek(tp, stored)
            elif tp.topic in pair and handoff.read_from_beginning(
                committed.get(tp.partition), published.get(tp.partition), durable
            ):
                # The state never read this topic of the partition and the committed offset is
                # one of a lost checkpoint: read it from its beginning, as that state would.
                self.consumer.seek_to_beginning(tp)
        self.revoked.difference_update((tp.topic, tp.partition) for tp in tps)
        if changed:  # (an empty join alone is nothing to make durable)
            self.write_checkpoint()

    def reconcile(self) -> int:
        """Before joining the group: make what the group sees of this worker's partitions agree
        with the state it resumes from (``Ownership.reconcile``); returns the records published."""
        self.state, seq, sent = self.ownership.reconcile(
            self.state,
            (self.lineage, self.ckpt_seq),
            self.durable_seq,
            share_deltas=self.engine.share_deltas,
            delta_published=self.sharing.published,
            earlier=self._earlier,
        )
        if seq != self.ckpt_seq:
            self.ckpt_seq = self.durable_seq = seq
        return sent

    def _earlier(self, sequence: int) -> tuple[WorkerState, int] | None:
        """The state of this worker's checkpoint before ``sequence``, with its sequence (same
        checks as at start); None: there is none."""
        found = checkpoint.load_latest(self.ckpt_dir, before=sequence)
        if found is None:
            return None
        arrays, header = found
        return from_arrays(self.engine, arrays, header["worker"]), int(header["sequence"])

    def snapshot_bytes(self) -> bytes:
        return save(self.engine.policy, self.state.policy)

    # ------------------------------------------------------------------ loop
    def open(self) -> None:
        if not self._ckpt_lock.held:  # opened again after close: resume as a new worker would
            self.state = self._lock_and_load()
        if self.consumer is None and self.links.group is None:
            kc = self.config.kafka
            self.links.group = lambda: describe_group(kc, self.servers, kc.group_id)
        self._check_group(refuse=True)  # before anything starts: a refusal leaves nothing behind
        self._use_cache()
        topics = self.config.topics
        # started first: the child imports while the clients connect
        self.decoding = Decoding(self.limits, process=self.config.events.decode_process)
        self.links.open_sinks(self.config, self.servers, self.ownership.transactional_id)
        self.ownership.open_reader()
        self.reconcile()
        if self.consumer is None:
            self._open_group_consumer()
        if self.engine.share_deltas and self.delta_consumer is None:
            self.delta_consumer = make_consumer(self.config.kafka, self.servers, group_id=None)
            parts = self.delta_consumer.partitions_for_topic(topics.deltas) or {0}
            tps = [TopicPartition(topics.deltas, p) for p in sorted(parts)]
            self.delta_consumer.assign(tps)
            self.delta_consumer.seek_to_beginning(*tps)
            self.publish_outbox()  # a delta sealed before a crash and maybe never sent
        m = self.config.metrics
        if m.enabled:
            try:
                self.metrics_server, self.metrics_port = self.metrics.serve(m.host, m.port)
                log.info("metrics on http://%s:%d/metrics", m.host, self.metrics_port)
            except OSError as exc:  # a busy port must not stop the learning
                log.warning("no metrics endpoint on %s:%d: %s", m.host, m.port, exc)
        self._registered = register(status_path(self.config))  # `encore status` finds it

    def _check_group(self, *, refuse: bool) -> None:
        """Whether another worker is in the group while scale-out is not configured
        (``streaming.worker.membership``): ``refuse`` raises ``GroupSharedError`` (before
        joining), else a warning names them (at an assignment). A group that cannot be described
        is let be, with a warning."""
        sc = self.config.scale
        if self.links.group is None or sc.share_deltas or sc.independent_workers:
            return
        group_id = self.config.kafka.group_id
        try:
            group = self.links.group()
        except Exception as exc:  # never a reason to stop: the group itself still works
            log.warning(
                "could not describe consumer group %r to see who is in it: %s", group_id, exc
            )
            return
        if group.get("error"):
            log.warning("could not describe consumer group %r: %s", group_id, group["error"])
            return
        others = strangers(group, self.token)
        if not others:
            return
        if refuse:
            raise GroupSharedError(refusal(group_id, others))
        log.warning(
            "another worker joined consumer group %r without shared statistics: %s; this worker "
            "learns from its own partitions only (see scale.share_deltas)",
            group_id,
            "; ".join(str(m) for m in others),
        )

    def _flush_side_outputs(self) -> None:
        """Wait until every dead letter, late row and joined record sent so far is acknowledged
        by the broker (or refused and counted), however long the broker is away.

        ``write_checkpoint`` calls it first: a checkpoint moves the stored offsets past the
        events these records came from, so a crash after it must not lose them. Raises
        ``SideOutputRefusedError`` once more records were refused than allowed (by either
        producer): then no checkpoint is written.
        """
        if isinstance(self.handoff_producer, Outbound):
            self.handoff_producer.poll()
        if isinstance(self.producer, Outbound):
            self.producer.flush()

    def _open_group_consumer(self) -> None:
        """The group's consumer (with the rebalance listener) and its watchdog."""
        pair = [self.config.topics.impressions, self.config.topics.outcomes]
        kc = self.config.kafka
        listener = OffLoopListener(
            self.on_revoked, self.on_assigned, lambda: getattr(self.consumer, "_net", None)
        )
        consumer = make_consumer(
            kc,
            self.servers,
            group_id=kc.group_id,
            topics=pair,
            listener=listener,
            # which member is this worker: the token, last; first a draw of its own, so that
            # the assignors, which order members by id, do not always place a worker alike
            client_id=f"{kc.client_id}-consumer-{os.urandom(3).hex()}-{self.token}",
        )
        self.consumer = consumer
        self._consumer_since = self.ticks()
        self.aligner.new_consumer()
        if kc.rejoin_unassigned_ms:
            self.watch = GroupWatch(
                kc.rejoin_unassigned_ms,
                assigned=consumer.assignment,
                describe=lambda: describe_group(kc, self.servers, kc.group_id),
                partitions=lambda: [
                    (tp.topic, tp.partition) for tp in partitions_of(consumer, pair)
                ],
                rejoin=lambda: rejoin(consumer, pair, listener),
                member_id=lambda: member_id(consumer),
                restart=self.restart_consumer,
            )

    def stalled(self, now: int, last_got: int) -> bool:
        """True when the group consumer has returned nothing for ``kafka.stall_restart_ms``
        although a partition it holds has records left (its lag, refreshed every tick), or
        although it holds partitions whose lag could not be read at the last refresh (a client
        that cannot reach its positions or the partitions' ends is not fetching either)."""
        limit = self.config.kafka.stall_restart_ms
        if limit <= 0 or now - max(last_got, self._consumer_since) < limit:
            return False
        if any(lag > 0 for lag in self.stats.lag.values()):
            log.warning(
                "no records for %d ms although the held partitions have %d left (lag); "
                "closing the consumer and opening a new one (client: %s; group: %s)",
                limit,
                sum(self.stats.lag.values()),
                client_state(self.consumer),
                self._group_line(),
            )
            return True
        if self._lag_unknown and self.stats.held:
            log.warning(
                "no records for %d ms and the lag of the %d held partitions is unknown (%s); "
                "closing the consumer and opening a new one (client: %s; group: %s)",
                limit,
                self.stats.held,
                self._lag_unknown,
                client_state(self.consumer),
                self._group_line(),
            )
            return True
        return False

    def _group_line(self) -> str:
        """The consumer group as its coordinator describes it (``group_line``)."""
        kc = self.config.kafka
        return group_line(kc, self.servers, kc.group_id)

    def restart_consumer(self) -> None:
        """Close the group consumer (its revoke checkpoints and hands off what it holds) and
        open a new one, which joins the group and seeks to the state's offsets on assignment.

        The way out of a client that stopped fetching: kafka-python 3.0.12 has been seen to spin
        in ``poll`` for minutes, unable to find its coordinator, with all the lag left; and of one
        the group watch (``streaming.worker.liveness``) found holding nothing it should.
        """
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # a broken client may fail to close; the new one replaces it
            log.warning("closing the stalled consumer failed: %s", exc)
        self.stats.consumer_restarts += 1
        self.stats.lag = {}
        self._lag_unknown = ""
        self._open_group_consumer()

    def _use_cache(self) -> None:
        """Point JAX at the persistent compilation cache (see ``JaxConfig``)."""
        jc = self.config.jax
        if jc.compilation_cache and self._cache_set is None:
            where = Path(jc.compilation_cache_dir or self.ckpt_dir / "jax-cache")
            self._cache_set = use_compilation_cache(where)

    def _start_compiling(self) -> None:
        """Compile the step's functions on a thread (``run`` calls it once records arrived).

        Not earlier: a thread that holds the GIL while the consumer joins its group starves
        kafka-python's IO loop, and on a loaded machine the consumer can then join without ever
        fetching a record.
        """
        if self.config.jax.compile_ahead and self._compiling is None:
            state = self.state
            self._compiling = threading.Thread(
                target=self._compile, args=(state,), name="encore-compile-ahead", daemon=True
            )
            self._compiling.start()

    def _compile(self, state: WorkerState) -> None:
        started = time.perf_counter()
        try:
            warm_up(self.engine, state)
        except Exception:  # the first steps compile what is missing (and raise real errors)
            log.exception("compiling ahead failed")
        else:
            log.info("compiled the step's functions in %.1f s", time.perf_counter() - started)

    def close(self) -> None:
        try:
            if self._compiling is not None:
                self._compiling.join()
                self._compiling = None
            if self._cache_set is not None:
                restore_compilation_cache(self._cache_set)
                self._cache_set = None
            if self.metrics_server is not None:
                self.metrics_server.close()
                self.metrics_server = None
            unregister(self._registered)
            self._registered = None
            if self.consumer is not None:
                self.consumer.close(autocommit=False)  # revokes: checkpoint + handoff
                self.consumer = None
            if self.log is not None:
                self.log.close()
            if self.plays_log is not None:
                self.plays_log.close()
            self.links.close()
        finally:
            self._pending = None  # (stepped by the revoke; dropped after a failure)
            try:
                self.decoding.close()  # even when closing a client failed: no child left behind
                self.decoding = Decoding(self.limits, process=False)
            finally:
                self._ckpt_lock.release()

    def poll_once(self) -> int:
        """One poll -> decode -> step -> emit round; returns the number of records consumed.

        With the decoding process, a batch is stepped one round later: this round hands the
        records just polled to the decoding process and steps the batch before them
        (``_pending``) meanwhile. A rebalance steps the batch in flight before it checkpoints
        (``on_revoked``), and so does a round that polls nothing, and the end of ``run``.
        """
        cfg = self.config
        if cfg.kafka.lean_records:
            # (offset, key, value) records parsed in one loop; idempotent, warns once if refused
            use_lean_records(self.consumer)
        if self.aligner.active and not serve_parked(self.consumer):
            self.aligner.off = True  # pausing needs serve_parked's fix to resume reliably
            log.warning("event-time alignment off: kafka-python is not the version it was made for")
        polled = self.consumer.poll(
            timeout_ms=cfg.kafka.poll_timeout_ms, max_records=cfg.kafka.max_poll_records
        )
        batch = _Batch(Polled(cfg.topics.impressions), Polled(cfg.topics.outcomes), {})
        for tp, records in polled.items():
            if not records or (tp.topic, tp.partition) in self.revoked:
                continue
            where = batch.impressions if tp.topic == cfg.topics.impressions else batch.outcomes
            where.add(tp.partition, records)
            batch.offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
        n = batch.impressions.n + batch.outcomes.n
        self._delivered = self._delivered or n > 0
        if n == 0:
            self._drain()  # nothing to decode meanwhile
            self._align(batch.offsets)
            return 0
        previous, self._pending = self._pending, None
        done = self.decoding.result() if previous is not None else None  # before the next submit
        imp, out = batch.impressions, batch.outcomes
        self.decoding.submit(imp.values(), out.values(), imp.timestamps(), out.timestamps())
        if previous is not None and done is not None:
            self._apply(previous, done)
        if self.decoding.in_process:  # decoded already: step it now
            self._apply(batch, self.decoding.result())
        else:
            self._pending = batch  # stepped next round, while the one after decodes
        return n

    def _drain(self, *, align: bool = True) -> None:
        """Step the batch in flight, if any (``align=False``: off the loop's thread)."""
        batch, self._pending = self._pending, None
        if batch is not None:
            self._apply(batch, self.decoding.result(), align=align)

    def _apply(self, batch: _Batch, decoded: Decoded, *, align: bool = True) -> None:
        """Dead letters, step, late rows, alignment, counts and the log of one decoded batch."""
        imp, out = batch.impressions, batch.outcomes
        imps, imp_rej, outs, out_rej = decoded
        self._dead_letters(imp_rej, imp)
        self._dead_letters(out_rej, out)
        imp_part, out_part = good_partitions(imp, imp_rej), good_partitions(out, out_rej)
        self.state, effects = step(
            self.engine,
            self.state,
            imps,
            outs,
            offsets=batch.offsets,
            impression_partition=imp_part,
            outcome_partition=out_part,
        )
        self._late(effects.rejected_impressions, effects.rejected_outcomes)
        self._learn_names(imps.policy)
        if align:
            self._align(
                batch.offsets, (imp.topic, imps.ts_ms, imp_part), (out.topic, outs.ts_ms, out_part)
            )
        self.stats.events += imp.n + out.n
        for topic, count in ((imp.topic, imp.n), (out.topic, out.n)):
            self.stats.events_by_topic[topic] = self.stats.events_by_topic.get(topic, 0) + count
        if self.log is not None:
            for records in effects.records:
                self.log.append(records)
                if self.config.log.publish_joined:
                    side_topics.send_joined(self.producer, self.config.topics.joined, records)
        plays = effects.model_plays
        if self.plays_log is not None and plays is not None and plays.ts_ms.size:
            self.plays_log.append_table(plays_table(plays, self.engine.reward_model.spec.name))

    def _learn_names(self, policies: npt.NDArray[np.str_]) -> None:
        """Remember the name behind each logging policy's key, so counts and labels show names."""
        if policies.size:
            new = [n for n in set(policies.tolist()) if n not in self._named]
            if new:
                self._named.update(new)
                self._names.update((int(k), n) for k, n in zip(key64(new), new, strict=True))

    def policy_name(self, key: int) -> str:
        """The logging policy's name for its key (``streaming.events.key64``), else the key."""
        return self._names.get(int(key), str(key))

    def _align(
        self,
        offsets: Mapping[tuple[str, int], int],
        *read: tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int32]],
    ) -> None:
        """Pause the partitions read too far ahead in event time, resume the rest."""
        if self.aligner.active:
            self.stats.align_pauses += self.aligner.update(
                self.consumer, self.ticks(), offsets, *read
            )

    def _dead_letters(self, rejects: list[Reject], where: Polled) -> None:
        """Each reject to the dead-letter topic, keyed by where it came from; one too large for
        the topic goes truncated, with the original's size and SHA-256."""
        side_topics.send_dead_letters(
            self.producer,
            self.config.topics.dlq,
            rejects,
            where,
            prefix_bytes=self.config.kafka.dead_letter_prefix_bytes,
        )
        self.stats.dead_letters += len(rejects)
        for r in rejects:
            self.stats.dead_by_code[r.code] = self.stats.dead_by_code.get(r.code, 0) + 1

    def _late(self, imps: join.RejectedImpressions, outs: join.RejectedOutcomes) -> None:
        kinds = side_topics.send_late(self.producer, self.config.topics.late, imps, outs)
        self.stats.late += len(kinds)
        for kind in kinds:
            self.stats.late_by_kind[kind] = self.stats.late_by_kind.get(kind, 0) + 1

    def caught_up(self) -> bool:
        """True when the consumer owns partitions, has read every one of them to its end, and
        has stepped every batch it read."""
        owned = self.consumer.assignment()
        if not owned or self._pending is not None or self.away.since is not None:
            return False  # (with the broker away, asking for the end offsets would wait on it)
        ends = self.consumer.end_offsets(list(owned))
        return all(self.consumer.position(tp) >= end for tp, end in ends.items())

    def publish_snapshot(self) -> None:
        """Send the policy to the compacted snapshot topic, keyed by its name (state producer).

        Each snapshot replaces the last, so while two wait for the broker (an outage) a newer
        one is not queued behind them, and one that failed is not sent again once a newer one
        is on its way: the newest always reaches the topic, and an outage holds two at most.
        """
        out = self.handoff_producer if self.handoff_producer is not None else self.producer
        topic, key = self.config.topics.snapshots, self.engine.policy.spec.name.encode()
        if isinstance(out, Outbound):
            if out.pending_of(topic, key) >= 2:
                return
            out.send(topic, key=key, value=self.snapshot_bytes(), newest=True)
        else:
            out.send(topic, key=key, value=self.snapshot_bytes())
        self.stats.snapshots += 1

    def run(
        self,
        stop: threading.Event,
        *,
        on_tick: Callable[[Daemon], None] | None = None,
        tick_ms: int = 2000,
        exit_when_idle_ms: int | None = None,
    ) -> Stats:
        """Loop until ``stop`` is set; then finish the batch, checkpoint and close.

        Args:
            stop: set it (from a signal handler, say) to stop after the current batch.
            on_tick: called every ``tick_ms`` with the daemon (live counts).
            tick_ms: how often ``on_tick`` is called.
            exit_when_idle_ms: also stop once nothing arrived for this long and every assigned
                partition is read to its end (batch jobs and tests); None runs until ``stop``.
        """
        cc = self.config.checkpoint
        failed: BaseException | None = None  # what ended the run, if not a stop
        try:
            self.open()  # inside: a failed open still closes what it opened, and the locks
            start = self.ticks()
            schedule = Schedule(
                start_ms=start,
                checkpoint_every_ms=cc.every_ms,
                checkpoint_every_events=cc.every_events,
                snapshot_every_ms=self.config.rerank.snapshot_every_ms,
                tick_every_ms=min(tick_ms, self.config.metrics.refresh_ms),
            )
            schedule.start_counting(self.stats.events)
            # start-up objects frozen, young collections rarer, full ones on a timer (gc_tuning)
            with quiet_gc(now_ms=start) as collector:
                while not stop.is_set():
                    try:
                        got = self.poll_once()
                        self.poll_deltas()
                        now = self.ticks()
                        if self.watch is not None and self.watch.tick(now):
                            self.stats.rejoins += 1
                        if got:
                            schedule.got_records(now)
                            if self._compiling is None:
                                self._start_compiling()  # the learners, while the next polls decode
                        elif (
                            exit_when_idle_ms is not None
                            and schedule.idle_for(now) >= exit_when_idle_ms
                        ):
                            if self.caught_up():
                                break
                            schedule.looked_idle(now)
                        if schedule.checkpoint_due(now, self.stats.events):
                            if self.stats.events > schedule.events_at_checkpoint:
                                self.write_checkpoint()
                            schedule.checkpointed(now, self.stats.events)
                        if schedule.snapshot_due(now):
                            self.publish_snapshot()
                            schedule.snapshotted(now)
                        if collector.tick(now):
                            self.stats.gc_collections = collector.collections
                            self.stats.gc_seconds = collector.seconds
                        if schedule.tick_due(now):
                            self._refresh_stats()
                            self.publish_metrics()
                            if self.stalled(now, schedule.last_got_ms):
                                self.restart_consumer()
                            if self.log is not None:
                                self.log.roll_if_due()
                            if self.plays_log is not None:
                                self.plays_log.roll_if_due()
                            if on_tick is not None:
                                on_tick(self)
                            schedule.ticked(now)
                    except UNREACHABLE as exc:  # the broker is away: wait, then poll again
                        self._broker_away(exc)
                self._drain()  # the batch in flight: finish it before the last checkpoint
                self.write_checkpoint()
                self.publish_snapshot()
                self._refresh_stats()
                self.publish_metrics()
                return self.stats
        except BaseException as exc:
            self._pending = None  # not learned, not checkpointed: read again by the next start
            failed = exc
            unwritable = _cause_in(exc, (checkpoint.CheckpointWriteError, LogWriteError))
            if unwritable is not None:
                self._ckpt_failed = True  # closing checkpoints and hands off nothing
                if unwritable is not exc:  # raised in a rebalance listener, wrapped
                    raise unwritable from exc
            refused = _refusal_in(exc)
            if refused is not None and refused is not exc:
                raise refused from exc  # raised in a rebalance listener, wrapped by kafka-python
            raise
        finally:
            self._close_after(failed)

    def _close_after(self, failed: BaseException | None) -> None:
        """``close()`` at the end of ``run``. After more refusals than allowed, closing runs
        the revocation's checkpoint, which meets the same refusal and writes nothing: that
        failure is logged, not raised in place of the refusal ``encore run`` reports."""
        try:
            self.close()
        except Exception:
            if failed is None or _refusal_in(failed) is None:
                raise
            log.info("closing after the refusal: the revocation's checkpoint was refused too")

    def metrics_snapshot(self) -> dict[str, Any]:
        """The daemon's numbers in the form ``streaming.worker.metrics`` and ``encore status`` take."""
        model = self.engine.reward_model.spec.name
        queued = {
            "policy": int(self.state.policy_rows.end_ms.size),
            "reward_model": int(self.state.model_rows.end_ms.size),
        }
        listeners = sum(int(t.listener.size) for t in self.state.history.values())
        snap = metrics_snapshot(self.stats, self.state.sums, model, self.clock(), queued, listeners)
        seen = int(self.state.tracks.size)
        if self._shared[0] is not self.state.tracks:  # a step makes a new array when it grows
            tracks = self.state.tracks
            self._shared = (tracks, linear.shared_slots(tracks, self.engine.track_slots))
        shared = self._shared[1]
        snap.update(tracks_seen=seen, track_slots_shared=shared / seen if seen else 0.0)
        switches = getattr(self.state.policy, "switches", None)
        if switches is not None:
            snap["policy_switches"] = int(switches)
        return snap

    def _unhold_empty_partitions(self) -> None:
        """An assigned partition that has read nothing and has nothing to read (no lag on either
        topic) stops holding the learners' frontier back: its empty join goes until its first
        event. (One with events still to read keeps holding it, which is what makes the
        learners' order independent of when each partition's first poll comes.)"""
        t = self.config.topics
        lag = self.stats.lag
        self._drop_unread(
            {
                p
                for p, js in self.state.join.items()
                if _unread(js)
                and lag.get(f"{t.impressions}/{p}") == 0
                and lag.get(f"{t.outcomes}/{p}") == 0
            }
        )

    def _drop_unread(self, partitions: set[int]) -> None:
        """The state without the (unread, empty) joins of ``partitions``."""
        if partitions:
            kept = {p: js for p, js in self.state.join.items() if p not in partitions}
            self.state = self.state._replace(join=kept)

    def _warn_shared_slots(self, snap: Mapping[str, Any]) -> None:
        """Say so when too many tracks share a per-track slot: once, then at every doubling."""
        share = float(snap.get("track_slots_shared", 0.0))
        limit = self.config.policy.warn_id_collisions
        if share <= limit or share < 2 * self._shared_warned:
            return
        self._shared_warned = share
        seen = int(snap.get("tracks_seen", 0))
        log.warning(
            "%.1f %% of the %s tracks the policy learned of share a per-track slot with another "
            "track (policy.params.n_ids = %s, ids hashed into it): their biases are partly each "
            "other's. Size n_ids to about 20 times the catalogue (%s here) for about 5 %%",
            100 * share,
            f"{seen:,}",
            f"{self.engine.track_slots:,}",
            f"{20 * seen:,}",
        )

    def publish_metrics(self) -> None:
        """Refresh the Prometheus numbers and the status file ``encore status`` reads.

        While the broker is away (nothing accepts a connection at its address) the lag is
        unknown, not stuck: it is left empty, so that the stall watchdog does not replace a
        consumer that merely waits for the broker, and ``broker_away_seconds`` grows.
        """
        if self.consumer is not None:
            self.stats.held = len(self.consumer.assignment())
            if self.away.since is not None and reachable(self.servers):
                self._back()
            if self.away.since is not None:  # still away: nothing to ask
                self.stats.lag, self._lag_unknown = {}, ""
            else:
                try:
                    self.stats.lag = self._lag()
                    self._lag_unknown = ""
                except Exception as exc:  # lag is best effort: never stop learning for it
                    log.debug("consumer lag unavailable: %s", exc)
                    if passing(exc) and not reachable(self.servers):
                        self.away.note()
                        self.stats.lag, self._lag_unknown = {}, ""
                    else:
                        self._lag_unknown = f"{type(exc).__name__}: {exc}"
        self._side_stats()
        self._unhold_empty_partitions()
        snap = self.metrics_snapshot()
        self._warn_shared_slots(snap)
        self.metrics.update_from(snap)
        write_status(
            status_path(self.config),
            {**self.metrics.snapshot(), **process_fields(self.config.metrics.refresh_ms)},
        )

    def _side_stats(self) -> None:
        """The outbounds' counts into ``stats``, and how long the broker has not answered."""
        outs = [o for o in (self.producer, self.handoff_producer) if isinstance(o, Outbound)]
        if outs:
            counts = outs[0].counts  # shared by both (``Connections.open_sinks``)
            self.stats.side_pending = sum(o.pending for o in outs)
            self.stats.side_resent = counts.resent
            self.stats.side_truncated = dict(counts.truncated)
            self.stats.side_refused = dict(counts.refused)
        self.stats.broker_away_s = max([self.away.seconds(), *(o.waiting_s() for o in outs)])

    def _back(self) -> None:
        """The broker accepts connections again: the stall watchdog's clock starts over (no
        consumer could fetch while it was away, and the clients reconnect with a backoff)."""
        self.away.back()
        self._consumer_since = self.ticks()

    def _broker_away(self, exc: BaseException) -> None:
        """A round of the loop met a broker that does not answer (a timeout, a lost
        connection): note it, refresh the metrics and status (at most once per refresh
        interval), and wait a poll's time before the next round."""
        why = f"{type(exc).__name__}: {exc}"
        log.debug("the broker did not answer: %s", why)
        if reachable(self.servers):  # up, and the client not reconnected yet (its backoff)
            self.away.warn(f"a request to the broker at {self.servers} failed ({why}); retrying")
        else:
            self.away.note()
        now = self.ticks()
        if now - self._away_refreshed >= self.config.metrics.refresh_ms:
            self._away_refreshed = now
            self._refresh_stats()
            self.publish_metrics()
        time.sleep(self.config.kafka.poll_timeout_ms / 1000)

    def _lag(self) -> dict[str, int]:
        """Records left per owned partition: the end of the partition less the position.

        While records flow, the end is the high watermark each fetch response carries (no request
        of its own: asking the broker, ``end_offsets``, costs the loop a round trip every refresh),
        so a paused partition's lag is as of its last fetch. Once a refresh interval went by with
        nothing read (a consumer that stopped fetching, which ``stalled`` must see), under
        ``read_committed`` (where the readable end is the last stable offset, not the high
        watermark) and for a partition no fetch response covered yet, the broker is asked.
        """
        c = self.consumer
        committed = self.config.kafka.client_options.get("isolation_level") == "read_committed"
        fast = self._delivered and not committed
        self._delivered = False
        owned = list(c.assignment())
        ends: dict[Any, int | None] = {tp: c.highwater(tp) if fast else None for tp in owned}
        unknown = [tp for tp, end in ends.items() if end is None]
        if unknown:
            ends.update(c.end_offsets(unknown))
        return {
            f"{tp.topic}/{tp.partition}": max(int(end) - int(c.position(tp)), 0)
            for tp, end in ends.items()
            if end is not None
        }

    def _refresh_stats(self) -> None:
        self.stats.counters = {**self.state.counters, **join_counters(self.state)}
        self.stats.reward_by_policy = {
            self.policy_name(k): v for k, v in self.state.reward_by_policy.items()
        }


def _unread(js: join.JoinState | None) -> bool:
    """Whether a partition's join has read nothing at all (an empty one made at assignment)."""
    return (
        js is not None
        and int(js.impression_max_ts_ms) == join.NO_TIME_MS
        and int(js.outcome_max_ts_ms) == join.NO_TIME_MS
        and js.pending_key.size == 0
        and js.open_key.size == 0
    )


def _cause_in(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """``exc`` if it is one of ``kinds``, else the first one among its causes (kafka-python
    wraps what a rebalance listener raised in a ``KafkaError``)."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        if isinstance(found, kinds):
            return found
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


def _refusal_in(exc: BaseException) -> SideOutputRefusedError | None:
    """``exc`` if it is a :class:`SideOutputRefusedError`, else the first one among its causes."""
    found = _cause_in(exc, (SideOutputRefusedError,))
    return found if isinstance(found, SideOutputRefusedError) else None
