"""The group watchdog's decisions (streaming.worker.liveness), without a broker.

Its effect on a real consumer group is in tests/integration/test_liveness.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from streaming.config import Config, ConfigError
from streaming.worker.liveness import GroupWatch, owned_partitions, unowned_partitions

PAIR = [("imp", 0), ("imp", 1), ("out", 0), ("out", 1)]


def member(*assigned: tuple[str, list[int]]) -> dict[str, Any]:
    return {
        "member_id": "m",
        "member_assignment": {
            "assigned_partitions": [{"topic": t, "partitions": ps} for t, ps in assigned],
            "user_data": "",
        },
    }


def group(state: str, *members: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    return {"group_state": state, "members": list(members), "error": error}


def test_owned_partitions_unions_the_members_and_is_unknown_with_an_undecoded_assignment() -> None:
    g = group(
        "Stable",
        member(("imp", [0]), ("out", [0])),
        member(("imp", [1])),
        {"member_id": "x", "member_assignment": b"\x00\x01"},  # could not be decoded
    )
    assert owned_partitions(g) is None  # one member's assignment is unknown
    assert owned_partitions(group("Stable", *g["members"][:2])) == {
        ("imp", 0),
        ("out", 0),
        ("imp", 1),
    }
    assert unowned_partitions(g, PAIR) is None  # so nobody can say what is unowned
    assert owned_partitions(group("Empty")) == set()


def test_unowned_partitions_only_of_a_stable_group() -> None:
    g = group("Stable", member(("imp", [0, 1]), ("out", [0])))
    assert unowned_partitions(g, PAIR) == {("out", 1)}
    assert unowned_partitions(group("Stable", member(("imp", [0, 1]), ("out", [0, 1]))), PAIR) == (
        set()
    )
    for state in ("PreparingRebalance", "CompletingRebalance", "Empty", "Dead"):
        assert unowned_partitions(group(state), PAIR) is None, state
    assert unowned_partitions(group("Stable", error="GroupAuthorizationFailed"), PAIR) is None


class Fake:
    """The consumer and coordinator as the watch sees them."""

    def __init__(self, description: dict[str, Any]) -> None:
        self.assignment: set[tuple[str, int]] = set()
        self.description = description
        self.described = 0
        self.rejoined = 0
        self.restarted = 0
        self.partitions = list(PAIR)
        self.broken = False  # describe raises

    def describe(self) -> dict[str, Any]:
        self.described += 1
        if self.broken:
            raise ConnectionError("coordinator not available")
        return self.description

    def rejoin(self) -> None:
        self.rejoined += 1

    def restart(self) -> None:
        self.restarted += 1

    def watch(self, after_ms: int = 10_000) -> GroupWatch:
        return GroupWatch(
            after_ms,
            assigned=lambda: self.assignment,
            describe=self.describe,
            partitions=lambda: PAIR,
            rejoin=self.rejoin,
        )

    def full_watch(self, after_ms: int = 10_000, me: str | None = "me") -> GroupWatch:
        """The watch as the daemon makes it: with this member's id and a restart."""
        return GroupWatch(
            after_ms,
            assigned=lambda: self.assignment,
            describe=self.describe,
            partitions=lambda: self.partitions,
            rejoin=self.rejoin,
            member_id=lambda: me,
            restart=self.restart,
        )


def test_rejoins_after_holding_nothing_for_after_ms_while_partitions_are_unowned() -> None:
    fake = Fake(group("Stable"))  # the only member holds nothing: everything is unowned
    w = fake.watch()
    assert not w.tick(0)  # starts the clock
    assert not w.tick(9_999)
    assert fake.described == 0  # nobody is asked before after_ms
    assert w.tick(10_000)
    assert (fake.rejoined, w.rejoins, w.checks) == (1, 1, 1)
    # Still nothing after the rejoin: it asks again one period later, not on every loop.
    assert not w.tick(15_000)
    assert w.tick(20_000)
    assert fake.rejoined == 2


def test_a_spare_worker_never_rejoins_while_the_group_owns_every_partition() -> None:
    fake = Fake(group("Stable", member(("imp", [0, 1]), ("out", [0, 1]))))
    w = fake.watch()
    for now in range(0, 100_001, 1_000):
        assert not w.tick(now)
    assert fake.rejoined == 0
    assert fake.described == w.checks == 10  # asked once per period, not once per loop


def test_holding_a_partition_resets_the_clock_and_a_rebalance_in_progress_is_left_alone() -> None:
    fake = Fake(group("PreparingRebalance"))
    w = fake.watch()
    w.tick(0)
    fake.assignment = {("imp", 0)}
    assert not w.tick(9_000)
    fake.assignment = set()
    assert not w.tick(12_000)  # the clock starts again here
    assert not w.tick(21_000)
    assert fake.described == 0
    assert not w.tick(22_000)  # asked: the group is rebalancing, so no rejoin
    assert (fake.described, fake.rejoined) == (1, 0)


