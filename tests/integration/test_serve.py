"""The re-ranking service against the real broker: ranks, follows snapshots, logs impressions."""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import select
import signal
import subprocess
import sys
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
from streaming.kafka_io import ensure_topics, make_consumer, make_producer, partitions_of
from streaming.serve import RankError, RerankService

pytestmark = pytest.mark.integration

D = 16
CANDIDATES = [f"track-{i}" for i in range(10)]
FAVOURITE = 7


def fresh_config(servers: str) -> Config:
    run = uuid.uuid4().hex[:8]
    cfg = Config.load(env={}, overrides=[f"kafka.bootstrap_servers={servers}"])
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
    assert counts["log_errors"] == 0


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
        conn.putheader("Content-Length", str(service.limits.max_message_bytes + 1))
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
        "import sys; from streaming.serve import main; sys.exit(main(sys.argv[1:]))",
        "--bootstrap-servers",
        servers,
        "--port",
        "0",
        *[x for s in sets for x in ("--set", s)],
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "encore rerank printed nothing in 60 s"
        line = proc.stdout.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
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
