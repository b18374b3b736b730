"""A rebalance listener whose work runs off kafka-python's network loop.

kafka-python 3 runs rebalance listeners on its network thread, where blocking would stall
heartbeats. The work (for the daemon: a checkpoint, the handoff records, reading the handoff
topic, seeks) runs on a short-lived thread while the listener's coroutine yields to the client's
loop; the daemon's own thread is inside ``poll`` (or ``close``) meanwhile, so the state has one
writer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from streaming.kafka.clients import AsyncConsumerRebalanceListener, TopicPartition

__all__ = ["OffLoopListener"]

Work = Callable[[list[TopicPartition]], None]


class OffLoopListener(AsyncConsumerRebalanceListener):  # pyright: ignore[reportUntypedBaseClass]
    """Calls ``on_revoked`` / ``on_assigned`` with the partitions, each on a thread of its own.

    ``loop``: returns the client's event loop (kafka-python 3's ``consumer._net``) to yield to
    while the work runs, or None to just wait for it.
    """

    def __init__(self, on_revoked: Work, on_assigned: Work, loop: Callable[[], Any]) -> None:
        self.on_revoked = on_revoked
        self.on_assigned = on_assigned
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._off_loop(self.on_revoked, list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._off_loop(self.on_assigned, list(assigned))

    async def _off_loop(self, work: Work, tps: list[TopicPartition]) -> None:
        failed: list[BaseException] = []

        def run() -> None:
            try:
                work(tps)
            except BaseException as exc:  # re-raised on the client's loop below
                failed.append(exc)

        thread = threading.Thread(target=run, name=f"encore-{work.__name__}", daemon=True)
        thread.start()
        net = self.loop()
        while thread.is_alive():
            if net is None:
                thread.join()
            else:
                await net.sleep(0.005)
        if failed:
            raise failed[0]
