"""The functional core of a worker: ``step(engine, state, impressions, outcomes)``, no I/O.

``step`` routes each partition's events to its reward-window join, learns the reward model from
the joined plays and the policy from the closed impressions, and returns the new state with its
effects (rows to log, records to publish). Everything here is pure and deterministic: the
worker shell (``streaming.worker``) supplies the records and carries out the effects.

=============  ==============================================================================
module         holds
=============  ==============================================================================
``step``       ``init`` and ``step``: the core's two entry points
``state``      ``Engine`` (the static half: learners, shapes, settings) and ``WorkerState``
``learners``   what the core asks of the reward model and the policy
``tables``     the row tables of open impressions and of plays waiting for their window
``arrays``     a ``WorkerState`` as named arrays plus a JSON header (checkpoints), and back
``engine``     the ``Engine`` a configuration describes
``records``    ``JoinedRecords``: closed impressions with their rewards
``history``    ``History``: per partition, each listener's recent plays (session reward model)
=============  ==============================================================================
"""

from streaming.core.arrays import from_arrays, history_from_arrays, plays_from_arrays, to_arrays
from streaming.core.engine import limits, make_engine
from streaming.core.history import History
from streaming.core.learners import (
    MODEL_BATCH,
    MODEL_CHUNK,
    MODEL_QUEUE_MAX,
    NOMINAL_DURATION_MS,
    PREDICT_SMALL,
    UPDATE_CHUNK,
    merge_delta,
    raw_rewards,
    release_model_rows,
    slate_features,
    update_policy,
    warm_up,
    zero_delta,
)
from streaming.core.records import COLUMNS, JoinedRecords, from_impressions
from streaming.core.state import (
    F32,
    Effects,
    Engine,
    ModelRows,
    Plays,
    PolicyRows,
    Side,
    TopicPartitionKey,
    WorkerState,
    join_counters,
)
from streaming.core.step import init, settle, step
from streaming.core.tables import REASON_CENSORS, REASON_CODE, concat_side

__all__ = [
    "COLUMNS",
    "F32",
    "MODEL_BATCH",
    "MODEL_CHUNK",
    "MODEL_QUEUE_MAX",
    "NOMINAL_DURATION_MS",
    "PREDICT_SMALL",
    "REASON_CENSORS",
    "REASON_CODE",
    "UPDATE_CHUNK",
    "Effects",
    "Engine",
    "History",
    "JoinedRecords",
    "ModelRows",
    "Plays",
    "PolicyRows",
    "Side",
    "TopicPartitionKey",
    "WorkerState",
    "concat_side",
    "from_arrays",
    "from_impressions",
    "history_from_arrays",
    "init",
    "join_counters",
    "limits",
    "make_engine",
    "merge_delta",
    "plays_from_arrays",
    "raw_rewards",
    "release_model_rows",
    "settle",
    "slate_features",
    "step",
    "to_arrays",
    "update_policy",
    "warm_up",
    "zero_delta",
]
