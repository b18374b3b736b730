"""What the re-rank service refuses, and why: the errors its HTTP layer turns into answers."""

from __future__ import annotations

__all__ = ["MissingTopicError", "RankError", "UnloggableError"]


class MissingTopicError(RuntimeError):
    """A topic the service writes to does not exist on the cluster."""


class RankError(ValueError):
    """A request the service refuses: ``code`` (an ``events.ERROR_CODES`` value) and ``reason``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class UnloggableError(RuntimeError):
    """A request refused because its impression cannot be logged: ``status`` 413 (``code``
    ``too_large``: over the topic's or the producer's limit) or 503 (``log_unavailable``: the
    send failed at once; ``unlearnable``: the policy drew a slate whose propensity is below
    ``events.min_propensity``, so the daemon would dead-letter its log)."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason
