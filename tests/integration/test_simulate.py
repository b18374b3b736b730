"""``encore simulate`` against the real broker: a second run continues the stream's event time
with request ids of its own, and one told to start behind the stream says so."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from streaming.cli import main
from streaming.config import Config
from streaming.kafka.clients import TopicPartition, make_consumer

pytestmark = pytest.mark.integration


def _impressions(cfg: Config, servers: str) -> list[dict[str, object]]:
    reader = make_consumer(cfg.kafka, servers, group_id=None)
    try:
        topic = cfg.topics.impressions
        tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or [])]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        out: list[dict[str, object]] = []
        while any(reader.position(tp) < ends[tp] for tp in tps):
            for records in reader.poll(timeout_ms=500).values():
                out.extend(msgspec.json.decode(r.value) for r in records)
        return out
    finally:
        reader.close(autocommit=False)


def test_a_second_simulate_continues_the_streams_event_time(
    kafka_broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = uuid.uuid4().hex[:8]
    names = [f"topics.{t}=encore.{t}.{run}" for t in ("impressions", "outcomes")]
    flags = ["--bootstrap-servers", kafka_broker, *(a for n in names for a in ("--set", n))]
    cfg = Config.load(env={}, overrides=[f"kafka.bootstrap_servers={kafka_broker}", *names])
    assert main(["topics", "create", *flags]) == 0
    assert main(["simulate", "--requests", "3000", *flags]) == 0
    first = _impressions(cfg, kafka_broker)
    said = capsys.readouterr()
    assert "from event time 0 ms" in said.out
    progress = [line for line in said.err.splitlines() if line.startswith("encore simulate: ")]
    assert [line.split(" requests")[0] for line in progress] == [
        f"encore simulate: {n:,} of 3,000" for n in (1000, 2000, 3000)
    ]
    assert main(["simulate", "--requests", "300", *flags]) == 0
    both = _impressions(cfg, kafka_broker)
    second = [e for e in both if e["request_id"] not in {f["request_id"] for f in first}]
    assert len(first) == 3000 and len(second) == 300  # no request id of the second repeats one
    assert min(int(e["ts"]) for e in second) > max(int(e["ts"]) for e in first)  # type: ignore[call-overload]
    capsys.readouterr()
    assert main(["simulate", "--requests", "10", "--start-ms", "0", *flags]) == 0
    assert "counts the ones behind its watermark late" in capsys.readouterr().err
