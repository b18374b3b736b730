"""The re-ranking service against the real broker: ranks, follows snapshots, logs impressions."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bandits import POLICIES, Feedback, Policy, save
from streaming.config import Config
from streaming.events import Impression, decode_impression, key64
from streaming.kafka.clients import (
    ensure_topics,
    make_consumer,
    make_producer,
    partitions_of,
    topic_specs,
)
from streaming.serving.service import MissingTopicError, RankError, RerankService

pytestmark = pytest.mark.integration

D = 16
CANDIDATES = [f"track-{i}" for i in range(10)]
FAVOURITE = 7


def fresh_config(servers: str) -> Config:
    run = uuid.uuid4().hex[:8]
    # Greedy LinUCB: its ranking is a function of the snapshot, so the tests can check exactly
    # what a snapshot taught; exploring policies are served in test_a_service_whose_log_cannot_support_evaluation_says_so.
    cfg = Config.load(
        env={}, overrides=[f"kafka.bootstrap_servers={servers}", "policy.name=linucb"]
    )
    topics = dataclasses.replace(cfg.topics.for_run(run), partitions=2)
    return dataclasses.replace(cfg, topics=topics)


def body(**change: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "user_id": "user-1",
        "surface": "home",
        "context": [0.0] * D,
        "candidates": list(CANDIDATES),
        "candidate_features": [[0.0] * D for _ in CANDIDATES],
        "slate_size": 3,
    }
    req.update(change)
    return {k: v for k, v in req.items() if v is not ...}


def trained_state(policy: Policy) -> Any:
    """A state that learned candidate ``FAVOURITE`` always streams and the others never do."""
    n = 256
    ids = (key64(CANDIDATES) % np.uint64(2**31 - 1)).astype(np.int32)
    arm = np.arange(n) % len(CANDIDATES)
    fb = Feedback(
        context=jnp.zeros((n, D), jnp.float32),
        features=jnp.zeros((n, D), jnp.float32),
        action=jnp.asarray(ids[arm]),
        position=jnp.zeros(n, jnp.int32),
        reward=jnp.asarray((arm == FAVOURITE).astype(np.float32)),
        propensity=jnp.full(n, 0.1, jnp.float32),
        mask=jnp.ones(n, bool),
    )
    return policy.update(policy.init(D, D), fb)


def post(port: int, payload: bytes, path: str = "/rank") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=payload,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read())
        finally:
            err.close()


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read())
        finally:
            err.close()


def logged_impressions(
    cfg: Config, servers: str, expected: int, timeout_s: float = 20
) -> list[tuple[bytes, Impression]]:
    consumer = make_consumer(cfg.kafka, servers, group_id=None)
    try:
        parts = partitions_of(consumer, [cfg.topics.impressions])
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[tuple[bytes, Impression]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.key, decode_impression(r.value)) for r in records)
        return out
    finally:
        consumer.close(autocommit=False)


@pytest.fixture(scope="module")
def served(kafka_broker: str) -> Iterator[tuple[Config, str, RerankService, int]]:
    cfg = fresh_config(kafka_broker)
    ensure_topics(cfg, kafka_broker)
    service = RerankService(cfg, kafka_broker, refresh_ms=50, seed=0)
    port = service.start_http("127.0.0.1", 0)
    try:
        yield cfg, kafka_broker, service, port
    finally:
        service.close()


def test_ranks_follows_the_newest_snapshot_and_logs_what_it_served(
    served: tuple[Config, str, RerankService, int],
) -> None:
    cfg, servers, service, port = served
    status, before = post(port, json.dumps(body(request_id="req-1")).encode())
    assert status == 200, before
    assert before["snapshot_version"] == 0  # no snapshot yet: the policy's initial state
    for answer in (before,):
        assert len(answer["shown"]) == 3
        assert len(set(answer["shown"])) == 3
        assert all(0 <= i < len(CANDIDATES) for i in answer["shown"])
        assert answer["track_ids"] == [CANDIDATES[i] for i in answer["shown"]]
        assert all(0.0 < p <= 1.0 for p in answer["propensities"])
        assert answer["policy"] == cfg.policy.name
    assert before["shown"][0] != FAVOURITE

    policy = POLICIES[cfg.policy.name](**dict(cfg.policy.params))
    state = trained_state(policy)
    producer = make_producer(cfg.kafka, servers)
    producer.send(cfg.topics.snapshots, key=policy.spec.name.encode(), value=save(policy, state))
    producer.flush(timeout=30)
    producer.close()
    assert service.wait_for_snapshot(30)
    for got, want in zip(jax.tree.leaves(service.state), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    status, after = post(port, json.dumps(body(request_id="req-2", user_id="user-2")).encode())
    assert status == 200, after
    assert after["snapshot_version"] == 1
    assert after["shown"][0] == FAVOURITE
    assert after["track_ids"][0] == CANDIDATES[FAVOURITE]
    assert len(set(after["shown"])) == 3
    assert all(0.0 < p <= 1.0 for p in after["propensities"])

    # The Python API and a default slate size (policy.slate_size); a fresh request id.
    direct = service.rank(body(slate_size=...))
    assert len(direct["shown"]) == cfg.policy.slate_size
    assert direct["request_id"]

    service.flush()
    logged = {imp.request_id: (key, imp) for key, imp in logged_impressions(cfg, servers, 3)}
    assert set(logged) == {"req-1", "req-2", direct["request_id"]}
    for answer, user in ((before, "user-1"), (after, "user-2")):
        key, imp = logged[answer["request_id"]]
        assert key == user.encode()  # keyed by user: the daemon's join stays local
        assert imp.user_id == user
        assert imp.shown == answer["shown"]
        assert imp.propensities == answer["propensities"]
        assert imp.candidates == CANDIDATES
        assert imp.policy == answer["policy"]
        assert imp.policy_version == answer["policy_version"]
        assert imp.ts > 0

    status, health = get(port, "/healthz")
    assert (status, health["ok"], health["snapshot_version"]) == (200, True, 1)
    status, counts = get(port, "/metrics-lite")
    assert status == 200
    assert counts["ranked"] >= 3
    assert counts["logged"] >= 3
    assert counts["snapshots_loaded"] == 1
    assert counts["unlogged"] == 0
    assert counts["refused_unloggable"] == 0


BAD = [
    ("missing user_id", body(user_id=...), "missing_field", "user_id"),
    ("unknown field", body(colour="red"), "unknown_field", "colour"),
    ("candidate id not a string", body(candidates=list(range(10))), "wrong_type", "candidates"),
    ("context too short", body(context=[0.0] * 3), "bad_shape", "context has 3 features"),
    (
        "feature row too long",
        body(candidate_features=[[0.0] * D] * 9 + [[0.0] * (D + 1)]),
        "bad_shape",
        "candidate 9 has 17 features",
    ),
    (
        "features for fewer candidates",
        body(candidate_features=[[0.0] * D] * 4),
        "bad_shape",
        "4 feature rows for 10 candidates",
    ),
    (
        "no candidates",
        body(candidates=[], candidate_features=[]),
        "empty_candidates",
        "0 candidates",
    ),
    ("empty user id", body(user_id=""), "bad_value", "non-empty"),
    ("slate of zero", body(slate_size=0), "bad_value", "slate_size 0"),
    ("slate longer than candidates", body(slate_size=11), "bad_value", "slate_size 11"),
    ("repeated candidates", body(candidates=["a"] * 10), "bad_value", "distinct"),
    ("user id too long", body(user_id="u" * 257), "bad_value", "user_id has 257 characters"),
    ("surface too long", body(surface="s" * 300), "bad_value", "surface has 300 characters"),
    ("request id too long", body(request_id="r" * 999), "bad_value", "request_id has 999"),
    (
        "candidate id too long",
        body(candidates=[*CANDIDATES[:9], "t" * 257]),
        "bad_value",
        "candidate 9 has 257 characters",
    ),
]


@pytest.mark.parametrize(("name", "request_body", "code", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_400_with_the_reason(
    served: tuple[Config, str, RerankService, int],
    name: str,
    request_body: dict[str, Any],
    code: str,
    reason: str,
) -> None:
    _, _, service, port = served
    before = service.counts()
    status, answer = post(port, json.dumps(request_body).encode())
    assert status == 400, (name, answer)
    assert answer["error"] == code
    assert reason in answer["reason"]
    with pytest.raises(RankError, match=code):
        service.rank(request_body)
    after = service.counts()
    assert after["ranked"] == before["ranked"]  # nothing served, so nothing logged
    assert after[f"bad_request.{code}"] == before.get(f"bad_request.{code}", 0) + 2


def test_malformed_bodies_and_routes(served: tuple[Config, str, RerankService, int]) -> None:
    _, _, service, port = served
    status, answer = post(port, b'{"user_id": "u", ')
    assert (status, answer["error"]) == (400, "invalid_json")
    status, answer = post(port, b'{"context": [NaN]}')
    assert (status, answer["error"]) == (400, "invalid_json")
    status, answer = post(port, b"[1, 2]")
    assert (status, answer["error"]) == (400, "wrong_type")
    assert "object" in answer["reason"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:  # announce a body over the limit: refused before it is read
        conn.putrequest("POST", "/rank")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(service.config.rerank.max_body_bytes + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"] == "too_large"
    finally:
        conn.close()
    with pytest.raises(RankError, match="non_finite: context"):  # the Python API takes floats
        service.rank(body(context=[float("inf")] + [0.0] * (D - 1)))
    with pytest.raises(RankError, match="non_finite: candidate 2"):
        service.rank(body(candidate_features=[[0.0] * D] * 2 + [[float("nan")] * D] * 8))
    with pytest.raises(RankError, match="non_finite: candidate 3"):  # ragged rows too
        service.rank(
            body(candidate_features=[[0.0] * D] * 3 + [[float("nan")] * (D + 1)] + [[0.0] * D] * 6)
        )
    # Finite as a double, infinite as the float32 the policy ranks with: refused, not ranked.
    big = json.dumps(body(candidate_features=[[0.0] * D] * 9 + [[1e39] + [0.0] * (D - 1)]))
    status, answer = post(port, big.encode())
    assert (status, answer["error"]) == (400, "non_finite")
    assert "candidate 9" in answer["reason"]
    status, answer = post(port, b"{}", path="/nope")
    assert status == 404
    status, answer = get(port, "/nope")
    assert status == 404
    assert "GET /nope" in answer["reason"]


def test_encore_rerank_process_serves_and_stops_on_sigterm(
    served: tuple[Config, str, RerankService, int],
) -> None:
    cfg, servers, _, _ = served
    t = cfg.topics
    sets = [
        f"topics.{name}={getattr(t, name)}"
        for name in ("impressions", "outcomes", "dlq", "late", "snapshots", "deltas")
    ]
    argv = [
        sys.executable,
        "-c",
        "import sys; from streaming.serving.service import main; sys.exit(main(sys.argv[1:]))",
        "--bootstrap-servers",
        servers,
        "--port",
        "0",
        *[x for s in sets for x in ("--set", s)],
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        said: list[str] = []  # warnings first (the default policy's), then where it listens
        match = None
        while match is None and len(said) < 20:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, f"encore rerank printed no address in 60 s: {said}"
            said.append(proc.stdout.readline())
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", said[-1])
        assert match, said
        status, answer = post(int(match.group(1)), json.dumps(body()).encode())
        assert status == 200, answer
        assert len(set(answer["shown"])) == 3
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "stopped after 1 ranked requests" in out


def test_a_missing_impressions_topic_fails_fast_with_a_clear_error(kafka_broker: str) -> None:
    cfg = fresh_config(kafka_broker)  # its topics were never created
    with pytest.raises(MissingTopicError, match=re.escape(cfg.topics.impressions)):
        RerankService(cfg, kafka_broker)


# ---------------------------------------------------------------------------- limits and faults
def limited_service(
    servers: str, *, impressions_max_bytes: int | None = None, **rerank: Any
) -> tuple[Config, RerankService]:
    """A service on fresh topics with ``rerank`` limits changed; the impressions topic takes
    records of at most ``impressions_max_bytes`` when given (its ``max.message.bytes``)."""
    cfg = fresh_config(servers)
    cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, **rerank))
    extra: dict[str, dict[str, Any]] = {}
    if impressions_max_bytes is not None:
        spec = topic_specs(cfg.topics)[cfg.topics.impressions]
        configs = {**spec["configs"], "max.message.bytes": str(impressions_max_bytes)}
        extra[cfg.topics.impressions] = {**spec, "configs": configs}
    ensure_topics(cfg, servers, extra=extra)
    return cfg, RerankService(cfg, servers, refresh_ms=50, seed=0)


def raw_post(
    port: int, payload: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST /rank with exactly ``headers`` (no Content-Length unless given) and ``payload``
    (None: the body is not sent, only announced)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/rank", skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(payload)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_until(done: Any, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def large_request(request_id: str, n: int = 400) -> dict[str, Any]:
    """A valid request whose impression is about ``n`` x 100 bytes (float32 features)."""
    return body(
        request_id=request_id,
        candidates=[f"big-{i}" for i in range(n)],
        candidate_features=[[0.5] * D for _ in range(n)],
    )


def test_an_impression_too_large_for_the_topic_is_refused_and_later_ones_are_logged(
    kafka_broker: str,
) -> None:
    cfg, service = limited_service(kafka_broker, impressions_max_bytes=20_000)
    with service:
        port = service.start_http("127.0.0.1", 0)
        status, answer = post(port, json.dumps(large_request("big")).encode())
        assert status == 413, answer  # refused: it could not be logged, so it is not served
        assert answer["error"] == "too_large"
        assert "max.message.bytes" in answer["reason"]
        for i in range(5):
            status, answer = post(port, json.dumps(body(request_id=f"small-{i}")).encode())
            assert status == 200, answer
        service.flush()
        logged = [imp.request_id for _, imp in logged_impressions(cfg, kafka_broker, 5)]
        assert sorted(logged) == [f"small-{i}" for i in range(5)]
        counts = service.counts()
        assert (counts["ranked"], counts["logged"], counts["unlogged"]) == (5, 5, 0)
        assert counts["refused_unloggable"] == 1
        status, health = get(port, "/healthz")
        assert status == 200
        assert (health["ok"], health["status"]) == (True, "ok")  # nothing served went unlogged
        assert health["refused_unloggable"] == 1
        assert "max.message.bytes" in health["last_log_error"]


def test_a_send_the_broker_refuses_is_counted_and_later_sends_still_log(
    kafka_broker: str,
) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    from streaming.kafka.clients import make_admin

    cfg, service = limited_service(kafka_broker)
    with service:
        port = service.start_http("127.0.0.1", 0)
        # The topic's limit drops under the service's feet: the next large impression is
        # served (its size was fine when checked) and the broker refuses it.
        admin = make_admin(cfg.kafka, kafka_broker)
        try:
            resource = ConfigResource(
                ConfigResourceType.TOPIC,
                cfg.topics.impressions,
                configs={"max.message.bytes": "20000"},
            )
            admin.alter_configs([resource])
        finally:
            admin.close()
        status, answer = post(port, json.dumps(large_request("refused")).encode())
        assert status == 200, answer
        assert wait_until(lambda: service.counts()["unlogged"] == 1)
        status, health = get(port, "/healthz")
        assert (health["ok"], health["status"], health["unlogged"]) == (False, "degraded", 1)
        assert "MessageSizeTooLarge" in health["last_log_error"]
        for i in range(5):
            status, answer = post(port, json.dumps(body(request_id=f"after-{i}")).encode())
            assert status == 200, answer
        service.flush()
        logged = [imp.request_id for _, imp in logged_impressions(cfg, kafka_broker, 5)]
        assert sorted(logged) == [f"after-{i}" for i in range(5)]
        # The failure made the service read the topic's limit again: the next one is refused.
        assert wait_until(lambda: service.impression_limit_bytes < 20_000)
        status, answer = post(port, json.dumps(large_request("big-again")).encode())
        assert (status, answer["error"]) == (413, "too_large")
        counts = service.counts()
        assert (counts["logged"], counts["unlogged"], counts["refused_unloggable"]) == (5, 1, 1)


def test_a_body_that_is_not_json_by_its_content_type_is_415(
    served: tuple[Config, str, RerankService, int],
) -> None:
    _, _, service, port = served
    payload = json.dumps(body()).encode()
    before = service.counts()["ranked"]
    for ctype in ("text/plain", None, "application/x-www-form-urlencoded", "application/jsonl"):
        headers = {"Content-Length": str(len(payload))}
        if ctype is not None:
            headers["Content-Type"] = ctype
        status, answer = raw_post(port, payload, headers)
        assert (status, answer["error"]) == (415, "unsupported_media_type"), ctype
    assert service.counts()["ranked"] == before
    for ctype in ("application/json; charset=utf-8", "Application/JSON"):
        headers = {"Content-Type": ctype, "Content-Length": str(len(payload))}
        status, answer = raw_post(port, payload, headers)
        assert status == 200, (ctype, answer)


def test_bodies_over_the_limit_or_without_a_valid_length_are_refused(kafka_broker: str) -> None:
    _, service = limited_service(kafka_broker, max_body_bytes=4096, read_timeout_ms=30_000)
    with service:
        port = service.start_http("127.0.0.1", 0)
        json_type = {"Content-Type": "application/json"}
        started = time.monotonic()
        # Announced, never sent: refused at once, not after waiting for the body.
        status, answer = raw_post(port, None, {**json_type, "Content-Length": "4097"})
        assert (status, answer["error"]) == (413, "too_large")
        assert time.monotonic() - started < 5
        for length in ("abc", "-1", "1e3", "12, 12"):
            status, answer = raw_post(port, None, {**json_type, "Content-Length": length})
            assert (status, answer["error"]) == (400, "invalid_length"), length
        status, answer = raw_post(port, b"{}", json_type)
        assert (status, answer["error"]) == (411, "length_required")
        chunked = {**json_type, "Transfer-Encoding": "chunked"}
        status, answer = raw_post(port, b"2\r\n{}\r\n0\r\n\r\n", chunked)
        assert (status, answer["error"]) == (411, "length_required")
        payload = json.dumps(body()).encode()
        assert len(payload) <= 4096
        status, answer = raw_post(port, payload, {**json_type, "Content-Length": str(len(payload))})
        assert status == 200, answer
        with pytest.raises(RankError, match="too_large"):  # the Python API has the same limit
            service.rank(json.dumps(large_request("big", 50)).encode())


CAP = 8


def watch(
    socks: list[socket.socket], ended: dict[socket.socket, tuple[float, bytes]], until: float
) -> None:
    """Read ``socks`` until monotonic ``until``; ``ended[s]`` is when ``s`` was closed by the
    server (EOF or reset) and what it read before that."""
    got: dict[socket.socket, bytes] = {}
    while time.monotonic() < until:
        live = [s for s in socks if s not in ended]
        if not live:
            return
        readable, _, _ = select.select(live, [], [], max(0.0, until - time.monotonic()))
        for s in readable:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data:
                got[s] = got.get(s, b"") + data
            else:
                ended[s] = (time.monotonic(), got.get(s, b""))


def test_stalled_connections_are_capped_and_closed_after_the_read_timeout(
    kafka_broker: str,
) -> None:
    timeout_s = 3.0
    _, service = limited_service(
        kafka_broker,
        max_connections=CAP,
        read_timeout_ms=int(timeout_s * 1000),
        evict_waiting_ms=500,
    )
    with service:
        port = service.start_http("127.0.0.1", 0)
        assert post(port, json.dumps(body()).encode())[0] == 200  # compiled: later ones are prompt
        assert wait_until(lambda: service.counts()["connections_open"] == 0, 5)
        threads = threading.active_count()
        opened = time.monotonic()
        stalled = [
            socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(CAP + 12)
        ]
        try:
            ended: dict[socket.socket, tuple[float, bytes]] = {}
            watch(stalled, ended, until=opened + 0.4)
            # Beyond the cap: answered 503 at once (none had waited long enough to be replaced).
            assert len(ended) == 12
            assert all(first.startswith(b"HTTP/1.1 503") for _, first in ended.values())
            assert threading.active_count() <= threads + CAP  # one thread per held connection
            held = [s for s in stalled if s not in ended]
            slow = held[: CAP // 2]  # these start a request and send its body a byte at a time
            for s in slow:
                s.sendall(
                    b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{"
                )
            time.sleep(max(0.0, opened + 0.6 - time.monotonic()))
            # A normal request takes the place of the connection that waited longest.
            started = time.monotonic()
            status, answer = post(port, json.dumps(body()).encode())
            assert status == 200, answer
            assert time.monotonic() - started < 2
            deadline = opened + timeout_s + 3
            while len(ended) < len(stalled) and time.monotonic() < deadline:
                for s in slow:
                    if s not in ended:
                        with contextlib.suppress(OSError):
                            s.send(b" ")
                watch(held, ended, until=time.monotonic() + 0.2)
            assert len(ended) == len(stalled), "a stalled connection outlived the read timeout"
            closed_after = sorted(ended[s][0] - opened for s in held)
            assert closed_after[0] < timeout_s - 1  # the one the normal request replaced
            assert closed_after[1] >= timeout_s - 0.5  # the rest: at the read timeout, not before
            assert closed_after[-1] <= timeout_s + 2
            # Caught mid-body: told so before the close (but the one replaced, if it was slow).
            timed_out = [ended[s][1] for s in slow if ended[s][0] - opened >= timeout_s - 0.5]
            assert len(timed_out) >= len(slow) - 1
            assert all(first.startswith(b"HTTP/1.1 408") for first in timed_out), timed_out
            counts = service.counts()
            assert counts["connections_refused"] == 12
            assert counts["connections_evicted"] == 1
            assert counts["connections_timed_out"] == CAP - 1
            assert wait_until(lambda: service.counts()["connections_open"] == 0, 5)
        finally:
            for s in stalled:
                s.close()


def test_a_slate_the_daemon_could_not_learn_from_is_not_served(kafka_broker: str) -> None:
    """A stochastic policy's draw whose propensity is below events.min_propensity would be
    dead-lettered by the daemon: the service answers 503 ``unlearnable`` and logs nothing."""
    cfg = fresh_config(kafka_broker)
    cfg = dataclasses.replace(
        cfg,
        policy=dataclasses.replace(cfg.policy, name="uniform", slate_size=3),
        events=dataclasses.replace(cfg.events, min_propensity=0.5),
    )
    ensure_topics(cfg, kafka_broker)
    service = RerankService(cfg, kafka_broker, refresh_ms=50, seed=0)
    port = service.start_http("127.0.0.1", 0)
    try:
        status, answer = post(port, json.dumps(body()).encode())
        assert status == 503 and answer["error"] == "unlearnable", answer
        assert "min_propensity" in answer["reason"]
        assert service.counts()["refused_unlearnable"] == 1
    finally:
        service.close()
    assert logged_impressions(cfg, kafka_broker, expected=1, timeout_s=3.0) == []


@pytest.mark.parametrize(
    ("policy", "ready"), [("linucb", False), ("softmax", True), (Config().policy.name, True)]
)
def test_a_service_whose_log_cannot_support_evaluation_says_so(
    kafka_broker: str, policy: str, ready: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = dataclasses.replace(
        fresh_config(kafka_broker),
        policy=dataclasses.replace(fresh_config(kafka_broker).policy, name=policy),
    )
    ensure_topics(cfg, kafka_broker)
    with caplog.at_level("WARNING"), RerankService(cfg, kafka_broker) as service:
        assert service.health()["ope_ready"] is ready
    warned = "cannot support off-policy evaluation" in caplog.text
    assert warned is not ready
