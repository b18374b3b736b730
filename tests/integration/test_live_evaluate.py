"""Live off-policy evaluation: the daemon publishes joined records, `encore evaluate --topic`
folds them into the anytime-valid confidence sequence as they arrive."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from pathlib import Path

import pytest

from streaming import evaluate
from streaming.config import Config
from streaming.demo import produce_simulated
from streaming.kafka.clients import ensure_topics
from streaming.worker.daemon import Daemon

pytestmark = pytest.mark.integration


def test_evaluate_a_live_topic_of_joined_records(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = uuid.uuid4().hex[:8]
    cfg = Config.load(
        env={},
        overrides=[
            f"kafka.bootstrap_servers={kafka_broker}",
            f"kafka.group_id=live-{run}",
            f"checkpoint.dir={tmp_path / 'ckpt'}",
            f"log.dir={tmp_path / 'log'}",
            "log.publish_joined=true",
            "log.max_candidates=20",
            "metrics.enabled=false",
            "join.window_ms=1200000",
            "join.allowed_lateness_ms=60000",
            "join.slate_size=5",
        ],
    )
    t = cfg.topics
    cfg = dataclasses.replace(
        cfg,
        topics=t.for_run(run),
    )
    ensure_topics(cfg, kafka_broker)
    produce_simulated(cfg, kafka_broker, n_requests=2500, slate_size=5, seed=11)
    daemon = Daemon(cfg, servers=kafka_broker)
    daemon.run(threading.Event(), exit_when_idle_ms=3000)
    closed = daemon.state.counters["closed"]
    assert closed > 1000
    rc = evaluate.main(
        [
            "--topic",
            cfg.topics.joined,
            "--bootstrap-servers",
            kafka_broker,
            "--idle-exit-ms",
            "3000",
            "--batch-rows",
            "500",
            "--column-map",
            "action=shown[0],reward=reward[0],propensity=propensity[0]",
            "--context-columns",
            "context",
            "--candidate-features-column",
            "candidate_features",
            "--policy-checkpoint",
            str(tmp_path / "ckpt"),
            "--estimators",
            "ips,snips",
            "--policy-samples",
            "8",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    updates = [ln for ln in out.splitlines() if " rows " in ln]
    assert len(updates) >= 2  # the sequence was updated as batches arrived
    assert f"{closed:,} rows" in updates[-1]  # every joined record was evaluated once

    # The same policy, as the daemon published it to the snapshots topic, on its Parquet log.
    rc = evaluate.main(
        [
            str(tmp_path / "log"),
            "--column-map",
            "action=shown[0],reward=reward[0],propensity=propensity[0]",
            "--context-columns",
            "context",
            "--candidate-features-column",
            "candidate_features",
            "--policy-snapshot",
            cfg.policy.name,
            "--snapshots-topic",
            cfg.topics.snapshots,
            "--bootstrap-servers",
            kafka_broker,
            "--estimators",
            "ips,snips",
            "--policy-samples",
            "8",
            "--n-bootstrap",
            "50",
            "--no-progress",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert rc == 0
    assert f"snapshot '{cfg.policy.name}'" in (tmp_path / "eval" / "report.md").read_text()
