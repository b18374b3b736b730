"""The re-ranking service: rank candidates with the newest policy snapshot, log what was served.

``RerankService`` follows the compacted snapshots topic in a background thread (every
``refresh_ms``), ranks each request with ``streaming.serving.reranker.Reranker`` (every choice with its
exact propensity) and sends the impression it served to the impressions topic, keyed by
``user_id``, so the daemon learns from it: the loop closes. Until the first snapshot arrives it
ranks with the policy's initial state (``snapshot_version`` 0).

A request is checked with exactly the rules the daemon applies to impressions: the service
runs ``streaming.events.decode_impression`` on the very bytes of the impression it logs (and,
for a request whose shapes are off, on the impression it would have logged, for the daemon's
own error code and reason), so a request the service accepts can never become a dead letter
downstream. Ranking itself is one ``streaming.serving.reranker.Reranker.rank`` call on float32 arrays.

Every impression it serves is logged, or counted: the encoded impression (key and value) is
checked against the impressions topic's ``max.message.bytes`` and the producer's
``max_request_size`` before the answer goes out, and one that does not fit is refused (413), as is
a request whose send fails at once (503), so nothing is served that could not be logged. A send
the broker refuses later (after the producer's retries) is counted as ``unlogged``, logged as a
warning, and turns ``/healthz`` to ``degraded`` for ``rerank.health_degraded_ms``; the failure
replaces the producer (kafka-python's idempotent producer stops sending after a refused batch) and
makes the service read the topic's limit again, so later requests are logged.

HTTP (stdlib ``ThreadingHTTPServer``, bound to ``127.0.0.1`` by default):

``POST /rank``
    body ``{"request_id"?: str, "user_id": str, "surface": str, "context": [d_user floats],
    "candidates": [str ids], "candidate_features": [[d_track floats] per candidate],
    "slate_size"?: int}`` (``slate_size`` defaults to ``policy.slate_size``, a missing
    ``request_id`` gets a fresh one). Answer ``200 {"request_id", "shown": [indices into
    candidates], "track_ids": [the shown ids], "propensities": [P(shown[j] at j | above)],
    "policy", "policy_version", "snapshot_version"}``. Refusals are ``{"error": code, "reason":
    text}``: 400 a bad request (codes: ``streaming.events.ERROR_CODES``; ids longer than
    ``rerank.max_id_chars`` are ``bad_value``) or a ``Content-Length`` that is not one decimal
    number (``invalid_length``); 411 no ``Content-Length`` (chunked bodies are not taken); 413
    a body over ``rerank.max_body_bytes`` (refused before it is read) or an impression too large
    to log (``too_large``); 415 a ``Content-Type`` other than ``application/json``
    (``unsupported_media_type``); 503 the impression could not be sent (``log_unavailable``).
``GET /healthz``
    ``200 {"ok", "status": "ok" | "degraded", "policy", "snapshot_version", "unlogged",
    "refused_unloggable", "last_log_error", "last_log_error_age_ms"}``; ``degraded`` (and
    ``ok`` false) while a served impression went unlogged, or a send failed, within
    ``rerank.health_degraded_ms``.
``GET /metrics-lite``
    ``200`` with the counts of ``RerankService.counts()``.

Connections: at most ``rerank.max_connections`` are held, one thread each. A connection beyond
that takes the place of the held one that has waited longest for its request, if that one has
waited over ``rerank.evict_waiting_ms``; otherwise it is answered 503 (``overloaded``) and closed
at once. A connection that has not sent its whole request ``rerank.read_timeout_ms`` after the
service began waiting for it (a keep-alive connection idle that long too) is closed; one caught
mid-body is answered 408 (``timeout``).

Example (Python API)::

    service = RerankService(config, servers)
    service.wait_for_snapshot(timeout_s=10)      # optional
    answer = service.rank({"user_id": "u1", "surface": "home", "context": [...],
                           "candidates": ["t1", "t2", ...], "candidate_features": [[...], ...],
                           "slate_size": 5})
    port = service.start_http("127.0.0.1", 0)
    service.close()
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import jax
import msgspec
import numpy as np
import numpy.typing as npt

from streaming.config import Config
from streaming.core import limits, make_engine
from streaming.events import (
    IMPRESSION_SCHEMA,
    DecodeError,
    FeatureEncoding,
    Impression,
    Limits,
    decode_impression,
    encode,
    key64,
    with_features,
)
from streaming.kafka.clients import make_producer, max_message_bytes
from streaming.serving.reranker import Reranker, SnapshotFollower

__all__ = ["RankError", "RankRequest", "RerankService", "UnloggableError", "main"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]


class MissingTopicError(RuntimeError):
    """A topic the service writes to does not exist on the cluster."""


class RankError(ValueError):
    """A request the service refuses: ``code`` (an ``events.ERROR_CODES`` value) and ``reason``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class UnloggableError(RuntimeError):
    """A request refused because its impression cannot be logged: ``status`` 413 (``code``
    ``too_large``: over the topic's or the producer's limit) or 503 (``log_unavailable``: the
    send failed at once; ``unlearnable``: the policy drew a slate whose propensity is below
    ``events.min_propensity``, so the daemon would dead-letter its log)."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


# What a v2 record batch adds around one record's key and value: the batch header (61 bytes)
# and the record's varint fields (at most about 32), rounded up.
_RECORD_OVERHEAD_BYTES = 128
# Kafka's default message.max.bytes, assumed when the topic's own limit cannot be read.
_KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# How long a send may block a request thread (waiting for metadata or buffer space) before the
# request is refused with 503; kafka-python's default is 60 s.
_SEND_BLOCK_MS = 5_000
# How often the topic's limit is read again when no send has failed.
_LIMIT_REFRESH_S = 60.0
_PRODUCER_BATCH_BYTES = 256 * 1024


class RankRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of ``POST /rank`` (field meanings as in the impression event)."""

    user_id: str
    surface: str
    context: list[float]
    candidates: list[str]
    candidate_features: list[list[float]]
    request_id: str | None = None
    slate_size: int | None = None


