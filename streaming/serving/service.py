"""The re-ranking service: rank candidates with the newest policy snapshot, log what was served.

Why one long module: a request's checks, its ranking and the logging of what was served happen
in one order per request (check, rank, encode, check the size, send, answer), and the refusals
of each step are kept next to it; the HTTP layer is ``streaming.serving.http``.

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

HTTP (``streaming.serving.http``: the standard library's ``ThreadingHTTPServer``, bound to
``127.0.0.1`` by default):

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
    ``200 {"ok", "status": "ok" | "degraded", "policy", "ope_ready", "snapshot_version",
    "unlogged", "refused_unloggable", "last_log_error", "last_log_error_age_ms"}``; ``degraded``
    (and ``ok`` false) while a served impression went unlogged, or a send failed, within
    ``rerank.health_degraded_ms``. ``ope_ready`` is false for a policy that ranks
    deterministically (every propensity 1.0, as greedy LinUCB does): its log cannot support
    off-policy evaluation, which the service also says when it starts.
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
import gc
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
    float32_bytes,
    key64,
    with_features,
)
from streaming.kafka.catalogue import CatalogueFollower, MissingCatalogueError
from streaming.kafka.clients import make_producer, max_message_bytes
from streaming.serving.errors import MissingTopicError, RankError, UnloggableError
from streaming.serving.http import ConnectionSlots, HTTPServer, handler
from streaming.serving.reranker import Reranker, SnapshotFollower

__all__ = ["RankError", "RankRequest", "RerankService", "UnloggableError", "main"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]


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
    candidate_features: list[list[float]] | None = None  # None: from the catalogue
    request_id: str | None = None
    slate_size: int | None = None


_REQUEST_DECODER = msgspec.json.Decoder(RankRequest)
_REQUEST_MSGPACK = msgspec.msgpack.Decoder(RankRequest)


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
        self.ope_ready = explores(self._current[0], d_user, d_track)
        if not self.ope_ready:
            log.warning(
                "policy %s ranks deterministically (every propensity is 1.0): the impressions "
                "this service logs cannot support off-policy evaluation of another policy; "
                "serve an exploring policy (policy.name = squarecb, softmax, epsilon_greedy or "
                "lin_ts) to evaluate new policies on this traffic",
                self.policy_name,
            )
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
        self.catalogue: CatalogueFollower | None = None
        if config.catalogue.follow:
            try:
                self.catalogue = CatalogueFollower(config, servers)
            except MissingCatalogueError as exc:
                self.follower.close()
                raise MissingTopicError(str(exc)) from None
            if not self.catalogue.catch_up(config.catalogue.wait_ms / 1000):
                log.warning(
                    "the catalogue topic %s was not read to its end within catalogue.wait_ms; "
                    "requests by id are answered 503 until it is",
                    config.topics.catalogue,
                )
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
        self._http: HTTPServer | None = None
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
            if self.catalogue is not None:
                try:  # applied off the request path; requests read the newest view
                    while self.catalogue.poll(timeout_ms=0):
                        pass
                except Exception:  # keep serving the last good catalogue; the next round retries
                    log.exception("reading the catalogue topic failed")
                    with self._lock:
                        self._counts["catalogue_errors"] += 1
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
    def parse(self, body: bytes | Mapping[str, Any], *, msgpack: bool = False) -> RankRequest:
        """A request from raw JSON (or, with ``msgpack``, MessagePack) bytes, the HTTP body, or
        an already decoded mapping.

        Raises:
            RankError: ``too_large`` (bytes over ``rerank.max_body_bytes``), ``invalid_json``
                (or ``invalid_msgpack``), ``missing_field``, ``unknown_field`` or ``wrong_type``.
        """
        try:
            if isinstance(body, bytes | bytearray):
                limit = self.config.rerank.max_body_bytes
                if len(body) > limit:
                    raise RankError(
                        "too_large", f"{len(body)} bytes > rerank.max_body_bytes {limit}"
                    )
                return (_REQUEST_MSGPACK if msgpack else _REQUEST_DECODER).decode(body)
            return msgspec.convert(body, RankRequest, strict=True)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            if "missing required field" in msg:
                raise RankError("missing_field", msg) from None
            if "unknown field" in msg:
                raise RankError("unknown_field", msg) from None
            raise RankError("wrong_type", msg) from None
        except msgspec.DecodeError as exc:
            raise RankError("invalid_msgpack" if msgpack else "invalid_json", str(exc)) from None

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
        ctx, feats = _float_arrays(req)
        logged: list[list[float]] | bytes
        if req.candidate_features is None:
            feats = self._from_catalogue(req.candidates)
            encoding = self.config.events.feature_encoding
            logged = float32_bytes(feats) if encoding == "float32" else feats.tolist()
        else:
            logged = req.candidate_features
        template = Impression(
            schema=IMPRESSION_SCHEMA,
            request_id=req.request_id or uuid.uuid4().hex,
            user_id=req.user_id,
            surface=req.surface,
            ts=max(0, self.clock()),
            context=req.context,
            candidates=req.candidates,
            candidate_features=logged,
            shown=list(range(min(max(slate, 1), k))),
            propensities=[1.0] * min(max(slate, 1), k),
            policy=self.policy_name,
            policy_version=self.policy_version,
        )
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

    def _from_catalogue(self, candidates: list[str]) -> npt.NDArray[np.float32]:
        """The candidates' features from the catalogue's newest view (``catalogue.unknown``
        says what an unknown track gets).

        Raises:
            RankError: ``missing_field`` (no catalogue followed), ``unknown_track``.
            UnloggableError: 503 ``catalogue_loading``: the topic is not read to its end yet.
        """
        if self.catalogue is None:
            raise RankError(
                "missing_field",
                "candidate_features is required unless the service follows a catalogue "
                "(catalogue.follow = true)",
            )
        if not self.catalogue.caught_up:
            raise UnloggableError(
                503, "catalogue_loading", "the catalogue is still being read: ask again"
            )
        feats, _, _, known = self.catalogue.catalogue.view().lookup(key64(candidates))
        if not known.all():
            missing = [candidates[i] for i in np.flatnonzero(~known)]
            if self.config.catalogue.unknown == "reject":
                raise RankError(
                    "unknown_track",
                    f"{len(missing)} candidates are not in the catalogue: "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                )
            self._count("unknown_tracks", len(missing))
        return feats

    def rank(self, request: bytes | Mapping[str, Any], *, msgpack: bool = False) -> dict[str, Any]:
        """Rank one request and log the impression served.

        Args:
            request: a ``POST /rank`` body, as JSON bytes (MessagePack with ``msgpack``) or a
                decoded mapping.

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
            req = self.parse(request, msgpack=msgpack)
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

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

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
        broker never took them) and refused as unloggable, connections, snapshots, and with a
        catalogue its live tracks, records read and refused, compactions, and whether it is
        read to its end (``catalogue_ready``)."""
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
        if self.catalogue is not None:
            follower = self.catalogue
            out["catalogue_tracks"] = follower.catalogue.view().size
            out["catalogue_ready"] = int(follower.caught_up)
            out["catalogue_records"] = follower.counts["records"]
            out["catalogue_refused"] = follower.counts["refused"]
            out["catalogue_compactions"] = follower.catalogue.counts["compactions"]
        http = self._http
        out.update(ConnectionSlots.zero() if http is None else http.connections.counts())
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
            "ope_ready": self.ope_ready,
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
        slots = ConnectionSlots(
            rc.max_connections, rc.read_timeout_ms / 1000, rc.evict_waiting_ms / 1000
        )
        self._http = HTTPServer((host, port), handler(self, slots), slots)
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
        if self.catalogue is not None:
            self.catalogue.close()
        self.producer.flush(timeout=10)
        self.producer.close(timeout=10)
        for closer in self._retiring:
            closer.join(10)

    def __enter__(self) -> RerankService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def explores(reranker: Reranker, d_user: int, d_track: int) -> bool:
    """Whether the policy's choices are random (some propensity below 1), so that what it logs
    supports off-policy evaluation: one probe request of 8 seeded random candidates, slate of 2.
    A greedy policy (LinUCB) shows every track with propensity 1.0 and does not."""
    rng = np.random.default_rng(0)
    _, propensity = reranker.rank(
        rng.normal(0, 0.5, d_user).astype(np.float32),
        rng.normal(0, 0.5, (8, d_track)).astype(np.float32),
        np.arange(8, dtype=np.int32),
        slate_size=2,
        key=jax.random.key(0),
    )
    return bool((propensity < 1.0).any())


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
    if req.candidate_features is None:  # from the catalogue
        return ctx.astype(np.float32), np.zeros((0, 0), np.float32)
    try:
        feats = np.asarray(req.candidate_features, np.float64)
        ok = usable(feats) if feats.ndim == 2 else np.ones(0, np.bool_)
    except ValueError:  # ragged rows
        feats = np.zeros((0, 0), np.float64)
        rows = req.candidate_features
        ok = np.asarray([usable(np.asarray(r, np.float64)) for r in rows])
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


def main(argv: Sequence[str] | None = None) -> int:
    """``encore rerank``: serve ``POST /rank`` until SIGINT or SIGTERM, then close cleanly."""
    import signal

    from streaming.kafka.clients import bootstrap_servers

    parser = argparse.ArgumentParser(
        prog="encore rerank",
        allow_abbrev=False,
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
    # one-core server that thread must first be scheduled, and some calls stall on it. Set
    # here, before JAX starts its backend, for this process only (importing encore changes no
    # JAX setting).
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
        # lists behind, so gen-2 passes come every few hundred requests, and each one that walks
        # all of that pauses the request that triggered it.
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
