"""Re-ranking online: follow the newest policy snapshot, rank candidates, log what was shown.

=============  ==============================================================================
module         holds
=============  ==============================================================================
``reranker``   ``Reranker`` (rank candidates with exact propensities) and ``SnapshotFollower``
``service``    ``RerankService``: the HTTP service with its limits, logging every impression
=============  ==============================================================================
"""

from streaming.serving.reranker import Reranker, SnapshotFollower
from streaming.serving.service import RankError, RankRequest, RerankService, UnloggableError

__all__ = [
    "RankError",
    "RankRequest",
    "RerankService",
    "Reranker",
    "SnapshotFollower",
    "UnloggableError",
]
