"""Against the real local broker: events round-trip across partitions; groups resume where they left."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streaming.config import Config
from streaming.events import Limits, decode_impressions, decode_outcomes
from streaming.kafka.clients import ensure_topics, make_consumer, make_producer
from streaming.sim import traffic
from streaming.sim.simulator import SimConfig, Simulator

pytestmark = pytest.mark.integration


def fresh_config(servers: str) -> Config:
    run = uuid.uuid4().hex[:8]
    cfg = Config.load(
        env={}, overrides=[f"kafka.bootstrap_servers={servers}", f"kafka.group_id=g-{run}"]
    )
    t = cfg.topics
    topics = t.for_run(run)
    return dataclasses.replace(cfg, topics=topics)


def produce(
    cfg: Config, servers: str, n_requests: int, seed: int = 0
) -> tuple[list[bytes], list[bytes]]:
    sim = Simulator(SimConfig(seed=seed, request_gap_ms=1000))
    req = sim.requests(n_requests)
    sl = sim.log_slates(req, 3)
    plays = sim.play(req, sl.shown)
    imps = traffic.impressions(req, sl.shown, sl.propensity, policy="logging")
    outs = traffic.outcomes(req, plays)
    producer = make_producer(cfg.kafka, servers)
    sent_i: list[bytes] = []
    sent_o: list[bytes] = []
    for w in traffic.wire(imps, outs):
        topic = cfg.topics.impressions if w.role == "impressions" else cfg.topics.outcomes
        producer.send(topic, key=w.key, value=w.value)
        (sent_i if w.role == "impressions" else sent_o).append(w.value)
    producer.flush(timeout=60)
    producer.close()
    return sent_i, sent_o


def consume_all(
    cfg: Config,
    servers: str,
    topics: list[str],
    expected: int,
    *,
    group: str | None,
    limit: int | None = None,
    timeout_s: float = 60,
) -> dict[str, list[tuple[int, int, bytes]]]:
    consumer = make_consumer(cfg.kafka, servers, group_id=group, topics=topics)
    got: dict[str, list[tuple[int, int, bytes]]] = {t: [] for t in topics}
    n = 0
    deadline = time.monotonic() + timeout_s
    try:
        while n < (limit or expected) and time.monotonic() < deadline:
            for tp, recs in consumer.poll(
                timeout_ms=500, max_records=(limit and (limit - n)) or 5000
            ).items():
                for r in recs:
                    got[tp.topic].append((tp.partition, r.offset, r.value))
                    n += 1
        if limit is not None and group is not None:
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
    return got


def test_ten_thousand_events_round_trip_across_partitions(kafka_broker: str) -> None:
    cfg = fresh_config(kafka_broker)
    ensure_topics(cfg, kafka_broker)
    sent_i, sent_o = produce(cfg, kafka_broker, 3000)
    total = len(sent_i) + len(sent_o)
    assert total >= 10_000
    got = consume_all(
        cfg, kafka_broker, [cfg.topics.impressions, cfg.topics.outcomes], total, group=None
    )
    imps = got[cfg.topics.impressions]
    outs = got[cfg.topics.outcomes]
    assert sorted(v for _, _, v in imps) == sorted(sent_i)
    assert sorted(v for _, _, v in outs) == sorted(sent_o)
    assert len({p for p, _, _ in imps}) == cfg.topics.partitions  # spread over every partition
    ib, irej = decode_impressions([v for _, _, v in imps], Limits())
    ob, orej = decode_outcomes([v for _, _, v in outs], Limits())
    assert not irej and not orej and ib.n == len(sent_i) and ob.n == len(sent_o)
    # keyed by user: one user's events never span partitions
    by_user: dict[str, set[int]] = {}
    for (p, _, _), u in zip(imps, ib.user_id.tolist(), strict=True):
        by_user.setdefault(u, set()).add(p)
    assert all(len(ps) == 1 for ps in by_user.values())
    # offsets within each partition arrive in order
    for p in range(cfg.topics.partitions):
        offs = [o for q, o, _ in imps if q == p]
        assert offs == sorted(offs)


def test_consumer_group_commits_stops_and_resumes(kafka_broker: str) -> None:
    cfg = fresh_config(kafka_broker)
    ensure_topics(cfg, kafka_broker)
    sent_i, _ = produce(cfg, kafka_broker, 500)
    group = f"resume-{uuid.uuid4().hex[:6]}"
    first = consume_all(
        cfg, kafka_broker, [cfg.topics.impressions], len(sent_i), group=group, limit=200
    )
    second = consume_all(
        cfg, kafka_broker, [cfg.topics.impressions], len(sent_i) - 200, group=group
    )
    a = [(p, o) for p, o, _ in first[cfg.topics.impressions]]
    b = [(p, o) for p, o, _ in second[cfg.topics.impressions]]
    assert len(a) == 200 and len(a) + len(b) == len(sent_i)
    assert not set(a) & set(b)  # nothing read twice after the commit
    assert sorted(
        v for *_, v in first[cfg.topics.impressions] + second[cfg.topics.impressions]
    ) == sorted(sent_i)


def test_topics_create_is_idempotent_and_snapshots_are_compacted(kafka_broker: str) -> None:
    cfg = fresh_config(kafka_broker)
    first = ensure_topics(cfg, kafka_broker)
    second = ensure_topics(cfg, kafka_broker)
    assert set(first.values()) == {"created"} and set(second.values()) == {"exists"}
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    try:
        res = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, cfg.topics.snapshots)]
        )
        text = str(res)
        assert "compact" in text
    finally:
        admin.close()


def test_cli_broker_start_status_stop_leaves_no_java(tmp_path: Path) -> None:
    state = str(tmp_path / "b")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streaming", *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    started = run("broker", "start", "--state-dir", state)
    assert started.returncode == 0, started.stderr
    assert "bootstrap 127.0.0.1:" in started.stdout
    pid = int(started.stdout.split("pid ")[1].split(",")[0])
    assert run("broker", "status", "--state-dir", state).returncode == 0
    stopped = run("broker", "stop", "--state-dir", state)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert (
        not Path(f"/proc/{pid}").exists()
        or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    )
    assert run("broker", "status", "--state-dir", state).returncode == 3
