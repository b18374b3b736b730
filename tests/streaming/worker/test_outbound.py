"""``streaming.worker.outbound.Outbound`` without a broker: a fake producer whose futures the test settles."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
)
from kafka.future import Future

from streaming.events.contract import Reject
from streaming.worker.outbound import RECORD_OVERHEAD, Outbound, SideOutputRefusedError
from streaming.worker.side_topics import REASON_MAX_CHARS, dead_letter


class FakeProducer:
    """Hands out futures (``sent``, in order); ``answer`` settles each one a flush reaches."""

    def __init__(self, answer: Callable[[str, bytes], BaseException | None] | None = None):
        self.sent: list[tuple[str, bytes | None, bytes, Future]] = []
        self.answer = answer or _accept
        self.raise_on_send: BaseException | None = None
        self.closed = False

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: Any = None) -> Future:
        if self.raise_on_send is not None:
            raise self.raise_on_send
        future = Future()
        self.sent.append((topic, key, value, future))
        return future

    def flush(self, timeout: float | None = None) -> None:
        for topic, _, value, future in self.sent:
            if not future.is_done:
                error = self.answer(topic, value)
                if error is None:
                    future.success(object())
                else:
                    future.failure(error)

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def _accept(topic: str, value: bytes) -> BaseException | None:
    return None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def outbound(producer: FakeProducer, *, limit: int = 10_000, max_refused: int = 5) -> Outbound:
    return Outbound(
        producer,
        name="test",
        max_request_bytes=1 << 30,
        topic_bytes={"t": limit + RECORD_OVERHEAD},
        default_topic_bytes=1 << 20,
        max_refused=max_refused,
        clock=Clock(),
    )


def test_a_record_too_large_for_its_topic_is_shrunk_to_fit_or_refused() -> None:
    producer = FakeProducer()
    out = outbound(producer, limit=100)
    fits = out.send("t", key=b"k", value=b"x" * 50)
    shrunk = out.send("t", key=b"k", value=b"x" * 500, shrink=lambda budget: b"y" * budget)
    refused = out.send("t", key=b"k", value=b"x" * 500)
    out.flush()
    assert (fits.state, shrunk.state, refused.state) == ("acked", "acked", "refused")
    assert [v for _, _, v, _ in producer.sent] == [b"x" * 50, b"y" * 99]  # key + value = 100
    assert shrunk.truncated and out.counts.truncated == {"t": 1}
    assert out.counts.refused == {"t": 1} and "over the 100" in refused.error


def test_timeouts_are_sent_again_until_acknowledged_and_flush_waits_them_out() -> None:
    away = [True]
    producer = FakeProducer(lambda t, v: KafkaTimeoutError("expired") if away[0] else None)
    out = outbound(producer)
    clock: Clock = out.clock  # type: ignore[assignment]
    a = out.send("t", value=b"a")
    producer.flush()  # the broker is away: the record expires
    out.poll()
    assert a.state == "pending" and out.pending == 1 and out.waiting_s() == 0.0
    clock.now = 0.5
    assert out.waiting_s() == 0.5
    b = out.send("t", value=b"b")  # queued behind the one that waits, not due again yet
    assert [v for _, _, v, _ in producer.sent] == [b"a"]
    away[0] = False
    clock.now = 2.0
    out.flush()
    assert (a.state, b.state) == ("acked", "acked") and out.pending == 0
    assert [v for _, _, v, _ in producer.sent] == [b"a", b"a", b"b"]  # in order, a twice
    assert out.counts.resent == 2 and out.waiting_s() == 0.0


def test_a_send_that_finds_no_broker_queues_and_never_raises() -> None:
    producer = FakeProducer()
    producer.raise_on_send = KafkaTimeoutError("Failed to update metadata after 5.0 secs.")
    out = outbound(producer)
    clock: Clock = out.clock  # type: ignore[assignment]
    sent = [out.send("t", value=bytes([i])) for i in range(3)]
    assert producer.sent == [] and out.pending == 3
    producer.raise_on_send = None
    out.poll()  # not due yet
    assert producer.sent == []
    clock.now = 5.0
    out.flush()
    assert [s.state for s in sent] == ["acked"] * 3
    assert [v for _, _, v, _ in producer.sent] == [b"\x00", b"\x01", b"\x02"]


def test_refusals_past_the_limit_raise_and_go_on_raising() -> None:
    producer = FakeProducer(lambda t, v: InvalidRecordError("compacted topic, no key"))
    out = outbound(producer, max_refused=2)
    for i in range(2):
        out.send("t", value=bytes([i]))
    out.flush()
    assert out.counts.refused == {"t": 2}  # within the limit: counted, dropped
    out.send("t", value=b"third")
    with pytest.raises(SideOutputRefusedError, match="3 records refused"):
        out.flush()
    for call in (out.poll, out.flush, lambda: out.send("t", value=b"more")):
        with pytest.raises(SideOutputRefusedError):
            call()


def test_refused_as_too_large_by_the_broker_goes_again_in_its_smallest_form() -> None:
    producer = FakeProducer(
        lambda t, v: MessageSizeTooLargeError("too big") if len(v) > 3 else None
    )
    out = outbound(producer)
    sent = out.send("t", value=b"x" * 50, shrink=lambda budget: b"s" * min(budget, 50))
    out.flush()
    assert sent.state == "acked" and sent.value == b"" and out.counts.truncated == {"t": 1}


def test_the_companions_of_a_refused_record_go_again() -> None:
    first = [True]

    def answer(topic: str, value: bytes) -> BaseException | None:
        if value == b"bad":
            return InvalidRecordError("bad")
        if first[0]:
            first[0] = False
            return KafkaError("Failed to append record because it was part of a batch ...")
        return None

    out = outbound(FakeProducer(answer))
    bad, good = out.send("t", value=b"bad"), out.send("t", value=b"good")
    out.flush()
    assert (bad.state, good.state) == ("refused", "acked")


def test_a_newer_record_of_the_same_key_supersedes_one_that_failed() -> None:
    producer = FakeProducer(lambda t, v: KafkaTimeoutError("expired") if v == b"old" else None)
    out = outbound(producer)
    old = out.send("t", key=b"policy", value=b"old", newest=True)
    new = out.send("t", key=b"policy", value=b"new", newest=True)
    assert out.pending_of("t", b"policy") == 2
    out.flush()
    assert (old.state, new.state) == ("superseded", "acked")
    assert [v for _, _, v, _ in producer.sent] == [b"old", b"new"]


def test_a_dead_letter_too_large_keeps_a_prefix_with_the_size_and_digest() -> None:
    raw = bytes(range(256)) * 400
    r = Reject("invalid_json", "x" * 5000, raw, 0)  # pyright: ignore[reportArgumentType]
    whole = json.loads(dead_letter(r, ("t", 1, 7), max_bytes=None, prefix_bytes=10))
    assert base64.b64decode(whole["raw_b64"]) == raw and whole["truncated"] is False
    assert whole["size"] == len(raw) and whole["sha256"] == hashlib.sha256(raw).hexdigest()
    for budget, prefix in ((2_000, 10_000), (50_000, 1_000), (0, 0)):
        value = dead_letter(r, ("t", 1, 7), max_bytes=budget, prefix_bytes=prefix)
        cut = json.loads(value)
        kept = base64.b64decode(cut["raw_b64"])
        assert cut["truncated"] is True and raw.startswith(kept) and len(kept) <= prefix
        assert (cut["size"], cut["sha256"]) == (whole["size"], whole["sha256"])
        assert (cut["topic"], cut["partition"], cut["offset"], cut["code"]) == ("t", 1, 7, r.code)
        assert len(cut["reason"]) == REASON_MAX_CHARS
        assert len(value) <= max(budget, 1_300)  # a letter without bytes: the rest only
