"""A worker refuses to join a group another worker is in, unless scale-out is configured."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from streaming.config import Config
from streaming.worker.connections import Connections
from streaming.worker.daemon import Daemon
from streaming.worker.membership import GroupSharedError, refusal, strangers, worker_token
from tests.streaming.worker.test_poll import FakeConsumer


def group_of(*client_ids: str) -> dict[str, Any]:
    return {
        "group_state": "Stable",
        "error": None,
        "members": [
            {"member_id": f"{c}-m{i}", "client_id": c, "client_host": f"/10.0.0.{i}"}
            for i, c in enumerate(client_ids)
        ],
    }


def test_a_worker_token_names_the_host_and_checkpoint_folder(tmp_path: Path) -> None:
    a = worker_token(tmp_path / "a", host="h1")
    assert a == worker_token(tmp_path / "a", host="h1")  # the same on every restart
    assert (
        len({a, worker_token(tmp_path / "b", host="h1"), worker_token(tmp_path / "a", host="h2")})
        == 3
    )


def test_strangers_are_the_members_without_this_workers_token() -> None:
    group = group_of("encore-consumer-aaaa1111", "encore-consumer-bbbb2222", "kafka-python-3.0")
    others = strangers(group, "aaaa1111")
    assert [m.client_id for m in others] == ["encore-consumer-bbbb2222", "kafka-python-3.0"]
    assert (
        str(others[0])
        == "encore-consumer-bbbb2222 on 10.0.0.1 (member encore-consumer-bbbb2222-m1)"
    )
    assert strangers({"group_state": "Dead", "members": []}, "aaaa1111") == []


def test_the_refusal_names_the_other_worker_and_the_settings_for_scale_out() -> None:
    text = refusal("encore-daemon", strangers(group_of("encore-consumer-bbbb2222"), "aaaa1111"))
    assert "consumer group 'encore-daemon' already has another worker" in text
    assert "encore-consumer-bbbb2222 on 10.0.0.0" in text
    for setting in (
        "scale.share_deltas = true",
        "scale.independent_workers = true",
        "kafka.group_id",
    ):
        assert setting in text


class Source(FakeConsumer):
    def close(self, autocommit: bool = True) -> None:
        pass


def daemon(tmp: Path, group: Mapping[str, Any], *overrides: str) -> Daemon:
    cfg = Config.load(
        env={},
        overrides=[
            "kafka.bootstrap_servers=127.0.0.1:1",
            f"checkpoint.dir={tmp / 'ckpt'}",
            "log.dir=",
            "metrics.enabled=false",
            *overrides,
        ],
    )
    links = Connections(source=Source([]), group=lambda: group)
    return Daemon(cfg, servers="127.0.0.1:1", connections=links)


def test_a_worker_refuses_to_open_in_a_group_another_worker_is_in(tmp_path: Path) -> None:
    d = daemon(tmp_path, group_of("encore-consumer-bbbb2222"))
    with pytest.raises(GroupSharedError, match=r"encore-consumer-bbbb2222 on 10\.0\.0\.0"):
        d.run(threading.Event())
    # closed: the checkpoint folder is free for the next start
    Daemon(d.config, servers="127.0.0.1:1", connections=Connections(source=Source([]))).close()


@pytest.mark.parametrize("setting", ["scale.share_deltas=true", "scale.independent_workers=true"])
def test_scale_out_on_purpose_only_warns_when_another_worker_joins(
    tmp_path: Path, setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = daemon(tmp_path, group_of("encore-consumer-bbbb2222"), setting)
    d._check_group(refuse=True)  # pyright: ignore[reportPrivateUsage]
    assert "another worker" not in caplog.text
    d.close()


def test_its_own_previous_run_and_an_undescribable_group_are_no_reason_to_refuse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = daemon(tmp_path, {})
    d.links.group = lambda: group_of(f"encore-consumer-{d.token}")  # killed, not yet expired
    d._check_group(refuse=True)  # pyright: ignore[reportPrivateUsage]
    d.links.group = lambda: {"error": "GroupAuthorizationFailedError", "members": []}
    d._check_group(refuse=True)  # pyright: ignore[reportPrivateUsage]
    assert "could not describe consumer group 'encore-daemon'" in caplog.text

    def fails() -> Mapping[str, Any]:
        raise TimeoutError("no answer")

    d.links.group = fails
    d._check_group(refuse=True)  # pyright: ignore[reportPrivateUsage]
    assert "no answer" in caplog.text
    d.close()


def test_a_worker_that_finds_another_at_an_assignment_warns_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = daemon(tmp_path, group_of("encore-consumer-bbbb2222"))
    d._check_group(refuse=False)  # pyright: ignore[reportPrivateUsage]
    assert "another worker joined consumer group 'encore-daemon' without shared statistics" in (
        caplog.text
    )
    d.close()
