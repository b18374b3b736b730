"""With its sibling :mod:`streaming.kafka.records` (lean consumer records), the only module that
imports ``kafka``: clients, topics, where the cluster is, and which errors are waits.

Every client gets the security settings of ``KafkaConfig``; consumers run with
``enable_auto_commit=False`` because encore's checkpoint, not the broker, is the source of truth
for offsets (offsets are still committed after each checkpoint so lag shows in the usual tools).

Why one long module: it is the one place that imports ``kafka`` (beside the records), so every
kind of client, the topic specifications and the classification of kafka-python's errors live
together.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import kafka
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import (
    AuthorizationError,
    BrokerNotAvailableError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from streaming.config import Config, KafkaConfig, Topics
from streaming.kafka.broker import LocalBroker, default_state_dir
from streaming.kafka.records import (
    SUPPORTED_KAFKA_PYTHON,
    LeanRecord,
    use_lean_records,
    uses_lean_records,
)

log = logging.getLogger(__name__)

__all__ = [
    "HANDOFF_MAX_BYTES",
    "UNREACHABLE",
    "AsyncConsumerRebalanceListener",
    "AuthorizationError",
    "ConsumerRebalanceListener",
    "KafkaError",
    "KafkaTimeoutError",
    "LeanRecord",
    "OffsetAndMetadata",
    "TopicPartition",
    "bootstrap_servers",
    "client_state",
    "describe_group",
    "ensure_topics",
    "group_line",
    "make_admin",
    "make_consumer",
    "make_producer",
    "max_message_bytes",
    "member_id",
    "passing",
    "reachable",
    "rejoin",
    "serve_parked",
    "too_large",
    "topic_specs",
    "use_lean_records",
    "uses_lean_records",
]


# kafka-python 3 has it; the typeshed stubs pyright falls back to describe kafka-python 2.
AsyncConsumerRebalanceListener: Any = importlib.import_module(
    "kafka"
).AsyncConsumerRebalanceListener
HANDOFF_MAX_BYTES = 64 * 1024 * 1024  # one partition's open windows, compressed

# kafka-python's base of the errors it retries; the typeshed stubs (kafka-python 2) lack it.
_RETRIABLE: type[KafkaError] = importlib.import_module("kafka.errors").RetriableError
UNREACHABLE: tuple[type[BaseException], ...] = (_RETRIABLE, BrokerNotAvailableError)
"""What kafka-python raises while the cluster does not answer (a timeout, a lost connection, no
leader or coordinator yet): a wait, not a failure. ``passing`` tells a completed send's error."""


def passing(exc: BaseException) -> bool:
    """True for an error that may pass by itself (the broker away, a leader moving): worth
    waiting for and sending again; False for a refusal that the same request meets again."""
    return isinstance(exc, UNREACHABLE)


def too_large(exc: BaseException) -> bool:
    """True for a record (or batch) refused for its size, by the producer or the broker."""
    return isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError)


def reachable(servers: str, timeout_s: float = 1.0) -> bool:
    """True if any of ``servers`` (``host:port,...``) accepts a TCP connection.

    What a client's timeouts cannot tell apart, this does: a broker that is away (stopped,
    unreachable) refuses or drops the connection; a client stuck with a live broker connects.
    """
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def serve_parked(consumer: Any) -> bool:
    """Let ``consumer``'s next poll hand back the records kafka-python parked for a resumed partition.

    kafka-python 3.0.12 keeps the records it had fetched for a partition when it is paused
    (KAFKA-7548) and hands them back once it is resumed, one partition per poll, but only while
    its in-line slot (``Fetcher._next_partition_records``) is None. The slot keeps the last
    records it served after they are read to the end (empty, so falsy, but not None), and a
    partition is not fetched again while records of it are parked: a resumed partition can then
    wait forever. A daemon that paused and resumed partitions read nothing for minutes with lag
    left that way (tests/integration/test_align.py). Call this before each poll: it empties such a
    slot (the poll loop treats it as empty anyway) whenever records are parked.

    Returns False, and touches nothing, on a kafka-python other than the one it was written for
    (``SUPPORTED_KAFKA_PYTHON``): a caller should then not pause partitions it means to resume.
    """
    if getattr(kafka, "__version__", "?") not in SUPPORTED_KAFKA_PYTHON:
        return False
    fetcher = getattr(consumer, "_fetcher", None)
    slot = getattr(fetcher, "_next_partition_records", None)
    if slot is not None and not slot and getattr(fetcher, "_paused_partition_records", None):
        cast(Any, fetcher)._next_partition_records = None
    return True