_REQUEST_DECODER = msgspec.json.Decoder(RankRequest)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class RerankService:
    """Ranks requests with the newest snapshot of the configured policy and logs each impression.

    Args:
        config: the policy (``policy.name``, ``params``, ``slate_size``), feature sizes and limits
            (``events``), topics, Kafka settings and the default HTTP address (``rerank``).
        servers: Kafka bootstrap servers.
        refresh_ms: how often the background thread looks for a newer snapshot.
        clock: wall time in ms, for the logged impression's ``ts``.
        seed: seeds the ranking randomness (request ``i`` uses ``fold_in(key(seed), i)``).
    """

    def __init__(
        self,
        config: Config,
        servers: str,
        *,
        refresh_ms: int = 1_000,
        clock: Clock = _wall_clock_ms,
        seed: int = 0,
    ) -> None:
        if refresh_ms <= 0:
            raise ValueError(f"refresh_ms must be positive, got {refresh_ms}")
        self.config = config
        self.clock = clock
        self.refresh_ms = refresh_ms
        engine = make_engine(config)
        self.policy = engine.policy
        self.id_space = engine.id_space
        self.limits = limits(config)
        self.policy_name = self.policy.spec.name
        self.policy_version = str(self.policy.spec.version)
        d_user, d_track = config.events.d_user, config.events.d_track
        # (re-ranker, snapshot version), swapped whole; copies share one jitted rank function.
        self._current = (Reranker(self.policy, self.policy.init(d_user, d_track)), 0)
        self._key = jax.random.key(seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._n = 0
        self._loaded = threading.Condition(self._lock)
        self.follower = SnapshotFollower(
            config, servers, self.policy, d_user=d_user, d_track=d_track
        )
        if not self.follower.consumer.partitions_for_topic(config.topics.impressions):
            # Without this check the first request's send would block its thread for the
            # producer's max_block_ms (60 s) waiting for the topic's metadata.
            self.follower.close()
            raise MissingTopicError(
                f"the impressions topic {config.topics.impressions!r} does not exist on "
                f"{servers}: create it first (`encore topics create`)"
            )
        self.servers = servers
        topic_bytes = _topic_max_message_bytes(config, servers)
        # A batch no larger than the topic takes: small impressions batched together are
        # never refused as one too-large batch.
        self._batch_bytes = max(1, min(_PRODUCER_BATCH_BYTES, topic_bytes - _RECORD_OVERHEAD_BYTES))
        self.producer = self._new_producer()
        self.impression_limit_bytes = self._impression_limit(topic_bytes)
        # Replaced before the next send after any failed one (see _producer_for_send).
        self._producer_lock = threading.Lock()
        self._producer_broken = False
        self._retiring: list[threading.Thread] = []
        self._limit_stale = threading.Event()
        self._last_log_error: tuple[str, float] | None = None  # (text, monotonic s)
        self._last_log_failure: float | None = None  # monotonic s of the last unlogged or 503
        self._stop = threading.Event()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="encore-snapshot-follower", daemon=True
        )
        self._refresher.start()
        self._http: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ snapshots
    def _refresh_loop(self) -> None:
        limit_due = time.monotonic() + _LIMIT_REFRESH_S
        while not self._stop.is_set():
            try:
                self._refresh(timeout_ms=min(self.refresh_ms, 200))
            except Exception:  # keep serving the last good state; the next round retries
                log.exception("reading the snapshots topic failed")
                with self._lock:
                    self._counts["snapshot_errors"] += 1
            if self._limit_stale.is_set() or time.monotonic() >= limit_due:
                self._limit_stale.clear()
                limit_due = time.monotonic() + _LIMIT_REFRESH_S
                try:
                    self.impression_limit_bytes = self._impression_limit(
                        _topic_max_message_bytes(self.config, self.servers)
                    )
                except Exception:  # keep the last limit until the next reading
                    log.exception("reading the impressions topic's limit failed")
            self._stop.wait(self.refresh_ms / 1000)

    def _refresh(self, timeout_ms: int = 0) -> bool:
        """Load the newest snapshot published since the last call; True if there was one.

        Only the background thread calls this (the follower's consumer is not thread-safe).
        """
        state = self.follower.poll(timeout_ms=timeout_ms)
        if state is None:
            return False
        fresh = self._current[0].with_state(state)  # prepared here, off the request path
        with self._lock:
            self._current = (fresh, self._current[1] + 1)
            self._counts["snapshots_loaded"] += 1
            self._loaded.notify_all()
        return True

    @property
    def snapshot_version(self) -> int:
        """How many snapshots this service has loaded (0: still the policy's initial state)."""
        return self._current[1]

    @property
    def state(self) -> Any:
        """The policy state requests are ranked with now."""
        return self._current[0].state

    def wait_for_snapshot(self, timeout_s: float, *, newer_than: int = 0) -> bool:
        """Block until a snapshot with ``snapshot_version > newer_than`` is loaded; False on timeout."""
        with self._loaded:
            return self._loaded.wait_for(lambda: self.snapshot_version > newer_than, timeout_s)

    # ------------------------------------------------------------------ ranking
    def parse(self, body: bytes | Mapping[str, Any]) -> RankRequest:
        """A request from raw JSON bytes (the HTTP body) or an already decoded mapping.

        Raises:
            RankError: ``too_large`` (bytes over ``rerank.max_body_bytes``), ``invalid_json``,
                ``missing_field``, ``unknown_field`` or ``wrong_type``.
        """
        try:
            if isinstance(body, bytes | bytearray):
                limit = self.config.rerank.max_body_bytes
                if len(body) > limit:
                    raise RankError(
                        "too_large", f"{len(body)} bytes > rerank.max_body_bytes {limit}"
                    )
                return _REQUEST_DECODER.decode(body)
            return msgspec.convert(body, RankRequest, strict=True)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            if "missing required field" in msg:
                raise RankError("missing_field", msg) from None
            if "unknown field" in msg:
                raise RankError("unknown_field", msg) from None
            raise RankError("wrong_type", msg) from None
        except msgspec.DecodeError as exc:
            raise RankError("invalid_json", str(exc)) from None

    def _validate(
        self, req: RankRequest
    ) -> tuple[Impression, int, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The impression the service would log (shown and propensities still to fill), the
        slate size, and the context and candidate features as float32 arrays.

        Shapes and limits are checked here only as far as ranking needs them; anything off
        goes through the daemon's own decoder (``_daemon_rules``) for its exact code and
        reason, and the served impression passes that decoder before it is logged.
        """
        k = len(req.candidates)
        slate = self.config.policy.slate_size if req.slate_size is None else req.slate_size
        if req.request_id is not None and not req.request_id:
            raise RankError("bad_value", "request_id must be non-empty when given")
        _check_id_lengths(req, self.config.rerank.max_id_chars)
        if len(set(req.candidates)) != k:
            raise RankError("bad_value", "candidates must be distinct ids")
        template = Impression(
            schema=IMPRESSION_SCHEMA,
            request_id=req.request_id or uuid.uuid4().hex,
            user_id=req.user_id,
            surface=req.surface,
            ts=max(0, self.clock()),
            context=req.context,
            candidates=req.candidates,
            candidate_features=req.candidate_features,
            shown=list(range(min(max(slate, 1), k))),
            propensities=[1.0] * min(max(slate, 1), k),
            policy=self.policy_name,
            policy_version=self.policy_version,
        )
        ctx, feats = _float_arrays(req)
        lim = self.limits
        if not (
            ctx.shape == (lim.d_user,)
            and feats.shape == (k, lim.d_track)
            and 1 <= k <= lim.max_candidates
        ):
            _daemon_rules(template, self.limits, "json")  # the reason in the request's terms
            raise RankError("bad_shape", "context or candidate features have the wrong shape")
        if not 1 <= slate <= k:
            raise RankError("bad_value", f"slate_size {slate} must be in [1, {k}] ({k} candidates)")
        return template, slate, ctx, feats

    def rank(self, request: bytes | Mapping[str, Any]) -> dict[str, Any]:
        """Rank one request and log the impression served.

        Args:
            request: a ``POST /rank`` body, as JSON bytes or a decoded mapping.

        Returns:
            ``{"request_id", "shown", "track_ids", "propensities", "policy", "policy_version",
            "snapshot_version"}``.

        Raises:
            RankError: the request breaks the event contract (the code and reason say how).
            UnloggableError: its impression cannot be logged (too large for the topic, or the
                send failed at once); it was not served.
        """
        self._count("requests")
        try:
            req = self.parse(request)
            template, slate, ctx, feats = self._validate(req)
        except RankError as err:
            self._count(f"bad_request.{err.code}")
            raise
        ids = (key64(req.candidates) % np.uint64(self.id_space)).astype(np.int32)
        with self._lock:  # one consistent (state, version, request number) per request
            reranker, version = self._current
            n = self._n
            self._n += 1
        order, prop = reranker.rank(ctx, feats, ids, slate_size=slate, key=self._key, index=n)
        shown = order.tolist()
        propensities = prop.tolist()
        if any(not 0.0 < p <= 1.0 for p in propensities):
            raise RuntimeError(f"policy returned propensities {propensities} outside (0, 1]")
        served = msgspec.structs.replace(template, shown=shown, propensities=propensities)
        try:  # the daemon's own rules, on the very bytes we log: no accepted request dead-letters
            value = _daemon_rules(served, self.limits, self.config.events.feature_encoding)
        except RankError as err:
            if err.code == "low_propensity":  # the policy's draw, not the client's request
                self._count("refused_unlearnable")
                raise UnloggableError(
                    503,
                    "unlearnable",
                    f"the policy drew a slate with a propensity below events.min_propensity "
                    f"({self.limits.min_propensity:g}); the daemon could not learn from its "
                    "log, so it was not served: ask again",
                ) from err
            self._count(f"bad_request.{err.code}")
            raise
        try:
            self._log(served, value)
        except UnloggableError as err:
            self._log_refused(served.request_id, err)
            raise
        self._count("ranked")
        return {
            "request_id": served.request_id,
            "shown": shown,
            "track_ids": [req.candidates[i] for i in shown],
            "propensities": propensities,
            "policy": self.policy_name,
            "policy_version": self.policy_version,
            "snapshot_version": version,
        }

    # ------------------------------------------------------------------ the impression log
    def _new_producer(self) -> Any:
        return make_producer(
            self.config.kafka,
            self.servers,
            batch_size=self._batch_bytes,
            max_block_ms=_SEND_BLOCK_MS,
        )

    def _impression_limit(self, topic_bytes: int) -> int:
        """The most bytes of key and value one impression record may have: what the topic and
        the producer take, less a record's framing."""
        request_bytes = int(self.producer.config["max_request_size"])
        return min(topic_bytes, request_bytes) - _RECORD_OVERHEAD_BYTES

    def _producer_for_send(self) -> Any:
        """The producer to send with: a fresh one if a send of the current one failed.

        A failed send replaces the producer: kafka-python's idempotent producer stops sending
        altogether after some refusals (a batch refused as too large leaves its sequence
        numbers unusable), and every later impression would be lost with it.

        Raises:
            UnloggableError: 503, a fresh producer could not be made.
        """
        with self._producer_lock:
            if self._producer_broken:
                old = self.producer
                try:
                    self.producer = self._new_producer()
                except Exception as exc:
                    raise UnloggableError(
                        503, "log_unavailable", f"no producer for the impressions topic: {exc!r}"
                    ) from exc
                self._producer_broken = False
                closer = threading.Thread(  # closing waits for its sends: off the request path
                    target=old.close, kwargs={"timeout": 10}, name="encore-rerank-retire"
                )
                closer.start()
                self._retiring = [t for t in self._retiring if t.is_alive()] + [closer]
            return self.producer

    def _log(self, impression: Impression, value: bytes) -> None:
        """Send ``value``, the encoded ``impression``, to the impressions topic.

        Raises:
            UnloggableError: 413 when the record is over ``impression_limit_bytes``, 503 when
                the send fails at once; nothing was sent.
        """
        key = impression.user_id.encode()
        limit = self.impression_limit_bytes
        if len(key) + len(value) > limit:
            raise UnloggableError(
                413,
                "too_large",
                f"the impression to log is {len(key) + len(value)} bytes, over the "
                f"{limit} the impressions topic {self.config.topics.impressions!r} takes "
                "(its max.message.bytes, or the producer's max_request_size, less a record's "
                "framing): send fewer candidates",
            )
        producer = self._producer_for_send()
        try:
            future = producer.send(self.config.topics.impressions, key=key, value=value)
        except Exception as exc:
            if producer is self.producer:  # not one already replaced and closing
                self._producer_broken = True
            raise UnloggableError(
                503, "log_unavailable", f"the impression could not be sent: {exc!r}"
            ) from exc
        future.add_callback(self._logged)
        future.add_errback(self._log_failed, impression.request_id, producer)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _logged(self, _metadata: object) -> None:
        self._count("logged")

    def _log_refused(self, request_id: str, err: UnloggableError) -> None:
        log.warning("request %s refused: its impression cannot be logged: %s", request_id, err)
        now = time.monotonic()
        with self._lock:
            self._counts["refused_unloggable"] += 1
            self._last_log_error = (str(err), now)
            if err.status >= 500:
                self._last_log_failure = now

    def _log_failed(self, request_id: str, producer: Any, exc: BaseException) -> None:
        """Runs on the producer's I/O thread once a send failed for good (after its retries)."""
        log.warning("impression %s was served but not logged: %r", request_id, exc)
        now = time.monotonic()
        with self._lock:
            self._counts["unlogged"] += 1
            self._last_log_error = (f"impression {request_id} not logged: {exc!r}", now)
            self._last_log_failure = now
        if producer is self.producer:
            self._producer_broken = True
        self._limit_stale.set()  # the topic's limit may have changed: read it again

    def counts(self) -> dict[str, int]:
        """Requests, ranked, bad requests by code, impressions logged, unlogged (served, the
        broker never took them) and refused as unloggable, connections, snapshots."""
        with self._lock:
            out = {
                "requests": 0,
                "ranked": 0,
                "logged": 0,
                "unlogged": 0,
                "refused_unloggable": 0,
                "snapshots_loaded": 0,
                **self._counts,
            }
            out["snapshot_version"] = self._current[1]
        http = self._http
        out.update(_Connections.zero() if http is None else http.connections.counts())
        return out

    def health(self) -> dict[str, Any]:
        """``/healthz``: ``degraded`` while a logging failure (an unlogged impression or a send
        that failed at once) is more recent than ``rerank.health_degraded_ms``."""
        now = time.monotonic()
        with self._lock:
            failure, last = self._last_log_failure, self._last_log_error
            unlogged = self._counts["unlogged"]
            refused = self._counts["refused_unloggable"]
        window_s = self.config.rerank.health_degraded_ms / 1000
        degraded = failure is not None and now - failure < window_s
        return {
            "ok": not degraded,
            "status": "degraded" if degraded else "ok",
            "policy": self.policy_name,
            "snapshot_version": self.snapshot_version,
            "unlogged": unlogged,
            "refused_unloggable": refused,
            "last_log_error": None if last is None else last[0],
            "last_log_error_age_ms": None if last is None else int((now - last[1]) * 1000),
        }

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every served impression is acknowledged by the broker (or failed)."""
        self.producer.flush(timeout=timeout_s)

    # ------------------------------------------------------------------ HTTP
    def start_http(self, host: str | None = None, port: int | None = None) -> int:
        """Serve HTTP in a background thread (default ``config.rerank`` host and port).

        Returns:
            The port it listens on (useful with ``port=0``).
        """
        if self._http is not None:
            raise RuntimeError("the HTTP server is already running")
        host = self.config.rerank.host if host is None else host
        port = self.config.rerank.port if port is None else port
        rc = self.config.rerank
        connections = _Connections(
            rc.max_connections, rc.read_timeout_ms / 1000, rc.evict_waiting_ms / 1000
        )
        self._http = _HTTPServer((host, port), _handler(self, connections), connections)
        # serve_forever drops stalled connections (service_actions) at least this often, so
        # one outlives its deadline by at most this.
        poll_s = min(0.5, rc.read_timeout_ms / 4000)
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": poll_s},
            name="encore-rerank-http",
            daemon=True,
        )
        self._http_thread.start()
        return int(self._http.server_address[1])

    def close(self) -> None:
        """Stop HTTP and the follower, flush the logged impressions, close the clients (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(5)
        self._stop.set()
        self._refresher.join(10)
        self.follower.close()
        self.producer.flush(timeout=10)
        self.producer.close(timeout=10)
        for closer in self._retiring:
            closer.join(10)

    def __enter__(self) -> RerankService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_F32_MAX = float(np.finfo(np.float32).max)


def _float_arrays(req: RankRequest) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Context and candidate features as float32 arrays (ragged feature rows: shape ``(0, 0)``,
    for the daemon's rules to name the row).

    Raises:
        RankError: ``non_finite``: a NaN or infinite value (only a decoded mapping can carry
            one; JSON has neither and msgspec refuses numbers that overflow a double), or one
            beyond float32's range, which the policy ranks with and the daemon learns from.
    """

    def usable(a: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        return np.asarray((np.abs(a) <= _F32_MAX).all(axis=-1))  # False for NaN and inf too

    ctx = np.asarray(req.context, np.float64)
    if not usable(ctx):
        raise RankError("non_finite", "context has a NaN, infinite or beyond-float32 feature")
    try:
        feats = np.asarray(req.candidate_features, np.float64)
        ok = usable(feats) if feats.ndim == 2 else np.ones(0, np.bool_)
    except ValueError:  # ragged rows
        feats = np.zeros((0, 0), np.float64)
        ok = np.asarray([usable(np.asarray(r, np.float64)) for r in req.candidate_features])
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise RankError(
            "non_finite", f"candidate {i} has a NaN, infinite or beyond-float32 feature"
        )
    return ctx.astype(np.float32), feats.astype(np.float32)


def _daemon_rules(
    impression: Impression, limits: Limits, encoding: FeatureEncoding = "float32"
) -> bytes:
    """``impression`` encoded (features as ``encoding`` says), after the daemon's decoder
    accepted exactly those bytes.

    Raises:
        RankError: the decoder's code and reason.
    """
    raw = encode(with_features(impression, encoding))
    try:
        decode_impression(raw, limits)
    except DecodeError as err:
        raise RankError(err.code, err.reason) from None
    return raw


def _check_id_lengths(req: RankRequest, max_chars: int) -> None:
    """Refuse an id longer than ``max_chars`` characters.

    Raises:
        RankError: ``bad_value``, naming the field (or the candidate) and its length.
    """
    fields = (("user_id", req.user_id), ("surface", req.surface), ("request_id", req.request_id))
    for name, value in fields:
        if value is not None and len(value) > max_chars:
            raise RankError(
                "bad_value",
                f"{name} has {len(value)} characters, over rerank.max_id_chars ({max_chars})",
            )
    if req.candidates and max(map(len, req.candidates)) > max_chars:
        i = next(i for i, c in enumerate(req.candidates) if len(c) > max_chars)
        raise RankError(
            "bad_value",
            f"candidate {i} has {len(req.candidates[i])} characters, over rerank.max_id_chars "
            f"({max_chars})",
        )


def _topic_max_message_bytes(config: Config, servers: str) -> int:
    """The impressions topic's ``max.message.bytes`` as the broker reports it, or Kafka's
    default when it cannot be read (``kafka.clients.max_message_bytes`` logs why)."""
    topic = config.topics.impressions
    found = max_message_bytes(config.kafka, servers, [topic])
    return found.get(topic, _KAFKA_DEFAULT_MAX_MESSAGE_BYTES)


def _post_refusal(path: str, headers: Message, max_body_bytes: int) -> tuple[int, str, str] | int:
    """What a ``POST`` may be told before its body is read: ``(status, code, reason)`` for a
    refusal, else the body's length."""
    if path != "/rank":
        return 404, "not_found", f"no route POST {path}"
    if headers.get("Transfer-Encoding") is not None:
        return 411, "length_required", "send Content-Length (chunked bodies are not taken)"
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        return 411, "length_required", "send Content-Length"
    text = lengths[0].strip()
    if len(lengths) > 1 or not (text.isascii() and text.isdigit()):
        got = ", ".join(lengths)
        return 400, "invalid_length", f"Content-Length must be one decimal number, got {got!r}"
    # Past 18 digits it is over any limit (and int() of thousands of digits is refused).
    length = int(text) if len(text) <= 18 else max_body_bytes + 1
    if length > max_body_bytes:
        return 413, "too_large", f"{text} bytes > rerank.max_body_bytes {max_body_bytes}"
    media, charset = headers.get_content_type(), headers.get_content_charset()
    if headers.get("Content-Type") is None or media != "application/json":
        got = headers.get("Content-Type")
        return 415, "unsupported_media_type", f"send Content-Type application/json, got {got!r}"
    if charset not in (None, "utf-8", "utf8"):
        return 415, "unsupported_media_type", f"the body must be UTF-8, got charset {charset!r}"
    return length


class _Connections:
    """The connections the HTTP server holds, each waiting for (the rest of) a request or
    working on one, and the rules that bound them (the module docstring states them).

    One lock covers admitting, expiring and the handlers' moves between waiting and working, so
    a connection is dropped only while it waits: one whose request was read whole is never cut
    off mid-answer. Dropping shuts the socket's read side, which ends the handler's blocked read
    at once and still lets it answer. Threads: at most ``limit`` held, plus dropped ones that
    are ending.
    """

    COUNTS = ("connections_refused", "connections_evicted", "connections_timed_out")

    def __init__(self, limit: int, read_timeout_s: float, evict_waiting_s: float) -> None:
        self.limit = limit
        self.read_timeout_s = read_timeout_s
        self.evict_waiting_s = evict_waiting_s
        self._lock = threading.Lock()
        # held connection -> when it began waiting (monotonic s); None while it works
        self._held: dict[socket.socket, float | None] = {}
        # dropped connection -> "evicted" | "timed_out", until its thread ends
        self._dropped: dict[socket.socket, str] = {}
        self._counts: Counter[str] = Counter()

    @classmethod
    def zero(cls) -> dict[str, int]:
        return {"connections_open": 0, **dict.fromkeys(cls.COUNTS, 0)}

    def counts(self) -> dict[str, int]:
        with self._lock:
            open_now = len(self._held) + len(self._dropped)
            return {"connections_open": open_now, **{n: self._counts[n] for n in self.COUNTS}}

    def admit(self, conn: socket.socket, now: float) -> bool:
        """Hold ``conn``, in the place of the longest-waiting one at the limit; False: refuse it."""
        with self._lock:
            if len(self._held) >= self.limit:
                waited = [
                    (since, c)
                    for c, since in self._held.items()
                    if since is not None and now - since > self.evict_waiting_s
                ]
                if self.evict_waiting_s <= 0 or not waited:
                    self._counts["connections_refused"] += 1
                    return False
                self._drop(min(waited, key=lambda w: w[0])[1], "evicted")
            self._held[conn] = now
            return True

    def expire(self, now: float) -> None:
        """Drop every connection that has waited longer than the read timeout."""
        with self._lock:
            late = [
                c
                for c, since in self._held.items()
                if since is not None and now - since > self.read_timeout_s
            ]
            for conn in late:
                self._drop(conn, "timed_out")

    def waiting(self, conn: socket.socket, now: float) -> bool:
        """``conn`` waits for its next request from ``now``; False if it was dropped."""
        with self._lock:
            if conn not in self._held:
                return False
            self._held[conn] = now
            return True

    def dropped(self, conn: socket.socket) -> str | None:
        """Why ``conn`` was dropped (``evicted``, ``timed_out``), or None."""
        with self._lock:
            return self._dropped.get(conn)

    def start_work(self, conn: socket.socket) -> str | None:
        """``conn`` has its whole request and works on it (no longer droppable); or why it
        was dropped first."""
        with self._lock:
            if conn in self._held:
                self._held[conn] = None
                return None
            return self._dropped.get(conn, "released")

    def release(self, conn: socket.socket) -> None:
        with self._lock:
            self._held.pop(conn, None)
            self._dropped.pop(conn, None)

    def _drop(self, conn: socket.socket, why: str) -> None:
        del self._held[conn]
        self._dropped[conn] = why
        self._counts[f"connections_{why}"] += 1
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RD)


def _refuse(conn: socket.socket, limit: int) -> None:
    """Answer 503 on a connection the server will not hold, without blocking the accepting
    thread; what the client already sent is read first, so closing does not reset the
    connection before the answer is read."""
    body = json.dumps(
        {"error": "overloaded", "reason": f"all {limit} connections are taken; retry"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.recv(65536)
        conn.send(head + body)


class _HTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` whose connections ``connections`` bounds: a refused one is
    answered 503 by the accepting thread, and stalled ones are dropped between accepts."""

    daemon_threads = True
    # socketserver's backlog is 5: a burst of connects beyond it waits out a SYN retransmit
    # (1 s and more) before the accepting thread even sees it.
    request_queue_size = socket.SOMAXCONN

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        connections: _Connections,
    ) -> None:
        self.connections = connections
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = cast(socket.socket, request)
        if not self.connections.admit(conn, time.monotonic()):
            _refuse(conn, self.connections.limit)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release(conn)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release(cast(socket.socket, request))

    def service_actions(self) -> None:
        super().service_actions()
        self.connections.expire(time.monotonic())

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exception()
        if isinstance(exc, OSError):  # the client went away, or its connection was dropped
            log.debug("connection from %s ended: %r", client_address, exc)
        else:
            log.exception("serving %s failed", client_address)


# How long a refused request's unread body is read and dropped before its connection closes.
_LINGER_S = 1.0


def _handler(service: RerankService, connections: _Connections) -> type[BaseHTTPRequestHandler]:
    rc = service.config.rerank

    class Handler(BaseHTTPRequestHandler):
        server_version = "encore-rerank"
        protocol_version = "HTTP/1.1"
        # The headers and the body go out in two writes; with Nagle's algorithm on, the body
        # waited for the client's delayed ACK of the headers (40 ms on Linux) on every
        # keep-alive request.
        disable_nagle_algorithm = True
        # Each read and write on the socket: a backstop behind the server's dropping of stalled
        # requests, and the bound on an answer the client does not take.
        timeout = rc.read_timeout_ms / 1000 + 1.0

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def handle_one_request(self) -> None:
            if not connections.waiting(self.connection, time.monotonic()):
                self.close_connection = True
                return
            super().handle_one_request()

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # http.server's own refusals (a malformed request line or header, an unknown
            # method), in JSON like the others.
            self.close_connection = True
            phrase = HTTPStatus(code).phrase
            error = phrase.lower().replace(" ", "_").replace("-", "_")
            self._reply(code, {"error": error, "reason": message or explain or phrase})

        def _reply(self, status: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _answer_dropped(self, why: str) -> None:
            self.close_connection = True
            if why == "timed_out":
                reason = f"the request took over rerank.read_timeout_ms ({rc.read_timeout_ms})"
                self._reply(408, {"error": "timeout", "reason": reason})
            elif why == "evicted":
                reason = "a newer connection took this one's place while it waited"
                self._reply(503, {"error": "overloaded", "reason": reason})

        def _started(self) -> bool:
            """Mark the request read whole; False (after answering) if it was dropped."""
            why = connections.start_work(self.connection)
            if why is not None:
                self._answer_dropped(why)
            return why is None

        def _refuse_unread(self, status: int, code: str, reason: str) -> None:
            """Answer a request whose body stays unread, then close gracefully: the write side
            first, then what the client still sends is read and dropped (for ``_LINGER_S``), so
            the close does not reset the connection before the client read the answer."""
            self.close_connection = True
            self._reply(status, {"error": code, "reason": reason})
            deadline = time.monotonic() + _LINGER_S
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
                while (left := deadline - time.monotonic()) > 0:
                    self.connection.settimeout(left)
                    if not self.connection.recv(65536):
                        break

        def do_GET(self) -> None:
            if not self._started():
                return
            if self.path == "/healthz":
                self._reply(200, service.health())
            elif self.path == "/metrics-lite":
                self._reply(200, service.counts())
            else:
                self._reply(404, {"error": "not_found", "reason": f"no route GET {self.path}"})

        def do_POST(self) -> None:
            why = connections.dropped(self.connection)
            if why is not None:  # its headers ended early because the connection was dropped
                self._answer_dropped(why)
                return
            checked = _post_refusal(self.path, self.headers, rc.max_body_bytes)
            if not isinstance(checked, int):
                self._refuse_unread(*checked)
                return
            raw = self.rfile.read(checked)
            if not self._started():
                return
            if len(raw) < checked:  # the client closed its side mid-body
                self.close_connection = True
                return
            try:
                answer = service.rank(raw)
            except RankError as err:
                status = 413 if err.code == "too_large" else 400
                self._reply(status, {"error": err.code, "reason": err.reason})
                return
            except UnloggableError as err:
                self._reply(err.status, {"error": err.code, "reason": err.reason})
                return
            except Exception as exc:
                log.exception("ranking failed")
                service._count("errors")  # pyright: ignore[reportPrivateUsage]
                self._reply(500, {"error": "internal", "reason": str(exc)})
                return
            self._reply(200, answer)

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    """``encore rerank``: serve ``POST /rank`` until SIGINT or SIGTERM, then close cleanly."""
    import signal

    from streaming.kafka.clients import bootstrap_servers

    parser = argparse.ArgumentParser(
        prog="encore rerank",
        description="Re-rank candidates with the newest policy snapshot over HTTP, logging "
        "every served impression to the impressions topic.",
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[])
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="an existing Kafka cluster; default: the local broker of `encore broker start`",
    )
    parser.add_argument("--state-dir", help="local broker state folder (default .encore)")
    parser.add_argument("--host", help="default: rerank.host (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: rerank.port; 0 for any free port")
    parser.add_argument("--refresh-ms", type=int, default=1_000, help="snapshot check interval")
    args = parser.parse_args(argv)
    # Run each request's computation on the thread that serves it. With JAX's default
    # asynchronous CPU dispatch every call hands off to a worker thread and waits for it; on a
    # one-core server about 1 % of calls then stall 1-8 ms. Set here, before JAX starts its
    # backend, for this process only (importing encore changes no JAX setting).
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    overrides = list(args.set)
    if args.bootstrap_servers:
        overrides.append(f"kafka.bootstrap_servers={args.bootstrap_servers}")
    config = Config.load(args.config, overrides=overrides)
    servers = bootstrap_servers(config.kafka, Path(args.state_dir) if args.state_dir else None)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()  # a handler only sets the event; the main thread closes

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        service = RerankService(config, servers, refresh_ms=args.refresh_ms)
    except MissingTopicError as exc:
        print(f"encore rerank: {exc}", file=sys.stderr)
        return 2
    with service:
        port = service.start_http(args.host, args.port)
        # Everything alive now (JAX, the clients, the compiled functions) lives as long as the
        # process: keep it out of the collector's full passes. A 500 x 64 request leaves ~500
        # lists behind, so gen-2 passes come every few hundred requests, and over a heap that
        # still held all of that they paused a request by ~100 ms.
        gc.collect()
        gc.freeze()
        host = args.host or config.rerank.host
        print(
            f"encore rerank: listening on http://{host}:{port} (POST /rank, GET /healthz, "
            f"GET /metrics-lite); policy {service.policy_name}, snapshots from "
            f"{config.topics.snapshots}, impressions to {config.topics.impressions}",
            flush=True,
        )
        stop.wait()
        counts = service.counts()
    print(f"encore rerank: stopped after {counts['ranked']} ranked requests", flush=True)
    return 0
