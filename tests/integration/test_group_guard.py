"""A second worker started by accident in a running worker's consumer group is refused.

Two ``encore run`` with one ``kafka.group_id`` and no shared statistics would split the partitions
and learn two policies; the second one must stop at once with exit code 2, naming the first
(``streaming.worker.membership``). A worker restarted after a kill -9, whose dead member the group
still lists, is not refused: ``test_faults`` restarts killed daemons within their session.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from streaming.demo import produce_simulated
from streaming.kafka.clients import describe_group, ensure_topics
from tests.integration.test_faults import (
    DAEMON,
    ROOT,
    SLATE,
    child_env,
    fresh_topics,
    start_daemon,
    stop,
    tail,
    write_config,
)

pytestmark = pytest.mark.integration


def test_a_second_worker_in_a_running_workers_group_stops_naming_it(
    kafka_broker: str, tmp_path: Path
) -> None:
    topics = fresh_topics()
    group = f"guard-{uuid.uuid4().hex[:6]}"
    first = write_config(
        tmp_path / "a.toml", kafka_broker, topics, group=group, ckpt_dir=tmp_path / "ck-a"
    )
    write_config(tmp_path / "b.toml", kafka_broker, topics, group=group, ckpt_dir=tmp_path / "ck-b")
    ensure_topics(first, kafka_broker)
    produce_simulated(first, kafka_broker, n_requests=200, slate_size=SLATE, seed=5)
    never_joined = describe_group(first.kafka, kafka_broker, group)  # no error: just empty
    assert never_joined["error"] is None and never_joined["members"] == []
    proc = start_daemon(tmp_path / "a.toml", tmp_path / "a.log", idle_ms=600_000)
    try:
        deadline = time.monotonic() + 120
        while not describe_group(first.kafka, kafka_broker, group).get("members"):
            assert proc.poll() is None, tail(tmp_path / "a.log")
            assert time.monotonic() < deadline, f"a never joined:\n{tail(tmp_path / 'a.log')}"
            time.sleep(0.5)
        member = describe_group(first.kafka, kafka_broker, group)["members"][0]
        second = subprocess.run(
            [*DAEMON, "--config", str(tmp_path / "b.toml"), "--exit-when-idle-ms", "5000"],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"consumer group {group!r} already has another worker" in second.stderr
        assert member["client_id"] in second.stderr
        assert "Traceback" not in second.stderr
        assert proc.poll() is None, "the first worker must go on"
        assert [
            m["member_id"] for m in describe_group(first.kafka, kafka_broker, group)["members"]
        ] == [member["member_id"]], "the refused worker never joined"
    finally:
        stop(proc)
