"""The imperative shell around ``step``: poll, decode, step, emit, checkpoint, publish.

``Daemon.run`` loops until ``stop`` is set: poll (never longer than ``poll_timeout_ms``) ->
decode to columns (malformed messages to the dead-letter topic, with the reason, the original
bytes and where they came from) -> ``step`` -> late rows to the late topic -> checkpoint when due
(state and offsets together, atomically; then the offsets are committed to Kafka so lag shows in
the usual tools) -> snapshot when due. On start it loads the newest good checkpoint and seeks every
assigned partition to the offset stored with it, so a kill at any instant replays exactly the
events the state has not yet seen. Signal handlers only set ``stop``.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jax
import msgspec
import numpy as np
import numpy.typing as npt

import rewards
from bandits import POLICIES, save
from rewards.survival import survival_model
from streaming import align, checkpoint, deltas, handoff, join
from streaming.config import Config
from streaming.dirlock import DirLock
from streaming.events import (
    Limits,
    Reject,
    decode_impressions,
    decode_outcomes,
    key64,
)
from streaming.gc_tuning import quiet_gc
from streaming.kafka_io import (
    HANDOFF_MAX_BYTES,
    AsyncConsumerRebalanceListener,
    OffsetAndMetadata,
    TopicPartition,
    describe_group,
    make_consumer,
    make_producer,
    partitions_of,
    rejoin,
    serve_parked,
    use_lean_records,
)
from streaming.liveness import GroupWatch
from streaming.metrics import Metrics, MetricsServer, status_path, write_status
from streaming.parquet_log import BackgroundLog, JoinedRecords, ParquetLog, to_table
from streaming.step import (
    Engine,
    WorkerState,
    from_arrays,
    init,
    join_counters,
    merge_delta,
    step,
    to_arrays,
    warm_up,
    zero_delta,
)

log = logging.getLogger(__name__)

Clock = Callable[[], int]
FORMAT = "encore.worker/1"
# A partition that another waits on (streaming.align) but whose newest event time has not moved
# on for this long no longer holds the other back: alignment may slow a read, never stop it.
ALIGN_STALL_MS = 2_000
# Alignment's clock counts the time between two polls up to this much: a daemon busy elsewhere
# (a checkpoint, a slow step, a collection) gave no partition a chance to deliver meanwhile, so
# that time must not make the one waited on look stalled.
ALIGN_MAX_GAP_MS = 500


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """Milliseconds on a clock that never steps (intervals; not a date)."""
    return time.monotonic_ns() // 1_000_000


def make_engine(config: Config) -> Engine:
    """The policy named in the config, with the join settings and feature sizes."""
    try:
        factory = POLICIES[config.policy.name]
    except KeyError:
        raise ValueError(
            f"policy.name {config.policy.name!r} is not one of {sorted(POLICIES)}"
        ) from None
    policy = factory(**dict(config.policy.params))
    models = {
        "survival": survival_model,
        "skip": rewards.skip_model,
        "completion": rewards.completion_model,
        "direct": rewards.direct_model,
    }
    composite = rewards.CompositeReward(kind=config.reward.kind, **dict(config.reward.params))
    model = models[config.reward.model](**dict(config.reward.model_params))
    composite.check(model.spec)
    return Engine(
        policy=policy,
        join_config=config.join,
        d_user=config.events.d_user,
        d_track=config.events.d_track,
        reward_model=model,
        composite=composite,
        log_candidates=config.log.max_candidates if config.log.dir else 0,
        log_features=config.log.candidate_features,
        share_deltas=_shares(config, policy),
    )


def _shares(config: Config, policy: Any) -> bool:
    if not config.scale.share_deltas:
        return False
    from bandits.linear import LinearState

    if not isinstance(policy.init(config.events.d_user, config.events.d_track), LinearState):
        raise ValueError(
            f"scale.share_deltas needs a linear policy (additive statistics); "
            f"{config.policy.name!r} is not one"
        )
    return True


def limits(config: Config) -> Limits:
    e = config.events
    return Limits(
        d_user=e.d_user,
        d_track=e.d_track,
        max_candidates=e.max_candidates,
        max_message_bytes=e.max_message_bytes,
    )


@dataclass
class Stats:
    """Live counts for the console, the status table and the metrics endpoint."""

    started_ms: int = 0
    events: int = 0
    dead_letters: int = 0
    late: int = 0
    checkpoints: int = 0
    snapshots: int = 0
    last_checkpoint_ms: int = 0
    counters: dict[str, int] = field(default_factory=dict[str, int])
    events_by_topic: dict[str, int] = field(default_factory=dict[str, int])
    dead_by_code: dict[str, int] = field(default_factory=dict[str, int])
    late_by_kind: dict[str, int] = field(default_factory=dict[str, int])
    lag: dict[str, int] = field(default_factory=dict[str, int])
    deltas_published: int = 0
    deltas_merged: int = 0
    handoffs_published: int = 0  # partition records sent (revoke, or a restart's republish)
    handoffs_installed: int = 0  # partitions taken over with another worker's open windows
    partitions_started_fresh: int = 0  # taken over behind the commit: open windows lost
    rejoins: int = 0  # times the watchdog made the consumer rejoin (streaming.liveness)
    consumer_restarts: int = 0  # stalled group consumers replaced (Daemon.restart_consumer)
    gc_collections: int = 0  # the poll loop's timed full collections (streaming.gc_tuning)
    gc_seconds: float = 0.0  # wall seconds they took
    align_pauses: int = 0  # partitions paused for reading ahead in event time (streaming.align)
    reward_by_policy: dict[str, tuple[float, int]] = field(
        default_factory=dict[str, tuple[float, int]]
    )


class _Listener(AsyncConsumerRebalanceListener):  # pyright: ignore[reportUntypedBaseClass]
    """Hands partitions off on revoke and takes them over on assign, off the client's loop.

    kafka-python 3 runs rebalance listeners on its network thread, where blocking would stall
    heartbeats. The work (a checkpoint, the handoff records, reading the handoff topic, seeks)
    runs on a short-lived thread while this coroutine yields to the client's loop; the daemon's
    own thread is inside ``poll`` (or ``close``) meanwhile, so the state has one writer.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._off_loop(self.daemon.on_revoked, list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._off_loop(self.daemon.on_assigned, list(assigned))

    async def _off_loop(
        self, work: Callable[[list[TopicPartition]], None], tps: list[TopicPartition]
    ) -> None:
        failed: list[BaseException] = []

        def run() -> None:
            try:
                work(tps)
            except BaseException as exc:  # re-raised on the client's loop below
                failed.append(exc)

        thread = threading.Thread(target=run, name=f"encore-{work.__name__}", daemon=True)
        thread.start()
        net = getattr(self.daemon.consumer, "_net", None)  # kafka-python 3's event loop
        while thread.is_alive():
            if net is None:
                thread.join()
            else:
                await net.sleep(0.005)
        if failed:
            raise failed[0]


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
    ) -> None:
        self.config = config
        self.servers = servers
        self.clock = clock  # dates: stats, checkpoint headers, handoff records, status
        self.ticks = ticks  # intervals: the loop's schedules, stall and idle detection, alignment
        self.engine = make_engine(config)
        self.limits = limits(config)
        self.ckpt_dir = Path(config.checkpoint.dir)
        self.lineage = ""  # this worker's lineage (streaming.deltas), set with the state below
        # held from before the state is read until close: one worker per checkpoint directory
        self._ckpt_lock = DirLock(self.ckpt_dir / "LOCK", f"checkpoint.dir {self.ckpt_dir}")
        self._ckpt_lock.acquire()
        self.state: WorkerState = self._load_or_init()
        self.revoked: set[tuple[str, int]] = set()
        self.stats = Stats(started_ms=clock())
        self._names = {
            int(k): n for k, n in zip(key64(list(policy_names)), policy_names, strict=True)
        }
        self.consumer: Any = None
        self.producer: Any = None
        self.delta_consumer: Any = None
        self.handoff_producer: Any = None
        self.handoff_consumer: Any = None
        self._handoff_parts: list[int] = [0]
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
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.metrics_port: int | None = None
        self._compiling: threading.Thread | None = None
        self.watch: GroupWatch | None = None
        self._consumer_since = 0  # when the group consumer was opened
        self._cache_set: tuple[Any, Any] | None = None  # JAX's cache settings before open set them
        self._reading: dict[tuple[str, int], align.Reading] = {}  # per partition (streaming.align)
        self._align_clock = 0  # ms of polling, each gap capped at ALIGN_MAX_GAP_MS
        self._align_last: int | None = None  # self.ticks() at the last _align
        self._align_paused: set[Any] = set()  # the TopicPartitions alignment holds paused
        self._reassigned: set[tuple[str, int]] = set()  # assigned since the last _align
        self._align_off = False  # set when kafka-python is not the version serve_parked knows

    # ------------------------------------------------------------------ state
    def _load_or_init(self) -> WorkerState:
        found = checkpoint.load_latest(self.ckpt_dir)
        if found is None:
            self.lineage = os.urandom(8).hex()  # this worker's, from now on (streaming.deltas)
            return init(self.engine)
        arrays, header = found
        self.lineage = str(header.get("lineage") or os.urandom(8).hex())
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
        log.info(
            "resumed from checkpoint: %d offsets, counters %s", len(state.offsets), state.counters
        )
        return state

    def write_checkpoint(self) -> Path:
        if self.log is not None:
            self.log.flush()  # every record of a closed impression is durable before the state
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
        }
        path = checkpoint.write(self.ckpt_dir, arrays, header, keep=self.config.checkpoint.keep)
        self.stats.checkpoints += 1
        self.stats.last_checkpoint_ms = self.clock()
        if self.consumer is not None and self.state.offsets:
            owned = self.consumer.assignment()
            commit = {
                TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                for (t, p), o in self.state.offsets.items()
                if TopicPartition(t, p) in owned
            }
            if commit:
                try:
                    self.consumer.commit(commit)
                except Exception as exc:  # lag reporting only; the checkpoint is the truth
                    log.warning("offset commit after checkpoint failed: %s", exc)
        self.publish_outbox()
        return path

    # ------------------------------------------------------------------ scale-out
    @property
    def worker_id(self) -> str:
        return self.config.scale.worker_id or self.config.kafka.client_id

    def publish_outbox(self) -> None:
        """Send the sealed delta (if any) and forget it once the broker has it."""
        st = self.state
        if st.outbox is None or self.producer is None:
            return
        spec = self.engine.policy.spec
        value = deltas.encode(
            self.worker_id, st.delta_seq, spec.name, spec.version, st.outbox, self.lineage
        )
        self.producer.send(self.config.topics.deltas, key=self.worker_id.encode(), value=value)
        self.producer.flush(timeout=30)
        self.state = self.state._replace(outbox=None)
        self.stats.deltas_published += 1

    def absorb_deltas(self, values: Iterable[bytes]) -> int:
        """Fold in other workers' deltas not folded in before; returns how many were."""
        folded = 0
        spec = self.engine.policy.spec
        for value in values:
            try:
                d = deltas.decode(value)
            except ValueError as exc:
                log.warning("skipping a malformed delta: %s", exc)
                continue
            deltas.check_own(d, self.worker_id, self.lineage, self.config.topics.deltas)
            if d.worker == self.worker_id or d.seq <= self.state.seen.get(d.worker, 0):
                continue
            if (d.policy, d.version) != (spec.name, spec.version):
                log.warning("skipping a delta of policy %s v%d", d.policy, d.version)
                continue
            self.state = self.state._replace(
                policy=merge_delta(self.state.policy, d.stats),
                seen={**self.state.seen, d.worker: d.seq},
            )
            folded += 1
        self.stats.deltas_merged += folded
        return folded

    def poll_deltas(self) -> int:
        if self.delta_consumer is None:
            return 0
        polled = self.delta_consumer.poll(timeout_ms=0, max_records=1000)
        return self.absorb_deltas(r.value for recs in polled.values() for r in recs if r.value)

    # ------------------------------------------------------------------ partition handoff
    @property
    def _pair(self) -> tuple[str, str]:
        return (self.config.topics.impressions, self.config.topics.outcomes)

    def _numbers(self, tps: Iterable[TopicPartition]) -> set[int]:
        return {tp.partition for tp in tps if tp.topic in self._pair}

    def held_partitions(self) -> set[int]:
        """Partition numbers this worker's state holds anything of (windows or offsets)."""
        pair = self._pair
        return set(self.state.join) | {p for t, p in self.state.offsets if t in pair}

    def hand_off(self, partitions: Iterable[int]) -> int:
        """Publish the state of ``partitions`` to the handoff topic; returns once it is durable."""
        group = self.config.kafka.group_id
        sent = 0
        for p in sorted(partitions):
            record = handoff.extract(self.state, p, self._pair, self.worker_id)
            value = handoff.encode(record, group, self.clock())
            if len(value) > HANDOFF_MAX_BYTES:
                raise RuntimeError(
                    f"partition {p}'s open windows take {len(value):,} bytes compressed, over the "
                    f"handoff limit of {HANDOFF_MAX_BYTES:,}: lower join.max_open or "
                    "log.max_candidates"
                )
            self.handoff_producer.send(
                self.config.topics.handoff, key=handoff.key(group, p), value=value
            )
            sent += 1
        self.handoff_producer.flush(timeout=60)
        self.stats.handoffs_published += sent
        return sent

    def read_handoffs(
        self, partitions: Iterable[int], timeout_s: float = 60.0
    ) -> dict[int, handoff.PartitionRecord]:
        """The newest published record of each of ``partitions`` (damaged ones are logged, skipped)."""
        wanted = {handoff.key(self.config.kafka.group_id, p): p for p in partitions}
        if not wanted:
            return {}
        c = self.handoff_consumer
        tps = [TopicPartition(self.config.topics.handoff, q) for q in self._handoff_parts]
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        newest: dict[int, bytes | None] = {}
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.config.topics.handoff} to its end")
            for recs in c.poll(timeout_ms=200, max_records=100).values():
                for r in recs:
                    if r.key in wanted:
                        newest[wanted[r.key]] = r.value  # None: a tombstone
        out: dict[int, handoff.PartitionRecord] = {}
        for p, value in newest.items():
            if value is None:
                continue
            try:
                out[p] = handoff.decode(
                    value, f"{self.config.topics.handoff} record of partition {p}"
                )
            except checkpoint.CheckpointError as exc:
                log.error("ignoring a damaged handoff record: %s", exc)
        return out

    def on_revoked(self, tps: list[TopicPartition]) -> None:
        """Checkpoint, then publish the revoked partitions' windows for their next owner."""
        self.revoked.update((tp.topic, tp.partition) for tp in tps)
        numbers = self._numbers(tps) & self.held_partitions()
        if not numbers:
            return
        self.write_checkpoint()
        self.hand_off(numbers)
        log.info("handed off partitions %s", sorted(numbers))

    def on_assigned(self, tps: list[TopicPartition]) -> None:
        """Keep, take over or start each assigned partition, drop the others, seek, checkpoint."""
        pair = self._pair
        self._reassigned.update((tp.topic, tp.partition) for tp in tps)  # streaming.align
        numbers = self._numbers(tps)
        before = self.held_partitions()
        state = handoff.without(self.state, before - numbers, pair)
        published = self.read_handoffs(numbers)
        committed = {tp: self.consumer.committed(tp) for tp in tps if tp.topic in pair}
        fresh = 0
        for p in sorted(numbers):
            floor = tuple(committed.get(TopicPartition(t, p)) for t in pair)
            local = handoff.extract(state, p, pair, self.worker_id) if p in before else None
            how, record = handoff.choose(local, published.get(p), (floor[0], floor[1]))
            if how == "remote" and record is not None:
                state = handoff.install(state, record, pair)
                self.stats.handoffs_installed += 1
                log.info(
                    "took over partition %d from %s at offsets %s", p, record.worker, record.offsets
                )
            elif how == "fresh":
                log.warning(
                    "partition %d: the newest handed-off state %s is behind the committed "
                    "offsets %s (its owner stopped between a checkpoint and its handoff); "
                    "starting fresh there: its open windows are lost",
                    p,
                    record.offsets if record is not None else None,
                    floor,
                )
                state = handoff.without(state, [p], pair)
                state = state._replace(
                    offsets={
                        **state.offsets,
                        **{
                            (t, p): int(o)
                            for t, o in zip(pair, floor, strict=True)
                            if o is not None
                        },
                    }
                )
                fresh += 1
        self.stats.partitions_started_fresh += fresh
        if fresh:
            state = state._replace(
                counters={
                    **state.counters,
                    "partitions_started_fresh": state.counters.get("partitions_started_fresh", 0)
                    + fresh,
                }
            )
        self.state = state
        for tp in tps:
            stored = self.state.offsets.get((tp.topic, tp.partition))
            if stored is not None:
                self.consumer.seek(tp, stored)
        self.revoked.difference_update((tp.topic, tp.partition) for tp in tps)
        if self.held_partitions() != before or self.stats.handoffs_installed:
            self.write_checkpoint()

    def republish_held(self) -> int:
        """After a restart: publish the partitions of the loaded checkpoint that are newer than
        what the handoff topic holds (a worker killed between a checkpoint and its handoff)."""
        held = self.held_partitions()
        published = self.read_handoffs(held)
        newer = {
            p
            for p in held
            if p not in published
            or handoff.newer(
                handoff.extract(self.state, p, self._pair, self.worker_id).offsets,
                published[p].offsets,
            )
        }
        return self.hand_off(newer) if newer else 0

    def snapshot_bytes(self) -> bytes:
        return save(self.engine.policy, self.state.policy)

    # ------------------------------------------------------------------ loop
    def open(self) -> None:
        if not self._ckpt_lock.held:  # opened again after close: resume as a new worker would
            self._ckpt_lock.acquire()
            self.state = self._load_or_init()
        self._use_cache()
        topics = self.config.topics
        self.producer = make_producer(self.config.kafka, self.servers)
        self.handoff_producer = make_producer(
            self.config.kafka,
            self.servers,
            client_id=f"{self.config.kafka.client_id}-handoff",
            max_request_size=HANDOFF_MAX_BYTES + 1024 * 1024,
            linger_ms=0,
        )
        self.handoff_consumer = make_consumer(
            self.config.kafka,
            self.servers,
            group_id=None,
            max_partition_fetch_bytes=HANDOFF_MAX_BYTES + 1024 * 1024,
        )
        self._handoff_parts = sorted(
            self.handoff_consumer.partitions_for_topic(topics.handoff) or {0}
        )
        self.handoff_consumer.assign(
            [TopicPartition(topics.handoff, q) for q in self._handoff_parts]
        )
        self.republish_held()
        self._open_group_consumer()
        if self.engine.share_deltas:
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

    def _open_group_consumer(self) -> None:
        """The group's consumer (with the rebalance listener) and its watchdog."""
        pair = [self.config.topics.impressions, self.config.topics.outcomes]
        kc = self.config.kafka
        listener = _Listener(self)
        consumer = make_consumer(
            kc, self.servers, group_id=kc.group_id, topics=pair, listener=listener
        )
        self.consumer = consumer
        self._consumer_since = self.ticks()
        self._align_paused = set()  # a new consumer starts with nothing paused
        if kc.rejoin_unassigned_ms:
            self.watch = GroupWatch(
                kc.rejoin_unassigned_ms,
                assigned=consumer.assignment,
                describe=lambda: describe_group(kc, self.servers, kc.group_id),
                partitions=lambda: [
                    (tp.topic, tp.partition) for tp in partitions_of(consumer, pair)
                ],
                rejoin=lambda: rejoin(consumer, pair, listener),
            )

    def stalled(self, now: int, last_got: int) -> bool:
        """True when the group consumer has returned nothing for ``kafka.stall_restart_ms``
        although a partition it holds has records left (its lag, refreshed every tick)."""
        limit = self.config.kafka.stall_restart_ms
        return (
            limit > 0
            and now - max(last_got, self._consumer_since) >= limit
            and any(lag > 0 for lag in self.stats.lag.values())
        )

    def restart_consumer(self) -> None:
        """Close the group consumer (its revoke checkpoints and hands off what it holds) and
        open a new one, which joins the group and seeks to the state's offsets on assignment.

        The way out of a client that stopped fetching: kafka-python 3.0.12 has been seen to spin
        in ``poll`` for minutes, unable to find its coordinator, with all the lag left.
        """
        log.warning(
            "no records for %d ms although the held partitions have %d left (lag); "
            "closing the consumer and opening a new one",
            self.config.kafka.stall_restart_ms,
            sum(self.stats.lag.values()),
        )
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # a broken client may fail to close; the new one replaces it
            log.warning("closing the stalled consumer failed: %s", exc)
        self.stats.consumer_restarts += 1
        self.stats.lag = {}
        self._open_group_consumer()

    def _use_cache(self) -> None:
        """Point JAX at the persistent compilation cache (see ``JaxConfig``)."""
        jc = self.config.jax
        if jc.compilation_cache and self._cache_set is None:
            where = Path(jc.compilation_cache_dir or self.ckpt_dir / "jax-cache")
            self._cache_set = _use_compilation_cache(where)

    def _start_compiling(self) -> None:
        """Compile the step's functions on a thread (``run`` calls it once records arrived).

        Not earlier: a thread that holds the GIL while the consumer joins its group starves
        kafka-python's IO loop, and twice in about twenty starts on a loaded two-core machine
        the consumer then never fetched a record.
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
        if self._compiling is not None:
            self._compiling.join()
            self._compiling = None
        if self._cache_set is not None:
            _restore_compilation_cache(self._cache_set)
            self._cache_set = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.consumer is not None:
            self.consumer.close(autocommit=False)  # revokes: checkpoint + handoff
        if self.log is not None:
            self.log.close()
        for producer in (self.producer, self.handoff_producer):
            if producer is not None:
                producer.flush(timeout=10)
                producer.close(timeout=10)
        for consumer in (self.delta_consumer, self.handoff_consumer):
            if consumer is not None:
                consumer.close(autocommit=False)
        self.consumer = self.producer = self.handoff_producer = None
        self.delta_consumer = self.handoff_consumer = None
        self._ckpt_lock.release()

    def poll_once(self) -> int:
        """One poll -> decode -> step -> emit round; returns the number of records consumed."""
        cfg = self.config
        if cfg.kafka.lean_records:
            # (offset, key, value) records parsed in one loop; idempotent, warns once if refused
            use_lean_records(self.consumer)
        if cfg.kafka.align_ms and not self._align_off and not serve_parked(self.consumer):
            self._align_off = True  # pausing needs serve_parked's fix to resume reliably
            log.warning("event-time alignment off: kafka-python is not the version it was made for")
        polled = self.consumer.poll(
            timeout_ms=cfg.kafka.poll_timeout_ms, max_records=cfg.kafka.max_poll_records
        )
        imp = _Polled(cfg.topics.impressions)
        out = _Polled(cfg.topics.outcomes)
        offsets: dict[tuple[str, int], int] = {}
        for tp, records in polled.items():
            if not records or (tp.topic, tp.partition) in self.revoked:
                continue
            (imp if tp.topic == cfg.topics.impressions else out).add(tp.partition, records)
            offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
        n = imp.n + out.n
        if n == 0:
            self._align(offsets)
            return 0
        imp_raw, out_raw = imp.values(), out.values()
        imps, imp_rej = decode_impressions(imp_raw, self.limits)
        outs, out_rej = decode_outcomes(out_raw, self.limits)
        self._dead_letters(imp_rej, imp)
        self._dead_letters(out_rej, out)
        imp_part, out_part = _good_partitions(imp, imp_rej), _good_partitions(out, out_rej)
        self.state, effects = step(
            self.engine,
            self.state,
            imps,
            outs,
            offsets=offsets,
            impression_partition=imp_part,
            outcome_partition=out_part,
        )
        self._late(effects.rejected_impressions, effects.rejected_outcomes)
        self._align(offsets, (imp.topic, imps.ts_ms, imp_part), (out.topic, outs.ts_ms, out_part))
        self.stats.events += n
        for topic, count in ((imp.topic, imp.n), (out.topic, out.n)):
            self.stats.events_by_topic[topic] = self.stats.events_by_topic.get(topic, 0) + count
        if self.log is not None:
            for records in effects.records:
                self.log.append(records)
                if self.config.log.publish_joined:
                    self._publish_joined(records)
        return n

    def _align(
        self,
        offsets: Mapping[tuple[str, int], int],
        *read: tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int32]],
    ) -> None:
        """Pause the partitions read too far ahead in event time, resume the rest (streaming.align).

        ``offsets``: the next offset of each partition the poll returned records of; ``read``:
        per topic, the event times of the events that decoded and their partitions.
        """
        align_ms = self.config.kafka.align_ms
        if not align_ms or self._align_off:
            return
        ticks = self.ticks()
        if self._align_last is not None:
            self._align_clock += min(max(ticks - self._align_last, 0), ALIGN_MAX_GAP_MS)
        self._align_last = ticks
        now = self._align_clock
        owned = self.consumer.assignment()
        # (re)assigned since the last call: its position may have moved (a handoff, a seek back),
        # so what was read of it before says nothing now
        reassigned, self._reassigned = self._reassigned, set()
        reading = {
            tp: r
            for tp, r in self._reading.items()
            if TopicPartition(*tp) in owned and tp not in reassigned
        }
        for tp, nxt in offsets.items():
            reading[tp] = replace(reading.get(tp, align.Reading(delivered_ms=now)), next_offset=nxt)
        # A partition delivers when its event time moves on: one that returns only dead letters
        # or older events does not help the other catch up, and must not hold it paused.
        for topic, ts, part in read:
            for p in np.unique(part).tolist():
                newest = int(ts[part == p].max())
                r = reading.get((topic, p), align.Reading())
                if r.newest_ts is None or newest > r.newest_ts:
                    reading[(topic, p)] = replace(r, newest_ts=newest, delivered_ms=now)
        for tp in owned:
            key = (tp.topic, tp.partition)
            r = reading.get(key) or align.Reading(delivered_ms=now)  # began to read it now
            reading[key] = replace(r, highwater=self.consumer.highwater(tp))
        self._reading = reading
        topics = self.config.topics
        by_part = [
            {p: r for (t, p), r in reading.items() if t == topic}
            for topic in (topics.impressions, topics.outcomes)
        ]
        pause_imp, pause_out = align.to_pause(
            by_part[0], by_part[1], now_ms=now, align_ms=align_ms, stall_ms=ALIGN_STALL_MS
        )
        want = {TopicPartition(topics.impressions, p) for p in pause_imp} | {
            TopicPartition(topics.outcomes, p) for p in pause_out
        }
        want &= owned
        # only what alignment paused and is paused still (a partition assigned again starts
        # unpaused); pauses made by anyone else stay as they are
        held = self._align_paused & self.consumer.paused()
        if want - held:
            self.consumer.pause(*(want - held))
            self.stats.align_pauses += len(want - held)
        if held - want:
            self.consumer.resume(*(held - want))
        self._align_paused = want

    def _dead_letters(self, rejects: list[Reject], where: _Polled) -> None:
        """Each reject to the dead-letter topic, keyed by where it came from.

        A replay after a crash may send a dead letter again (they are at-least-once); it then
        carries the same key, ``topic/partition/offset``, so a reader keeps one per key.
        """
        for r in rejects:
            topic, partition, offset = where.source(r.row)
            source = f"{topic}/{partition}/{offset}".encode()
            value = msgspec.json.encode(
                {
                    "code": r.code,
                    "reason": r.reason,
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "raw_b64": base64.b64encode(r.raw).decode(),
                }
            )
            self.producer.send(
                self.config.topics.dlq,
                key=source,
                value=value,
                headers=[("encore.code", r.code.encode()), ("encore.source", source)],
            )
        self.stats.dead_letters += len(rejects)
        for r in rejects:
            self.stats.dead_by_code[r.code] = self.stats.dead_by_code.get(r.code, 0) + 1

    def _late(self, imps: join.RejectedImpressions, outs: join.RejectedOutcomes) -> None:
        reasons_i = {
            join.IMPRESSION_LATE: "impression_late",
            join.IMPRESSION_DUPLICATE: "impression_duplicate",
        }
        reasons_o = {
            join.OUTCOME_LATE: "outcome_late",
            join.OUTCOME_CLOSED: "outcome_after_window",
            join.OUTCOME_ORPHAN: "outcome_orphan",
            join.OUTCOME_OVERFLOW: "outcome_overflow",
        }
        for key, ts, reason in zip(
            imps.request_key.tolist(), imps.ts_ms.tolist(), imps.reason.tolist(), strict=True
        ):
            self.producer.send(
                self.config.topics.late,
                value=msgspec.json.encode(
                    {"kind": reasons_i.get(reason, str(reason)), "request_key": key, "ts": ts}
                ),
            )
        for key, ts, pos, reason in zip(
            outs.request_key.tolist(),
            outs.ts_ms.tolist(),
            outs.position.tolist(),
            outs.reason.tolist(),
            strict=True,
        ):
            self.producer.send(
                self.config.topics.late,
                value=msgspec.json.encode(
                    {
                        "kind": reasons_o.get(reason, str(reason)),
                        "request_key": key,
                        "ts": ts,
                        "position": pos,
                    }
                ),
            )
        self.stats.late += int(imps.request_key.size + outs.request_key.size)
        for reason in imps.reason.tolist():
            kind = reasons_i.get(reason, str(reason))
            self.stats.late_by_kind[kind] = self.stats.late_by_kind.get(kind, 0) + 1
        for reason in outs.reason.tolist():
            kind = reasons_o.get(reason, str(reason))
            self.stats.late_by_kind[kind] = self.stats.late_by_kind.get(kind, 0) + 1

    def _publish_joined(self, records: JoinedRecords) -> None:
        """Each joined record as one JSON message (the Parquet log's columns), for live OPE."""
        for row in to_table(records).to_pylist():
            self.producer.send(
                self.config.topics.joined,
                key=str(row["user_id"]).encode(),
                value=msgspec.json.encode(row),
            )

    def caught_up(self) -> bool:
        """True when the consumer owns partitions and has read every one of them to its end."""
        owned = self.consumer.assignment()
        if not owned:
            return False
        ends = self.consumer.end_offsets(list(owned))
        return all(self.consumer.position(tp) >= end for tp, end in ends.items())

    def publish_snapshot(self) -> None:
        self.producer.send(
            self.config.topics.snapshots,
            key=self.engine.policy.spec.name.encode(),
            value=self.snapshot_bytes(),
        )
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
        self.open()
        try:
            start = self.ticks()
            # start-up objects frozen, young collections rarer, a full collection every 5 s
            with quiet_gc(now_ms=start) as collector:
                last_ckpt = last_snap = last_tick = last_data = last_got = start
                events_at_ckpt = self.stats.events
                while not stop.is_set():
                    got = self.poll_once()
                    self.poll_deltas()
                    now = self.ticks()
                    if self.watch is not None and self.watch.tick(now):
                        self.stats.rejoins += 1
                    if got:
                        last_data = last_got = now
                        if self._compiling is None:
                            self._start_compiling()  # the learners, while the next polls decode
                    elif exit_when_idle_ms is not None and now - last_data >= exit_when_idle_ms:
                        if self.caught_up():
                            break
                        last_data = now
                    if (
                        self.stats.events - events_at_ckpt >= cc.every_events
                        or now - last_ckpt >= cc.every_ms
                    ):
                        if self.stats.events > events_at_ckpt:
                            self.write_checkpoint()
                        events_at_ckpt, last_ckpt = self.stats.events, now
                    if now - last_snap >= self.config.rerank.snapshot_every_ms:
                        self.publish_snapshot()
                        last_snap = now
                    if collector.tick(now):
                        self.stats.gc_collections = collector.collections
                        self.stats.gc_seconds = collector.seconds
                    if now - last_tick >= min(tick_ms, self.config.metrics.refresh_ms):
                        self._refresh_stats()
                        self.publish_metrics()
                        if self.stalled(now, last_got):
                            self.restart_consumer()
                        if self.log is not None:
                            self.log.roll_if_due()
                        if on_tick is not None:
                            on_tick(self)
                        last_tick = now
                self.write_checkpoint()
                self.publish_snapshot()
                self._refresh_stats()
                self.publish_metrics()
                return self.stats
        finally:
            self.close()

    def metrics_snapshot(self) -> dict[str, Any]:
        """The daemon's numbers in the form ``streaming.metrics`` and ``encore status`` take."""
        s, c = self.stats, self.stats.counters
        sums = self.state.sums
        loss = sums.get("model_loss_sum", 0.0) / max(sums.get("model_rows", 0.0), 1.0)
        return {
            "now_ms": self.clock(),
            "started_ms": s.started_ms,
            "events_total": dict(s.events_by_topic),
            "outcomes_total": int(c.get("outcomes", 0)),
            "joined_total": int(c.get("joined", 0)),
            "closed_total": int(c.get("closed", 0)),
            "late_total": dict(s.late_by_kind),
            "dead_letters_total": dict(s.dead_by_code),
            "reward_mean": {k: tot / max(cnt, 1) for k, (tot, cnt) in s.reward_by_policy.items()},
            "model_log_loss": {self.engine.reward_model.spec.name: loss},
            "consumer_lag": dict(s.lag),
            "checkpoints_total": s.checkpoints,
            "snapshots_total": s.snapshots,
            "last_checkpoint_ms": s.last_checkpoint_ms,
            "handoffs_total": {
                "published": s.handoffs_published,
                "installed": s.handoffs_installed,
                "started_fresh": s.partitions_started_fresh,
            },
            "rejoins_total": s.rejoins,
            "consumer_restarts_total": s.consumer_restarts,
            "gc_collections_total": s.gc_collections,
            "gc_seconds_total": s.gc_seconds,
            "align_pauses_total": s.align_pauses,
        }

    def publish_metrics(self) -> None:
        """Refresh the Prometheus numbers and the status file ``encore status`` reads."""
        if self.consumer is not None:
            try:
                owned = list(self.consumer.assignment())
                ends = self.consumer.end_offsets(owned) if owned else {}
                self.stats.lag = {
                    f"{tp.topic}/{tp.partition}": max(int(end) - int(self.consumer.position(tp)), 0)
                    for tp, end in ends.items()
                }
            except Exception as exc:  # lag is best effort: never stop learning for it
                log.debug("consumer lag unavailable: %s", exc)
        self.metrics.update_from(self.metrics_snapshot())
        write_status(status_path(self.config), self.metrics.snapshot())

    def _refresh_stats(self) -> None:
        self.stats.counters = {**self.state.counters, **join_counters(self.state)}
        self.stats.reward_by_policy = {
            self._names.get(k, str(k)): v for k, v in self.state.reward_by_policy.items()
        }


def _use_compilation_cache(path: Path) -> tuple[Any, Any] | None:
    """Point JAX's persistent cache at ``path`` unless this process already has one.

    Returns:
        The settings to restore on close, or None when the cache was left as it was.
    """
    current = jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    if current:
        if Path(current) != path:
            log.info("JAX compilation cache stays at %s (set before this worker opened)", current)
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # compiling every time is slower, never wrong
        log.warning("no JAX compilation cache at %s: %s", path, exc)
        return None
    before = (current, jax.config.jax_persistent_cache_min_compile_time_secs)  # pyright: ignore[reportAttributeAccessIssue]
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # ours take ~0.3-1.5 s
    log.info("JAX compilation cache at %s", path)
    return before


def _restore_compilation_cache(before: tuple[Any, Any]) -> None:
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


class _Polled:
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


def _good_partitions(where: _Polled, rejects: list[Reject]) -> npt.NDArray[np.int32]:
    """The partition of every message that decoded, in order (rejects removed)."""
    part = where.partition_of_each()
    if rejects:
        part = np.delete(part, [r.row for r in rejects])
    return part


def summary_line(d: Daemon) -> str:
    s = d.stats
    c = s.counters
    elapsed = max(d.clock() - s.started_ms, 1) / 1000.0
    rewards = "  ".join(
        f"{name}={tot / max(cnt, 1):.3f} (n={cnt})"
        for name, (tot, cnt) in sorted(s.reward_by_policy.items())
    )
    return (
        f"{s.events:,} events ({s.events / elapsed:,.0f}/s)  joined {c.get('joined', 0):,}  "
        f"closed {c.get('closed', 0):,}  dlq {s.dead_letters}  late {s.late}  "
        f"ckpt {s.checkpoints}  top-reward {rewards}"
    )


def reward_table(stats: Stats) -> Mapping[str, float]:
    return {name: tot / max(cnt, 1) for name, (tot, cnt) in stats.reward_by_policy.items()}
