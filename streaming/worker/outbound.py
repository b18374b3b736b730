"""Sends tracked until the broker acknowledges them: what the daemon writes besides its state.

kafka-python's ``send`` returns a future and moves on. A record the broker refuses, or one that
timed out while the broker was away, fails only its future, and nothing else notices: unchecked,
it is lost without a trace. An ``Outbound`` wraps one producer and keeps every record it sent
until the broker acknowledged it, and settles every failure (``poll``, ``flush``):

- a failure that may pass (a timeout, a lost connection, no leader: ``kafka.clients.passing``) sends
  the record again, as often as it takes; while the broker is away new records queue behind it,
  so a send never blocks longer than kafka-python's ``max_block_ms`` per retry and an outage of
  any length delays records without dropping them;
- a record refused for its size is sent again in the smallest form its sender can make
  (``shrink(0)``: a dead letter without the original's bytes), counted as truncated;
- any other refusal is counted by topic and logged. Once more than ``max_refused`` records were
  refused, ``send``, ``poll`` and ``flush`` raise :class:`SideOutputRefusedError`, and go on
  raising it: the daemon stops (``encore run`` exits ``EXIT_SIDE_REFUSED``) before a checkpoint
  moves past events whose output was refused.

Records are measured against their topic's limit (the smaller of the topic's
``max.message.bytes`` and the producer's ``max_request_size``, less room for the batch's
framing) before they are sent: one over it is shrunk to fit (``shrink(budget)``, counted as
truncated) or refused here, without a request.

``flush()`` returns once every record sent so far is acknowledged or counted as refused, waiting
out an outage however long (with a warning every ``timeout`` seconds): the daemon calls it before
a checkpoint stores offsets past the events those records came from, so they are at-least-once.

The wrapped producer should not be idempotent: kafka-python turns an idempotent producer that has
one record refused for good into one that fails every later record.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streaming.kafka.clients import KafkaError, KafkaTimeoutError, passing, too_large

log = logging.getLogger(__name__)

__all__ = ["RECORD_OVERHEAD", "Counts", "Outbound", "Sent", "SideOutputRefusedError"]

RECORD_OVERHEAD = 1024
"""Bytes of a topic's limit left for what the wire adds to a record's key, value and headers
(a record batch's header is 61 bytes, a record's framing a few dozen)."""
RESEND_AFTER_S = 1.0  # how long records that failed to go out wait before they are sent again
WARN_EVERY_S = 30.0  # at most one warning per this long while the broker does not answer
MAX_COMPANION_RESENDS = 3  # sends again of a record failed for its batch's refused records

State = Literal["pending", "acked", "refused", "superseded"]


class SideOutputRefusedError(RuntimeError):
    """More records were refused for good than ``kafka.side_max_refused`` allows."""


@dataclass(eq=False, slots=True)
class Sent:
    """One record handed to an ``Outbound``, and what became of it (``state``)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    shrink: Callable[[int], bytes] | None  # its value in at most so many bytes, where it can be
    newest: bool  # only the newest record of its topic and key matters (a snapshot)
    seq: int
    state: State = "pending"
    error: str = ""  # why it was refused
    truncated: bool = False
    companions: int = 0  # times it failed only for sharing a batch with a refused record

    @property
    def size(self) -> int:
        """The bytes of its key, value and headers (what a topic's limit is measured against)."""
        heads = sum(len(k.encode()) + len(v) for k, v in self.headers)
        return len(self.key or b"") + len(self.value) + heads


@dataclass
class Counts:
    """What the outbounds that share it did (the daemon's metrics), and the refusal past the
    limit that stops them all (``fatal``)."""

    acked: int = 0
    resent: int = 0  # records sent again after a failure that may pass
    truncated: dict[str, int] = field(default_factory=dict[str, int])  # by topic
    refused: dict[str, int] = field(default_factory=dict[str, int])  # by topic
    superseded: int = 0  # records of a key a newer one replaced before they went out
    fatal: SideOutputRefusedError | None = None


