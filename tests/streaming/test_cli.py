"""The `encore` console script: every command listed, and the commands that need no broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streaming.cli import main
from streaming.worker.lock import DirLock

COMMANDS = (
    "demo",
    "broker",
    "topics",
    "simulate",
    "run",
    "status",
    "rerank",
    "evaluate",
    "rewards",
)


def test_help_lists_every_command_with_a_description() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streaming", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name + " ")), "")
        assert line.strip() != name and len(line.split()) > 2, f"{name} has no description"


def test_simulate_describe_prints_the_marginals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--describe", "--requests", "2000"]) == 0
    out = capsys.readouterr().out
    assert "skip_rate_5s" in out and "Lamere" in out and "reward_oracle_top1" in out


@pytest.mark.slow
def test_rewards_report_on_simulated_plays(tmp_path: Path) -> None:
    png = tmp_path / "rel.png"
    assert main(["rewards", "report", "--simulate-plays", "3000", "--out", str(png)]) == 0
    assert png.stat().st_size > 0


def test_bad_config_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--set", "join.window_ms=0"]) == 2
    assert "window_ms" in capsys.readouterr().err


def test_a_second_worker_on_one_checkpoint_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = DirLock(tmp_path / "ckpt" / "LOCK", "another worker's")
    held.acquire()
    args = ["run", "--set", "kafka.bootstrap_servers=127.0.0.1:1", "--set"]
    assert main([*args, f"checkpoint.dir={tmp_path / 'ckpt'}"]) == 2
    assert "is in use by another worker" in capsys.readouterr().err
    held.release()
