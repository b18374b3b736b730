"""The demo against the real broker: a few seconds of live learning beat the logging policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streaming.config import Config
from streaming.demo import LOGGING, DemoOptions, run_demo
from streaming.evaluate.reward_models import main as rewards_report
from streaming.evaluate.reward_models import read_plays

pytestmark = pytest.mark.integration


def test_demo_learns_to_beat_the_logging_policy(kafka_broker: str, tmp_path: Path) -> None:
    config = Config.load(env={})
    opts = DemoOptions(
        duration_s=30, rate=500, slate_size=5, seed=3, bootstrap_servers=kafka_broker, out=tmp_path
    )
    assert run_demo(config, opts) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["events_consumed"] == report["events_produced"] > 20_000
    assert report["dead_letters"] == report["malformed_injected"] > 0
    assert report["checkpoints"] >= 1 and report["snapshots_used_by_listeners"] >= 1
    assert report["gc_collections"] >= 3  # the poll loop's timed collections, one every 5 s
    assert report["counters"]["feedback_rows"] > 10_000
    curve = report["true_top_reward_by_period"]
    learner, logging = curve[config.policy.name], curve[LOGGING]
    assert learner[-1] > learner[0] + 0.1  # it learned
    assert sum(learner[-2:]) > sum(logging[-2:])  # and ends ahead of the logging policy
    # The references from the simulator's truth bracket the logging policy.
    ref = report["true_top_reward_reference"]
    assert 0 < ref["random"] < sum(logging) / len(logging) < ref["oracle"] < 1
    assert len(report["true_top_reward_reference_by_period"]["oracle"]) == len(logging)
    assert (tmp_path / "learning.png").stat().st_size > 0
    # The reward model's report reads the daemon's own log.
    (log_dir,) = (tmp_path / "log").iterdir()
    assert rewards_report(["report", str(log_dir), "--out", str(tmp_path / "r.png")]) == 0
    assert len(read_plays(log_dir)) >= report["counters"]["feedback_rows"] // 2
