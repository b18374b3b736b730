"""A watchdog for a consumer that the group left without partitions while some are unowned.

kafka-python 3.0.12 can complete a group join in which the leader assigned nothing (its metadata
did not hold the topics yet) and then never rejoin, and a member kicked out of the group (its
session expired while a long step held the GIL, or the process was paused) has been seen sit in
``poll`` with no partitions and all the lag left. Either way the daemon would consume nothing and
never go idle. ``GroupWatch`` notices it: once this worker has held no partition for
``after_ms``, it asks the group coordinator which partitions of the subscribed topics no member
owns; when the group is stable and some are unowned, it makes the consumer rejoin. A worker that
holds nothing because the group has more members than partitions sees every partition owned and
does not rejoin, so idle spare workers never set off rebalances.

Two more ways a worker can hold nothing while it should not are caught as well: the group lists
partitions under this very member although the consumer holds none (its assignment never
arrived), which counts those partitions as unowned; and a worker that still holds nothing at the
next check after a rejoin, or that found the group not stable (empty, rebalancing, dead) at two
checks in a row, gets its consumer replaced (``restart``), since a client that a rejoin did not
mend is not trusted to mend itself. A check that learns nothing (the describe failed or was
refused, or a member's assignment could not be decoded) never counts toward a replacement, so a
spare worker never sets off rebalances.

The class talks to Kafka only through the callables it is given (the daemon passes its consumer
and an admin client from ``streaming.kafka.clients``), so its decisions are tested without a broker
and its effect against the real one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Partition = tuple[str, int]


def owned_partitions(
    description: Mapping[str, Any], *, excluding: str | None = None
) -> set[Partition] | None:
    """The (topic, partition) pairs the members of a described group hold; None when unknown.

    ``description`` is one group's entry of ``KafkaAdminClient.describe_groups``: ``members``,
    each with a decoded ``member_assignment`` whose ``assigned_partitions`` list
    ``{"topic": ..., "partitions": [...]}``. When a member's assignment could not be decoded
    (kafka-python leaves the bytes), what the group owns is unknown: None. The member whose
    ``member_id`` is ``excluding`` is left out (a worker whose consumer holds nothing although the
    group lists partitions under it: nobody consumes those).

    >>> owned_partitions({"members": [{"member_assignment": {"assigned_partitions": [
    ...     {"topic": "t", "partitions": [0, 2]}]}}]}) == {("t", 0), ("t", 2)}
    True
    """
    out: set[Partition] = set()
    for member in description.get("members") or ():
        if excluding and member.get("member_id") == excluding:
            continue
        assignment = member.get("member_assignment")
        if not isinstance(assignment, Mapping):
            return None
        for entry in assignment.get("assigned_partitions") or ():  # pyright: ignore[reportUnknownVariableType]
            topic = str(entry["topic"])  # pyright: ignore[reportUnknownArgumentType]
            out.update((topic, int(p)) for p in entry["partitions"])  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
    return out


def unowned_partitions(
    description: Mapping[str, Any],
    partitions: Iterable[Partition],
    *,
    excluding: str | None = None,
) -> set[Partition] | None:
    """The ``partitions`` no member of a stable group holds; None while the group is not
    stable or what its members hold is unknown. ``excluding``: see ``owned_partitions``.

    A group that is rebalancing (``PreparingRebalance``, ``CompletingRebalance``) is about to
    hand partitions out, and one that is ``Empty`` or ``Dead`` has no members to hold them: only
    a ``Stable`` group's unowned partitions mean that nobody will consume them.

    >>> d = {"group_state": "Stable", "members": []}
    >>> sorted(unowned_partitions(d, [("t", 0), ("t", 1)]))
    [('t', 0), ('t', 1)]
    >>> unowned_partitions({**d, "group_state": "PreparingRebalance"}, [("t", 0)]) is None
    True
    """
    if description.get("group_state") != "Stable" or description.get("error"):
        return None
    owned = owned_partitions(description, excluding=excluding)
    return None if owned is None else set(partitions) - owned


class GroupWatch:
    """Rejoins the group when this worker holds nothing while a stable group leaves partitions unowned.

    Args:
        after_ms: how long the worker must have held no partition before the group is asked
            (at least the session timeout, so that a normal rebalance finishes first); the
            question is asked again every ``after_ms`` while it holds nothing.
        assigned: the consumer's current assignment (``consumer.assignment``).
        describe: this worker's group as ``KafkaAdminClient.describe_groups`` gives one entry.
        partitions: every (topic, partition) of the subscribed topics.
        rejoin: makes the consumer rejoin the group.
        member_id: this consumer's member id in the group, if known: partitions the group lists
            under it while the consumer holds none count as unowned.
        restart: replaces the consumer; called instead of another rejoin when the previous
            check already found this worker short (it rejoined, or the group was not stable, or
            the client knew no partitions of the topics) and it still holds nothing. Without it, the
            watch rejoins again.
    """

    def __init__(
        self,
        after_ms: int,
        *,
        assigned: Callable[[], Iterable[Any]],
        describe: Callable[[], Mapping[str, Any]],
        partitions: Callable[[], Iterable[Partition]],
        rejoin: Callable[[], None],
        member_id: Callable[[], str | None] | None = None,
        restart: Callable[[], None] | None = None,
    ) -> None:
        self.after_ms = after_ms
        self._assigned = assigned
        self._describe = describe
        self._partitions = partitions
        self._rejoin = rejoin
        self._member_id = member_id
        self._restart = restart
        self._empty_since: int | None = None
        self._short = 0  # checks in a row that found this worker holding nothing it should
        self.rejoins = 0
        self.restarts = 0
        self.checks = 0

    def tick(self, now_ms: int) -> bool:
        """Call once per loop; returns True when it made the consumer rejoin (a replacement is
        counted in ``restarts`` and by whoever ``restart`` calls)."""
        if self._assigned():
            self._empty_since = None
            self._short = 0
            return False
        if self._empty_since is None:
            self._empty_since = now_ms
            return False
        if now_ms - self._empty_since < self.after_ms:
            return False
        self._empty_since = now_ms  # ask again after another after_ms, whatever the answer
        self.checks += 1
        try:
            me = self._member_id() if self._member_id is not None else None
            partitions = list(self._partitions())
            description = self._describe()
        except Exception as exc:  # the watchdog must never stop the daemon
            log.warning("could not describe the consumer group: %s", exc)
            return False
        if description.get("error"):  # not allowed to describe it, say: nothing learned
            log.warning("could not describe the consumer group: %s", description["error"])
            return False
        stable = description.get("group_state") == "Stable"
        # Empty client metadata (the topics' partitions unknown) says nothing either.
        unowned = (
            unowned_partitions(description, partitions, excluding=me or None)
            if partitions
            else None
        )
        if unowned is not None and not unowned:
            log.info("this worker holds no partition; the group owns every partition")
            self._short = 0
            return False
        if unowned is None and stable and partitions:
            # A stable group whose members' assignments could not all be decoded (a member of
            # another client): what it owns is unknown, and a spare worker must not set off a
            # rebalance every two checks on that account.
            log.info("this worker holds no partition; what the stable group owns is unknown")
            self._short = 0
            return False
        self._short += 1
        if self._short >= 2 and self._restart is not None:
            log.warning(
                "this worker has held no partition for %d checks %d ms apart while the group "
                "%s; replacing the consumer",
                self._short,
                self.after_ms,
                f"leaves {len(unowned)} unowned"
                if unowned
                else "is not stable"
                if not stable
                else "has topics the client knows no partitions of",
            )
            self._short = 0
            self._restart()
            self.restarts += 1
            return False
        if unowned is None:
            log.info("this worker holds no partition; the group is rebalancing or unknown")
            return False
        log.warning(
            "this worker has held no partition for %d ms while the stable group leaves %d "
            "unowned (%s); rejoining the group",
            self.after_ms,
            len(unowned),
            ", ".join(f"{t}/{p}" for t, p in sorted(unowned)[:8]),
        )
        self._rejoin()
        self.rejoins += 1
        return True


class BrokerAway:
    """Whether the broker answers the worker's loop: since when it has not, and at most one
    warning per ``warn_every_s`` while it does not.

    Example:
        >>> t = [100.0]
        >>> away = BrokerAway("127.0.0.1:9092", now=lambda: t[0])
        >>> away.since is None
        True
        >>> away.note(); t[0] = 130.0; round(away.seconds(), 1)
        30.0
        >>> round(away.back(), 1), away.since
        (30.0, None)
    """

    def __init__(
        self,
        servers: str,
        *,
        warn_every_s: float = 30.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = servers
        self.warn_every_s = warn_every_s
        self.now = now
        self.since: float | None = None  # when the broker stopped answering (``now``'s clock)
        self._warned = -warn_every_s

    def note(self) -> None:
        """The broker does not answer: remember since when, and say so (rate-limited)."""
        now = self.now()
        if self.since is None:
            self.since = now
        self.warn(
            f"the broker at {self.servers} has not answered for {now - self.since:.0f} s; "
            "waiting for it (nothing read, outputs queued, the state kept)"
        )

    def warn(self, message: str) -> None:
        now = self.now()
        if now - self._warned >= self.warn_every_s:
            self._warned = now
            log.warning("%s", message)

    def seconds(self) -> float:
        """How long the broker has not answered (0 while it does)."""
        return 0.0 if self.since is None else self.now() - self.since

    def back(self) -> float:
        """The broker answers again: forget since when it did not; returns how long that was."""
        gone = self.seconds()
        log.warning("the broker at %s answers again after %.0f s", self.servers, gone)
        self.since = None
        return gone