def client_state(consumer: Any) -> str:
    """One line on where a group consumer stands, for a warning about one that stopped fetching:
    its coordinator and membership (state, generation, a join in flight), its assignment (how
    many partitions paused, how many fetchable: unpaused, positioned, not being revoked) and its fetcher (nodes with
    a fetch in flight, responses waiting, records parked for paused partitions).

    Reads kafka-python 3's internals where they are; what a client lacks reads ``?``. Never
    raises: it is only ever called on a client already in trouble.
    """

    def read(get: Any) -> object:
        try:
            return get()
        except Exception:
            return "?"

    c: Any = consumer
    co: Any = getattr(c, "_coordinator", None)
    fe: Any = getattr(c, "_fetcher", None)
    sub: Any = getattr(c, "_subscription", None)
    join = read(lambda: co._join_task is not None and not co._join_task.is_done)
    fields = {
        "coordinator": read(lambda: co.coordinator_id),
        "member": read(lambda: co.state),
        "generation": read(lambda: co._generation.generation_id),
        "rejoin needed": read(co.need_rejoin) if co is not None else "?",
        "join in flight": join,
        "assigned": read(lambda: len(c.assignment())),
        "paused": read(lambda: len(c.paused())),
        "fetchable": read(lambda: sum(bool(s.is_fetchable()) for s in sub.assignment.values())),
        "fetching from": read(lambda: sorted(fe._nodes_with_pending_fetch_requests)),
        "responses waiting": read(lambda: len(fe._completed_fetches)),
        "parked": read(
            lambda: len(fe._paused_partition_records) + len(fe._paused_completed_fetches)
        ),
    }
    return ", ".join(f"{k} {v}" for k, v in fields.items())


class NoClusterError(RuntimeError):
    """No bootstrap servers were configured and no local broker is running."""


def bootstrap_servers(kafka: KafkaConfig, state_dir: Path | None = None) -> str:
    """The configured servers, or the address of the local broker ``encore broker start`` runs."""
    if kafka.bootstrap_servers:
        return kafka.bootstrap_servers
    info = LocalBroker(state_dir=state_dir or default_state_dir()).info()
    if info is None:
        raise NoClusterError(
            "no Kafka cluster: run `encore broker start` for a local one, or pass "
            "--bootstrap-servers HOST:PORT (or set ENCORE_KAFKA__BOOTSTRAP_SERVERS)"
        )
    return info.bootstrap_servers


def make_admin(kafka: KafkaConfig, servers: str) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=servers, client_id=f"{kafka.client_id}-admin", **kafka.security()
    )


def make_producer(kafka: KafkaConfig, servers: str, **overrides: Any) -> KafkaProducer:
    """A producer for keyed bytes: acks=all, idempotent, small linger for throughput.

    The daemon's producers pass ``enable_idempotence=False`` (see ``streaming.worker.outbound``): an
    idempotent kafka-python producer that has one record refused for good (too large, say) fails
    every record sent after it.
    """
    settings: dict[str, Any] = {
        "bootstrap_servers": servers,
        "client_id": f"{kafka.client_id}-producer",
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        **kafka.security(),
        **overrides,
    }
    return KafkaProducer(**settings)


