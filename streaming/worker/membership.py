"""Who else is in a worker's consumer group, and whether this worker may join it.

Kafka's consumer group spreads the partitions over whoever joins it. Two ``encore run`` started
by accident with the same ``kafka.group_id`` (a second one in another folder, say) would each
take half the partitions with their open join windows and learn two separate policies, and
neither would say so. So a worker looks at its group before it joins: another worker in it is
refused unless scale-out is meant (``scale.share_deltas``: one global policy, or
``scale.independent_workers``: a policy per worker, each from its own partitions).

A worker tells itself from the others by a token in its consumer's client id
(``worker_token``: the host and the checkpoint folder, which only one live worker can hold). A
member with this worker's own token is its previous run, killed before it could leave: the group
keeps it until its session times out, and it is no reason to refuse.

Two workers that start at the same moment can both find the group empty; the check before
joining cannot see that, so ``strangers`` is asked again at each assignment and the daemon warns,
naming them (see ``Daemon.on_assigned``).

Example:
    >>> group = {"group_state": "Stable", "members": [
    ...     {"member_id": "m1", "client_id": "encore-consumer-aaaa", "client_host": "/10.0.0.2"},
    ...     {"member_id": "m2", "client_id": "encore-consumer-bbbb", "client_host": "/10.0.0.3"},
    ... ]}
    >>> [m.client_id for m in strangers(group, "aaaa")]
    ['encore-consumer-bbbb']
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["GroupSharedError", "Member", "refusal", "strangers", "worker_token"]


class GroupSharedError(RuntimeError):
    """Another worker is in this worker's consumer group, and scale-out is not configured."""


class Member(NamedTuple):
    member_id: str
    client_id: str
    host: str

    def __str__(self) -> str:
        return f"{self.client_id} on {self.host.lstrip('/')} (member {self.member_id})"


def worker_token(ckpt_dir: Path, host: str | None = None) -> str:
    """Eight hex digits naming this worker: its host and checkpoint folder (which only one live
    worker holds, ``streaming.worker.lock``), the same on every restart."""
    where = f"{host or socket.gethostname()}:{ckpt_dir.resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:8]


def strangers(group: Mapping[str, Any], token: str) -> list[Member]:
    """The members of ``group`` (one entry of ``KafkaAdminClient.describe_groups``) that are not
    this worker: their client id does not end with ``-{token}``. An empty or dead group has
    none."""
    found = []
    for m in group.get("members") or []:
        client_id = str(m.get("client_id") or "")
        if client_id.endswith(f"-{token}"):
            continue
        found.append(Member(str(m.get("member_id", "")), client_id, str(m.get("client_host", ""))))
    return found


def refusal(group_id: str, others: Sequence[Member]) -> str:
    """Why a worker does not join ``group_id``, naming the members there and what to change."""
    names = "; ".join(str(m) for m in others)
    return (
        f"consumer group {group_id!r} already has another worker: {names}. A second worker "
        "without shared statistics would take part of the partitions and learn a separate "
        "policy. To run several workers on purpose, set scale.share_deltas = true (one global "
        "policy) or scale.independent_workers = true (a policy per worker); for a separate "
        "daemon, give it its own kafka.group_id. A worker killed a moment ago stays listed "
        "until its session times out (kafka.session_timeout_ms)"
    )
