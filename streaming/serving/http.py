"""The re-rank service's HTTP layer: the standard library's threading server, with its limits.

``handler(service, slots)`` routes ``POST /rank``, ``GET /healthz`` and ``GET /metrics-lite`` to
a ``RerankService`` and turns its errors into answers; ``ConnectionSlots`` holds at most
``rerank.max_connections`` connections, evicts the one that waited longest for its request and
closes those past ``rerank.read_timeout_ms``; ``HTTPServer`` admits each connection through the
slots before it takes a thread. Why a hand-written server and not an ASGI stack is in
``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

import msgspec

from streaming.serving.errors import RankError, UnloggableError

if TYPE_CHECKING:
    from streaming.serving.service import RerankService

__all__ = ["ConnectionSlots", "HTTPServer", "handler"]

log = logging.getLogger(__name__)


JSON = "application/json"
MSGPACK = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
"""The ``POST /rank`` body types: JSON, or MessagePack (the same fields; answered in kind)."""


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
    if headers.get("Content-Type") is None or media not in (JSON, *MSGPACK):
        got = headers.get("Content-Type")
        return (
            415,
            "unsupported_media_type",
            f"send Content-Type application/json or application/msgpack, got {got!r}",
        )
    if media == JSON and charset not in (None, "utf-8", "utf8"):
        return 415, "unsupported_media_type", f"the body must be UTF-8, got charset {charset!r}"
    return length


class ConnectionSlots:
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


class HTTPServer(ThreadingHTTPServer):
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
        connections: ConnectionSlots,
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


def handler(service: RerankService, connections: ConnectionSlots) -> type[BaseHTTPRequestHandler]:
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

        def _reply(self, status: int, body: Mapping[str, Any], binary: bool = False) -> None:
            data = msgspec.msgpack.encode(body) if binary else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", MSGPACK[0] if binary else JSON)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _answer_dropped(self, why: str) -> None:
            self.close_connection = True
            headers = getattr(self, "headers", None)
            binary = headers is not None and headers.get_content_type() in MSGPACK
            if why == "timed_out":
                reason = f"the request took over rerank.read_timeout_ms ({rc.read_timeout_ms})"
                self._reply(408, {"error": "timeout", "reason": reason}, binary)
            elif why == "evicted":
                reason = "a newer connection took this one's place while it waited"
                self._reply(503, {"error": "overloaded", "reason": reason}, binary)

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
            binary = self.headers.get_content_type() in MSGPACK
            self._reply(status, {"error": code, "reason": reason}, binary)
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
            binary = self.headers.get_content_type() in MSGPACK
            try:
                answer = service.rank(raw, msgpack=binary)
            except RankError as err:
                status = 413 if err.code == "too_large" else 400
                self._reply(status, {"error": err.code, "reason": err.reason}, binary)
                return
            except UnloggableError as err:
                self._reply(err.status, {"error": err.code, "reason": err.reason}, binary)
                return
            except Exception as exc:
                log.exception("ranking failed")
                service._count("errors")  # pyright: ignore[reportPrivateUsage]
                self._reply(500, {"error": "internal", "reason": str(exc)}, binary)
                return
            self._reply(200, answer, binary)

    return Handler