def test_partitions_the_group_lists_under_this_empty_handed_member_count_as_unowned() -> None:
    """The group says this member holds everything, the consumer holds nothing: its
    assignment never arrived, and nobody reads those partitions."""
    mine = {**member(("imp", [0, 1]), ("out", [0, 1])), "member_id": "me"}
    assert unowned_partitions(group("Stable", mine), PAIR) == set()
    assert unowned_partitions(group("Stable", mine), PAIR, excluding="me") == set(PAIR)
    fake = Fake(group("Stable", mine))
    w = fake.full_watch()
    w.tick(0)
    assert w.tick(10_000)
    assert (fake.rejoined, fake.restarted) == (1, 0)
    # Another member's claim still counts: a spare worker stays put.
    fake = Fake(group("Stable", mine))
    w = fake.full_watch(me="other")
    for now in range(0, 50_001, 1_000):
        assert not w.tick(now)
    assert (fake.rejoined, fake.restarted) == (0, 0)


def test_a_worker_a_rejoin_did_not_mend_gets_its_consumer_replaced() -> None:
    fake = Fake(group("Stable"))  # everything unowned, at every check
    w = fake.full_watch()
    w.tick(0)
    assert w.tick(10_000)  # first check: rejoin
    assert not w.tick(20_000)  # still nothing at the next: replaced, not rejoined again
    assert (fake.rejoined, fake.restarted, w.rejoins, w.restarts) == (1, 1, 1, 1)
    assert w.tick(30_000)  # the count starts again: the new consumer gets its own rejoin
    assert not w.tick(40_000)
    assert (fake.rejoined, fake.restarted) == (2, 2)


def test_a_group_neither_stable_nor_known_at_two_checks_in_a_row_gets_the_consumer_replaced() -> (
    None
):
    """A client that never completes its join leaves the group empty or rebalancing."""
    for state in ("Empty", "PreparingRebalance", "Dead"):
        fake = Fake(group(state))
        w = fake.full_watch()
        w.tick(0)
        assert not w.tick(10_000)
        assert fake.restarted == 0  # once may be a rebalance taking its time
        assert not w.tick(20_000)
        assert (fake.rejoined, fake.restarted) == (0, 1), state
    # Client metadata without the topics' partitions says nothing either.
    fake = Fake(group("Stable", member(("imp", [0, 1]), ("out", [0, 1]))))
    fake.partitions = []
    w = fake.full_watch()
    w.tick(0)
    w.tick(10_000)
    w.tick(20_000)
    assert (fake.rejoined, fake.restarted) == (0, 1)


def test_holding_a_partition_or_a_fully_owned_group_clears_the_count() -> None:
    fake = Fake(group("PreparingRebalance"))
    w = fake.full_watch()
    w.tick(0)
    w.tick(10_000)  # one short check
    fake.assignment = {("imp", 0)}
    w.tick(15_000)  # held something: the count is cleared
    fake.assignment = set()
    w.tick(16_000)
    w.tick(26_000)  # one short check again, not two
    assert fake.restarted == 0
    fake.description = group("Stable", member(("imp", [0, 1]), ("out", [0, 1])))
    w.tick(36_000)  # every partition owned by another member: cleared
    fake.description = group("PreparingRebalance")
    w.tick(46_000)
    assert fake.restarted == 0
    w.tick(56_000)
    assert fake.restarted == 1


def test_a_spare_worker_whose_stable_group_cannot_be_read_in_full_is_never_replaced() -> None:
    """A member whose assignment kafka-python could not decode (another client), or a describe
    refused with an error: nothing is known, so nothing counts toward a replacement."""
    other = {"member_id": "x", "member_assignment": b"\x00\x01"}
    for description in (
        group("Stable", other),
        group("Stable", error="GroupAuthorizationFailed"),
        group("PreparingRebalance", error="GroupAuthorizationFailed"),
    ):
        fake = Fake(description)
        w = fake.full_watch()
        for now in range(0, 100_001, 1_000):
            assert not w.tick(now)
        assert (fake.rejoined, fake.restarted, w.checks) == (0, 0, 10)


def test_a_failing_describe_is_logged_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    fake = Fake(group("Stable"))
    fake.broken = True
    w = fake.watch(1_000)
    w.tick(0)
    assert not w.tick(1_000)
    assert fake.rejoined == 0
    assert "could not describe the consumer group" in caplog.text
    # Nothing learned, so no count toward a restart: a broker that is down is waited for.
    w = fake.full_watch(1_000)
    for now in range(0, 10_001, 1_000):
        w.tick(now)
    assert (fake.rejoined, fake.restarted) == (0, 0)


def test_the_config_refuses_a_watchdog_period_shorter_than_the_session() -> None:
    with pytest.raises(ConfigError, match="rejoin_unassigned_ms"):
        Config.load(
            env={},
            overrides=["kafka.session_timeout_ms=10000", "kafka.rejoin_unassigned_ms=5000"],
        )
    with pytest.raises(ConfigError, match="stall_restart_ms"):
        Config.load(
            env={},
            overrides=["kafka.session_timeout_ms=10000", "kafka.stall_restart_ms=2000"],
        )
    off = Config.load(
        env={}, overrides=["kafka.rejoin_unassigned_ms=0", "kafka.stall_restart_ms=0"]
    )
    assert off.kafka.rejoin_unassigned_ms == off.kafka.stall_restart_ms == 0