class Outbound:
    """``producer``'s sends, each tracked until the broker acknowledges or refuses it for good.

    Args:
        producer: a kafka-python ``KafkaProducer`` (not idempotent; see the module docstring).
        name: what the log calls it ("side outputs", say).
        max_request_bytes: the producer's ``max_request_size``.
        topic_bytes: each topic's ``max.message.bytes``, as far as known.
        default_topic_bytes: the ``max.message.bytes`` assumed for a topic not in ``topic_bytes``.
        max_refused: records refused for good that are counted and dropped; one more raises
            :class:`SideOutputRefusedError`.
        counts: where to count (shared by outbounds that share ``max_refused``); a new one if
            None.
        clock: seconds on a clock that never steps.
    """

    def __init__(
        self,
        producer: Any,
        *,
        name: str,
        max_request_bytes: int,
        topic_bytes: Mapping[str, int],
        default_topic_bytes: int,
        max_refused: int,
        counts: Counts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self.name = name
        self.max_request_bytes = max_request_bytes
        self.topic_bytes = dict(topic_bytes)
        self.default_topic_bytes = default_topic_bytes
        self.max_refused = max_refused
        self.clock = clock
        self.counts = counts if counts is not None else Counts()
        self._seq = itertools.count()
        self._pending: dict[int, Sent] = {}  # sent or queued, not yet settled
        self._failed: deque[tuple[Sent, BaseException]] = deque()  # from the producer's thread
        self._queue: deque[Sent] = deque()  # to send (again), in order, once the broker answers
        self._newest: dict[tuple[str, bytes | None], int] = {}  # of ``newest`` records, by key
        self._retry_at = 0.0
        self._away_since: float | None = None  # when records began to wait for the broker
        self._warned_at = -WARN_EVERY_S

    # ------------------------------------------------------------------ what callers use
    def limit(self, topic: str) -> int:
        """The bytes a record's key, value and headers may take on ``topic``."""
        topic_bytes = self.topic_bytes.get(topic, self.default_topic_bytes)
        return min(topic_bytes, self.max_request_bytes) - RECORD_OVERHEAD

    def send(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        shrink: Callable[[int], bytes] | None = None,
        newest: bool = False,
    ) -> Sent:
        """Send a record (kafka-python's ``send``, tracked); returns it, to look at its ``state``.

        ``shrink(budget)``: the value in at most ``budget`` bytes (as near as it can), used when
        this one is too large for the topic. ``newest``: a record that a later one of the same
        topic and key replaces (a compacted topic's snapshot) is not sent again after a failure
        once a later one was sent, so the newest is the last to land.
        """
        self._raise_if_fatal()
        sent = Sent(topic, key, value, list(headers or ()), shrink, newest, next(self._seq))
        if newest:
            self._newest[(topic, key)] = sent.seq
        limit = self.limit(topic)
        if sent.size > limit:
            why = f"{sent.size:,} bytes, over the {limit:,} that {topic} takes"
            self._shrink(sent, limit - (sent.size - len(sent.value)), why)
            if sent.size > limit:
                self._refuse(sent, f"{sent.size:,} bytes, over the {limit:,} that {topic} takes")
                self._raise_if_fatal()
                return sent
        self._pending[sent.seq] = sent
        if self._queue:  # the broker is away: after the records that wait for it, in order
            self._queue.append(sent)
        else:
            self._submit(sent)
        self.poll()
        return sent

    def poll(self) -> None:
        """Settle the failures reported so far, send again what waits for the broker (when due),
        and raise :class:`SideOutputRefusedError` past the limit. Never blocks longer than
        kafka-python's ``max_block_ms``."""
        while self._failed:
            self._settle(*self._failed.popleft())
        if self._queue and self.clock() >= self._retry_at:
            self._send_queued()
        self._raise_if_fatal()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every record sent so far is acknowledged or refused for good.

        However long the broker is away (warning every 30 s while it is): a record given up on
        would be lost. ``timeout`` (seconds, kafka-python's signature) bounds each wait on the
        producer between two checks, not the whole.
        """
        step = min(timeout, WARN_EVERY_S) if timeout is not None and timeout > 0 else WARN_EVERY_S
        started = self.clock()
        while True:
            self.poll()
            if not self._pending:
                return
            queued = sum(1 for s in self._queue if s.state == "pending")
            if queued >= len(self._pending):  # nothing in flight: wait to send them again
                time.sleep(max(0.0, min(self._retry_at - self.clock(), step)))
            else:
                try:
                    self.producer.flush(timeout=step)
                except KafkaTimeoutError:
                    self._away(since=started)
            if self._pending and self._away_since is not None:
                self._warn_waiting()

    def close(self, timeout: float | None = None) -> None:
        """Close the producer (records not yet sent are dropped: flush first)."""
        self.producer.close(timeout=timeout)

    @property
    def pending(self) -> int:
        """Records sent or queued, neither acknowledged nor refused yet."""
        return len(self._pending)

    def pending_of(self, topic: str, key: bytes | None) -> int:
        """Records of ``topic`` and ``key`` not acknowledged yet (snapshots in flight, say)."""
        return sum(1 for s in list(self._pending.values()) if s.topic == topic and s.key == key)

    def waiting_s(self) -> float:
        """Seconds records have waited for a broker that does not answer (0: it answers)."""
        since = self._away_since
        return 0.0 if since is None else max(0.0, self.clock() - since)

    # ------------------------------------------------------------------ inside
    def _submit(self, sent: Sent) -> bool:
        """Hand ``sent`` to the producer; False (and queued) when the broker does not answer."""
        try:
            future = self.producer.send(
                sent.topic, key=sent.key, value=sent.value, headers=sent.headers or None
            )
        except KafkaError as exc:  # raised before a request: no topic metadata, too large, ...
            if passing(exc):
                self._queue.appendleft(sent)
                self._away()
                return False
            self._failed.append((sent, exc))
            return True
        if future is None:  # a producer that answers at once (tests)
            self._acked(sent)
        else:
            future.add_callback(self._on_acked, sent)
            future.add_errback(self._on_failed, sent)
        return True

    def _send_queued(self) -> None:
        while self._queue:
            sent = self._queue.popleft()
            if sent.state != "pending":
                continue
            if sent.newest and self._superseded(sent):
                continue
            self.counts.resent += 1
            if not self._submit(sent):
                return

    def _on_acked(self, sent: Sent, _metadata: Any) -> None:  # the producer's thread
        self._acked(sent)

    def _on_failed(self, sent: Sent, exc: BaseException) -> None:  # the producer's thread
        self._failed.append((sent, exc))

    def _acked(self, sent: Sent) -> None:
        sent.state = "acked"
        self._pending.pop(sent.seq, None)
        self.counts.acked += 1
        self._away_since = None

    def _settle(self, sent: Sent, exc: BaseException) -> None:
        if sent.state != "pending":
            return
        if passing(exc):
            if sent.newest and self._superseded(sent):
                return
            self._queue.append(sent)
            self._away()
            return
        # kafka-python fails the records that shared a batch with a refused one with a bare
        # KafkaError: they were not refused themselves, so they go again (a few times at most).
        innocent = type(exc) is KafkaError and sent.companions < MAX_COMPANION_RESENDS
        if innocent or (too_large(exc) and self._shrink(sent, 0, f"{type(exc).__name__}: {exc}")):
            sent.companions += innocent
            self.counts.resent += 1
            if self._queue:
                self._queue.append(sent)
            else:
                self._submit(sent)
            return
        self._refuse(sent, f"{type(exc).__name__}: {exc}")

    def _shrink(self, sent: Sent, budget: int, why: str) -> bool:
        """Replace ``sent``'s value with its form in at most ``budget`` bytes; False if it has
        none or that is no smaller."""
        if sent.shrink is None:
            return False
        smaller = sent.shrink(max(budget, 0))
        if len(smaller) >= len(sent.value):
            return False
        sent.value = smaller
        if not sent.truncated:
            sent.truncated = True
            self.counts.truncated[sent.topic] = self.counts.truncated.get(sent.topic, 0) + 1
        log.warning(
            "%s: a record for %s (key %r) is too large (%s); sending it truncated to %d bytes",
            self.name,
            sent.topic,
            sent.key,
            why,
            len(sent.value),
        )
        return True

    def _superseded(self, sent: Sent) -> bool:
        """True (and settled) if a later record of ``sent``'s topic and key was sent."""
        later = self._newest.get((sent.topic, sent.key), sent.seq) > sent.seq
        if later:
            sent.state = "superseded"
            self._pending.pop(sent.seq, None)
            self.counts.superseded += 1
        return later

    def _refuse(self, sent: Sent, why: str) -> None:
        sent.state, sent.error = "refused", why
        self._pending.pop(sent.seq, None)
        self.counts.refused[sent.topic] = self.counts.refused.get(sent.topic, 0) + 1
        total = sum(self.counts.refused.values())
        if self.counts.fatal is not None:  # stopping already: its error says how many
            return
        log.error(
            "%s: the record for %s with key %r was refused and is dropped (%s); %d refused so "
            "far, kafka.side_max_refused = %d",
            self.name,
            sent.topic,
            sent.key,
            why,
            total,
            self.max_refused,
        )
        if total > self.max_refused:
            self.counts.fatal = SideOutputRefusedError(
                f"{self.name}: {total} records refused for good, over kafka.side_max_refused = "
                f"{self.max_refused} (by topic: {self.counts.refused}); the last, for "
                f"{sent.topic}: {why}. Fix the topic (its max.message.bytes, cleanup.policy, "
                "ACLs) and restart: the events since the last checkpoint are read again"
            )

    def _raise_if_fatal(self) -> None:
        if self.counts.fatal is not None:
            raise SideOutputRefusedError(*self.counts.fatal.args)

    def _away(self, since: float | None = None) -> None:
        """Records wait for a broker that does not answer (since ``since``, if known): send
        them again later."""
        now = self.clock()
        if self._away_since is None:
            self._away_since = now if since is None else since
        self._retry_at = now + RESEND_AFTER_S

    def _warn_waiting(self) -> None:
        now = self.clock()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "%s: the broker has not answered for %.0f s; %d records wait for it (resent %d)",
                self.name,
                self.waiting_s(),
                len(self._pending),
                self.counts.resent,
            )
