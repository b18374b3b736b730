"""The `encore` console script: every command listed, the commands that need no broker, and
mistakes (arguments, configuration, an absent broker, Ctrl-C) told in one line, not a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import streaming.cli
from streaming.cli import EXIT_INTERRUPTED, build_parser, main
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


@pytest.fixture
def dead_address() -> str:
    """``127.0.0.1:PORT`` where nothing listens: a port the system handed out, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def listening_address() -> Iterator[str]:
    """``127.0.0.1:PORT`` that accepts TCP connections (and answers nothing)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def _quick_and_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test waits long for a broker, changes logging, or reads the caller's ENCORE_ settings."""
    monkeypatch.setattr(streaming.cli, "CONNECT_TIMEOUT_S", 0.5)

    def keep_pytests_logging(**_: object) -> None:
        pass

    monkeypatch.setattr(logging, "basicConfig", keep_pytests_logging)
    for name in list(os.environ):
        if name.startswith("ENCORE_"):
            monkeypatch.delenv(name)


def test_no_command_prints_the_commands_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["-v"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: encore")
    assert all(f"    {name} " in err for name in COMMANDS)


def test_a_wrong_flag_shows_the_usage_of_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: encore run ") and "--exit-when-idle-ms" in err
    assert err.rstrip().endswith("encore run: error: unrecognized arguments: --bogus")
    with pytest.raises(SystemExit):
        main(["--bogus", "run"])
    assert capsys.readouterr().err.startswith("usage: encore [-h]")


def test_option_prefixes_are_not_expanded(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--describe", "--request", "100"])
    assert info.value.code == 2
    assert "unrecognized arguments: --request 100" in capsys.readouterr().err
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # pyright: ignore[reportPrivateUsage]
    parsers = [parser, *subparsers.choices.values()]  # pyright: ignore[reportUnknownMemberType]
    assert all(not p.allow_abbrev for p in parsers)  # pyright: ignore[reportUnknownMemberType]


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("streaming.worker.metrics", ["--conf", "x.toml"]),
        ("streaming.serving.service", ["--conf", "x.toml"]),
        ("streaming.evaluate.cli", ["x.parquet", "--se", "1"]),
        ("streaming.evaluate.reward_models", ["report", "--se", "1"]),
    ],
)
def test_the_tools_own_parsers_do_not_expand_prefixes_either(
    module: str, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    tool = importlib.import_module(module)
    with pytest.raises(SystemExit) as info:
        tool.main(args)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_verbose_is_taken_before_and_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["-v", "run"]).verbose
    assert parser.parse_args(["run", "--verbose"]).verbose
    assert not parser.parse_args(["run"]).verbose


@pytest.mark.parametrize(
    "command", [["run"], ["simulate"], ["topics", "create"], ["rerank"]], ids=" ".join
)
def test_no_broker_at_the_address_is_one_line_and_exit_2(
    command: list[str], dead_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--bootstrap-servers", dead_address]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"encore: no Kafka broker answers at {dead_address}; start one with "
        "`encore broker start` or pass --bootstrap-servers HOST:PORT\n"
    )


def test_a_wrong_flag_of_rerank_is_its_usage_not_a_broker_error(
    dead_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["rerank", "--bootstrap-servers", dead_address, "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: encore rerank") and "--bogus" in err


def test_verbose_keeps_the_traceback(dead_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v", "topics", "create", "--bootstrap-servers", dead_address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1].startswith("encore: no Kafka broker answers at")


def test_no_broker_configured_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topics", "create", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("encore: no Kafka cluster: run `encore broker start`")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", [["run"], ["rerank"]], ids=" ".join)
def test_an_unknown_policy_is_one_line_with_a_suggestion(
    command: list[str], listening_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*command, "--bootstrap-servers", listening_address, "--set", "policy.name=linucbb"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("encore: unknown policy 'linucbb' in policy.name (did you mean linucb?)")
    assert err.count("\n") == 1


def test_an_unknown_config_key_is_one_line_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--set", "join.windw_ms=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("encore: unknown key(s) ['windw_ms'] in [join]")
    assert "(did you mean join.window_ms?)" in err and err.count("\n") == 1


def test_ctrl_c_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(streaming.cli, "_broker", interrupted)
    for command in (["run"], ["simulate"]):
        assert main(command) == EXIT_INTERRUPTED == 130
        assert capsys.readouterr().err == "encore: interrupted\n"


def test_help_and_argument_errors_do_not_load_jax() -> None:
    script = (
        "import contextlib, io, sys\n"
        "from streaming.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['run', '--bogus'], [], ['config', 'reference']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    timed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "streaming", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines()}
    assert "jax" not in imported and "encore" in timed.stdout


def test_a_second_worker_on_one_checkpoint_dir_is_a_clear_error(
    tmp_path: Path, listening_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    held = DirLock(tmp_path / "ckpt" / "LOCK", "another worker's")
    held.acquire()
    args = ["run", "--set", f"kafka.bootstrap_servers={listening_address}", "--set"]
    assert main([*args, f"checkpoint.dir={tmp_path / 'ckpt'}"]) == 2
    assert "is in use by another worker" in capsys.readouterr().err
    held.release()


def test_the_demo_keeps_its_broker_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's local broker lives under ENCORE_STATE_DIR (or --state-dir), like every
    other command's; the broker itself is not started here (it stops at its first step)."""
    import streaming.demo as demo

    seen: list[Path] = []

    class Stop(Exception):
        pass

    class Recorder:
        def __init__(self, state_dir: Path) -> None:
            seen.append(state_dir)

        def wipe(self) -> None:
            raise Stop

    monkeypatch.setattr(demo, "LocalBroker", Recorder)
    monkeypatch.setenv("ENCORE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("ENCORE_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(Stop):
        main(["demo", "--out", str(tmp_path / "out")])
    with pytest.raises(Stop):
        main(["demo", "--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "other")])
    assert seen == [tmp_path / "state" / "demo-broker", tmp_path / "other" / "demo-broker"]
