"""The re-ranking service: rank candidates with the newest policy snapshot, log what was served.

``RerankService`` follows the compacted snapshots topic in a background thread (every
``refresh_ms``), ranks each request with ``streaming.rerank.Reranker`` (every choice with its
exact propensity) and sends the impression it served to the impressions topic, keyed by
``user_id``, so the daemon learns from it: the loop closes. Until the first snapshot arrives it
ranks with the policy's initial state (``snapshot_version`` 0).

A request is checked with exactly the rules the daemon applies to impressions: the service
runs ``streaming.events.decode_impression`` on the very bytes of the impression it logs (and,
for a request whose shapes are off, on the impression it would have logged, for the daemon's
own error code and reason), so a request the service accepts can never become a dead letter
downstream. Ranking itself is one ``streaming.rerank.Reranker.rank`` call on float32 arrays.

HTTP (stdlib ``ThreadingHTTPServer``, bound to ``127.0.0.1`` by default):

``POST /rank``
    body ``{"request_id"?: str, "user_id": str, "surface": str, "context": [d_user floats],
    "candidates": [str ids], "candidate_features": [[d_track floats] per candidate],
    "slate_size"?: int}`` (``slate_size`` defaults to ``policy.slate_size``, a missing
    ``request_id`` gets a fresh one). Answer ``200 {"request_id", "shown": [indices into
    candidates], "track_ids": [the shown ids], "propensities": [P(shown[j] at j | above)],
    "policy", "policy_version", "snapshot_version"}``. A bad request is ``400 {"error": code,
    "reason": text}`` (codes: ``streaming.events.ERROR_CODES``); a body over
    ``events.max_message_bytes`` is 413.
``GET /healthz``
    ``200 {"ok": true, "policy", "snapshot_version"}``.
``GET /metrics-lite``
    ``200`` with the counts of ``RerankService.counts()``.

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
import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jax
import msgspec
import numpy as np
import numpy.typing as npt

from streaming.config import Config
from streaming.engine import limits, make_engine
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
from streaming.kafka_io import make_producer
from streaming.rerank import Reranker, SnapshotFollower

__all__ = ["RankError", "RankRequest", "RerankService", "main"]

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
        self.producer = make_producer(config.kafka, servers)
        self._stop = threading.Event()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="encore-snapshot-follower", daemon=True
        )
        self._refresher.start()
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ snapshots
    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh(timeout_ms=min(self.refresh_ms, 200))
            except Exception:  # keep serving the last good state; the next round retries
                log.exception("reading the snapshots topic failed")
                with self._lock:
                    self._counts["snapshot_errors"] += 1
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
            RankError: ``invalid_json``, ``missing_field``, ``unknown_field`` or ``wrong_type``.
        """
        try:
            if isinstance(body, bytes | bytearray):
                if len(body) > self.limits.max_message_bytes:
                    raise RankError(
                        "too_large",
                        f"{len(body)} bytes > max_message_bytes {self.limits.max_message_bytes}",
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
            self._count(f"bad_request.{err.code}")
            raise
        self._log(served, value)
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

    def _log(self, impression: Impression, value: bytes) -> None:
        """Send ``value``, the encoded ``impression``, to the impressions topic."""
        future = self.producer.send(
            self.config.topics.impressions,
            key=impression.user_id.encode(),
            value=value,
        )
        future.add_callback(self._logged)
        future.add_errback(self._log_failed, impression.request_id)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _logged(self, _metadata: object) -> None:
        self._count("logged")

    def _log_failed(self, request_id: str, exc: BaseException) -> None:
        log.warning("impression %s was served but not logged: %s", request_id, exc)
        self._count("log_errors")

    def counts(self) -> dict[str, int]:
        """Requests, ranked, bad requests by code, impressions logged and failed, snapshots."""
        with self._lock:
            out = {
                "requests": 0,
                "ranked": 0,
                "logged": 0,
                "log_errors": 0,
                "snapshots_loaded": 0,
                **self._counts,
            }
            out["snapshot_version"] = self._current[1]
        return out

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every served impression is acknowledged by the broker."""
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
        self._http = ThreadingHTTPServer((host, port), _handler(self))
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, name="encore-rerank-http", daemon=True
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


def _handler(service: RerankService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "encore-rerank"
        protocol_version = "HTTP/1.1"
        # The headers and the body go out in two writes; with Nagle's algorithm on, the body
        # waited for the client's delayed ACK of the headers (40 ms on Linux) on every
        # keep-alive request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _reply(self, status: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._reply(
                    200,
                    {
                        "ok": True,
                        "policy": service.policy_name,
                        "snapshot_version": service.snapshot_version,
                    },
                )
            elif self.path == "/metrics-lite":
                self._reply(200, service.counts())
            else:
                self._reply(404, {"error": "not_found", "reason": f"no route GET {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/rank":
                self._reply(404, {"error": "not_found", "reason": f"no route POST {self.path}"})
                return
            length_header = self.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                self.close_connection = True
                self._reply(411, {"error": "length_required", "reason": "send Content-Length"})
                return
            length = int(length_header)
            limit = service.limits.max_message_bytes
            if length > limit:
                self.close_connection = True
                self._reply(
                    413, {"error": "too_large", "reason": f"{length} bytes > {limit} bytes"}
                )
                return
            raw = self.rfile.read(length)
            try:
                answer = service.rank(raw)
            except RankError as err:
                self._reply(400, {"error": err.code, "reason": err.reason})
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

    from streaming.kafka_io import bootstrap_servers

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
