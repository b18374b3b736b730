"""Re-ranking online: follow the newest policy snapshot, rank candidates, log what was shown.

=============  ==============================================================================
module         holds
=============  ==============================================================================
``reranker``   ``Reranker`` (rank candidates with exact propensities) and ``SnapshotFollower``
``service``    ``RerankService``: rank a request, log the impression it served (or refuse it)
``http``       the HTTP layer: routes, connection slots, read timeouts, body limits
``errors``     what the service refuses, and why
=============  ==============================================================================
"""

from streaming.serving.errors import RankError, UnloggableError
from streaming.serving.reranker import Reranker, SnapshotFollower
from streaming.serving.service import RankRequest, RerankService

__all__ = [
    "RankError",
    "RankRequest",
    "RerankService",
    "Reranker",
    "SnapshotFollower",
    "UnloggableError",
]