def make_consumer(
    kafka: KafkaConfig,
    servers: str,
    *,
    group_id: str | None,
    topics: Sequence[str] = (),
    listener: Any = None,
    lean_records: bool = False,
    **overrides: Any,
) -> KafkaConsumer:
    """A consumer with auto-commit off; subscribed to ``topics`` (with ``listener``) if given.

    With ``lean_records``, its ``poll()`` returns :class:`LeanRecord` ``(offset, key, value)``
    tuples instead of kafka-python's ``ConsumerRecord`` (see :mod:`streaming.kafka.records`;
    refused with a warning for an unsupported kafka-python, then records stay stock).
    """
    settings: dict[str, Any] = {
        "bootstrap_servers": servers,
        "client_id": f"{kafka.client_id}-consumer",
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": kafka.max_poll_records,
        "max_partition_fetch_bytes": kafka.max_partition_fetch_bytes,
        "session_timeout_ms": kafka.session_timeout_ms,
        # kafka-python's 3 s default is over a third of a short session (it warns): a heartbeat
        # or two late and the member is expelled. client_options may still set it.
        "heartbeat_interval_ms": min(3000, max(kafka.session_timeout_ms // 3, 1)),
        **kafka.security(),
        **dict(kafka.client_options),
        **overrides,
    }
    consumer = KafkaConsumer(**settings)
    if lean_records:
        use_lean_records(consumer)
    if topics:
        # Fetch the topics' metadata before joining: a join that completes first gets no
        # partitions from the assignor, and kafka-python 3.0.12 does not always rejoin.
        _subscribe(consumer, topics, listener)
    return consumer


def rejoin(consumer: KafkaConsumer, topics: Sequence[str], listener: Any = None) -> None:
    """Leave the group and subscribe again, as ``make_consumer`` does: the next poll rejoins."""
    consumer.unsubscribe()
    _subscribe(consumer, topics, listener)


def member_id(consumer: KafkaConsumer) -> str | None:
    """This consumer's member id in its group (None until it joined); kafka-python 3's
    ``group_metadata``, which the typeshed stubs of kafka-python 2 do not list."""
    found = str(cast(Any, consumer).group_metadata().member_id or "")
    return found or None


def _subscribe(consumer: KafkaConsumer, topics: Sequence[str], listener: Any) -> None:
    """Fetch the topics' metadata, then subscribe (with ``listener`` if given): a join that
    completes before the metadata arrives gets no partitions from the assignor."""
    for topic in topics:
        consumer.partitions_for_topic(topic)
    if listener is not None:
        consumer.subscribe(list(topics), listener=listener)
    else:
        consumer.subscribe(list(topics))


def describe_group(kafka: KafkaConfig, servers: str, group_id: str) -> dict[str, Any]:
    """The group as the coordinator describes it (members and their decoded assignments).

    A group no member ever joined (the broker answers ``GroupIdNotFoundError``) is described as
    an empty, dead one, not as an error: it simply has no members yet."""
    admin = make_admin(kafka, servers)
    try:
        described: dict[str, Any] = cast(Any, admin).describe_groups([group_id])
        group = dict(described[group_id])
    finally:
        admin.close()
    if "GroupIdNotFound" in str(group.get("error") or ""):
        group.update(error=None, members=[], group_state="Dead")
    return group


def group_line(kafka: KafkaConfig, servers: str, group_id: str) -> str:
    """The group as its coordinator sees it, in one line: its state and each member (id, client,
    host). For a warning about a consumer that stopped fetching; never raises."""
    if not reachable(servers):
        return "not described (no broker answers)"
    try:
        group = describe_group(kafka, servers, group_id)
    except Exception as exc:
        return f"not described ({type(exc).__name__}: {exc})"
    members = [
        f"{m.get('member_id')} ({m.get('client_id')} on {m.get('client_host')})"
        for m in group.get("members") or []
    ]
    error = f", error {group['error']}" if group.get("error") else ""
    return f"{group.get('group_state')}, members [{', '.join(members)}]{error}"


def _compacted(topics: Topics, max_message_bytes: int) -> dict[str, Any]:
    """One partition, compacted soon after a new value lands: the newest value per key."""
    return {
        "num_partitions": 1,
        "replication_factor": topics.replication_factor,
        "configs": {
            "cleanup.policy": "compact",
            "segment.ms": "60000",
            "min.cleanable.dirty.ratio": "0.1",
            "max.message.bytes": str(max_message_bytes),
        },
    }


def topic_specs(topics: Topics) -> dict[str, dict[str, Any]]:
    """What ``encore topics create`` makes: name -> partitions, replication and configs."""
    day_ms = 24 * 3600 * 1000
    common = {"num_partitions": topics.partitions, "replication_factor": topics.replication_factor}
    return {
        topics.impressions: {**common, "configs": {"retention.ms": str(7 * day_ms)}},
        topics.outcomes: {**common, "configs": {"retention.ms": str(7 * day_ms)}},
        topics.dlq: {**common, "configs": {"retention.ms": str(30 * day_ms)}},
        topics.late: {**common, "configs": {"retention.ms": str(30 * day_ms)}},
        topics.deltas: {**common, "configs": {"retention.ms": str(day_ms)}},
        topics.joined: {**common, "configs": {"retention.ms": str(7 * day_ms)}},
        topics.snapshots: _compacted(topics, 16 * 1024 * 1024),
        topics.handoff: _compacted(topics, HANDOFF_MAX_BYTES),
        topics.catalogue: _compacted(topics, 1024 * 1024),
    }


def ensure_topics(
    config: Config,
    servers: str,
    *,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, str]:
    """Create the topics that are missing (idempotent); returns name -> "created" | "exists"."""
    specs = {**topic_specs(config.topics), **(extra or {})}
    admin = make_admin(config.kafka, servers)
    try:
        existing = set(admin.list_topics())
        missing = {name: dict(spec) for name, spec in specs.items() if name not in existing}
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                # kafka-python 3 takes a dict of specs; its inline annotations are the old ones.
                cast(Any, admin).create_topics(missing, raise_errors=False, wait_for_metadata=True)
        deadline = time.monotonic() + timeout_s
        while True:
            now = set(admin.list_topics())
            if set(specs) <= now:
                break
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"topics {sorted(set(specs) - now)} did not appear in {timeout_s} s"
                )
            time.sleep(0.1)
        return {name: ("created" if name in missing else "exists") for name in specs}
    finally:
        admin.close()


def max_message_bytes(kafka: KafkaConfig, servers: str, topics: Iterable[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker reports it (its own setting, or the
    broker's default). A topic the broker does not report is left out, and so is every topic
    when the admin client may not describe them (the error is logged): callers assume a bound.
    """
    names = sorted(set(topics))
    only = {"max.message.bytes": None}  # this key only, whatever its source
    try:
        admin = make_admin(kafka, servers)
    except KafkaError as exc:
        log.warning("could not read the topics' max.message.bytes: %s", exc)
        return {}
    try:
        described: dict[str, Any] = cast(Any, admin).describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, configs=cast(Any, only))
                for name in names
            ],
            config_filter="all",
        )
    except KafkaError as exc:
        log.warning("could not read the topics' max.message.bytes: %s", exc)
        return {}
    finally:
        admin.close()
    out: dict[str, int] = {}
    for name, configs in dict(described.get("topic") or {}).items():
        value = dict(configs or {}).get("max.message.bytes", {}).get("value")
        if value is not None:
            out[str(name)] = int(value)
    return out


def partitions_of(consumer: KafkaConsumer, topics: Iterable[str]) -> list[Any]:
    """Every partition of ``topics`` as the consumer's metadata knows them."""
    out: list[Any] = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic) or set()
        out.extend(TopicPartition(topic, p) for p in sorted(parts))
    return out
