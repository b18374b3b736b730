"""Learned reward signals: completion, skip and listening-time models, and the composite reward.

``rewards`` knows outcomes and features, not Kafka, files or clocks. A reward model is a
:class:`RewardModel` of pure, jitted functions over an explicit :class:`ModelState`.

How a caller (the streaming daemon) uses it::

    import numpy as np, jax
    import rewards

    model = rewards.survival_model(n_id_buckets=4096)         # or rewards.MODELS[name](**params)
    reward = rewards.CompositeReward(kind="linear")            # from the config file
    reward.check(model.spec)                                   # the model predicts what it needs
    state = model.init(jax.random.key(0), n_features)

    # 1. impression seen: build features, predict, keep the predictions with the join buffer.
    x = rewards.interaction_features(user, track, position)    # (n, d) float32
    inputs = rewards.Inputs(x, duration_ms, track_id, history) # track_id / history may be None
    pred = model.predict(state, inputs)                        # Predictions(skip (n, 3), complete (n,))
    r_provisional = reward.provisional(pred, duration_ms)      # (n,) for a provisional update

    # 2. outcome joined: build the batch (numpy arrays, one row per play), pad to a fixed size.
    batch = rewards.Outcomes(features=x, ms_played=ms_played, duration_ms=duration_ms,
                             reason_end=reason_codes, saved=saved, position=position,
                             censored=censored, mask=np.ones(n, bool),
                             track_id=track_id, history=history)
    bad = rewards.invalid_rows(batch)                          # {field: rows} -> dead letters
    batch = rewards.pad(batch, 1024)                           # static shapes: no recompiles
    r_final = reward.final(pred_padded, batch)                 # (size,) use the first n
    state, metrics = model.update(state, batch)                # metrics.loss is prequential

Every model is built by a factory (``survival_model``, ``session_model``, ``skip_model``,
``completion_model``, ``direct_model``), also found by name in :data:`MODELS`, so a configuration
chooses any of them by name. ``predict`` takes :class:`Inputs` and ``update`` takes
:class:`Outcomes`; anything else (a raw array) is a ``TypeError`` that says how to build them.

Session model: keep each listener's last ``h`` plays with :func:`history_entries` and
:func:`push_history` (only outcomes already joined), and pass them as ``history``; the shapes and
a runnable example are in :mod:`rewards.session`.

Iterate averaging: ``survival_model(average=0.99)`` / ``session_model(average=0.99)`` serve an
exponential moving average of the online iterates (lower log loss and ECE on a long stream; the
default 0 serves the last iterate and keeps the plain optimiser state, with no averaged copy).

Offline: ``rewards.fit(model, state, frame_or_parquet_path, key=...)`` loops the same ``update``
with early stopping; ``on_epoch`` / ``on_batch`` callbacks report progress (no I/O here).
Reports: :func:`prequential` and :func:`score_heads` give log loss, AUC and ECE per head;
:func:`plot_reliability` draws :func:`reliability_table` curves on a matplotlib ``Axes``, and
:func:`plot_reliability_panels` one panel per head on a ``Figure``, with the plays per bin under
each panel, one colour per model and one legend.

Codes of ``reason_end`` are indices into :data:`REASONS`. ``update`` drops invalid rows (and
counts them in ``metrics.n_dropped``) and refuses a step whose gradient is not finite, so one bad
batch never corrupts the state. Write :data:`REWARD_VERSION`, ``reward.to_spec()`` and
``model.spec`` into every checkpoint.
"""

from rewards.calibration import (
    Scores,
    auc,
    ece,
    log_loss,
    plot_reliability,
    plot_reliability_panels,
    prediction_columns,
    prequential,
    reliability_table,
    score,
    score_heads,
)
from rewards.classifier import completion_model, direct_model, skip_model
from rewards.composite import KINDS, REWARD_VERSION, CompositeReward, expected_listen_fraction
from rewards.features import interaction_features, n_interaction_features
from rewards.fit import EpochReport, FitResult, fit, outcomes_from_frame
from rewards.labels import (
    bin_edges_ms,
    completion_label,
    hazard_targets,
    listen_bin,
    listen_fraction,
    skip_labels,
    stream30_label,
    valid_rows,
)
from rewards.model import RewardModel, pad, take
from rewards.registry import MODELS
from rewards.session import history_entries, push_history, session_model, slate_history
from rewards.survival import survival_model
from rewards.types import (
    HEADS,
    REASONS,
    Inputs,
    ModelSpec,
    ModelState,
    Outcomes,
    Predictions,
    UpdateMetrics,
)
from rewards.validate import check_outcomes, invalid_rows

__all__ = [
    "HEADS",
    "KINDS",
    "MODELS",
    "REASONS",
    "REWARD_VERSION",
    "CompositeReward",
    "EpochReport",
    "FitResult",
    "Inputs",
    "ModelSpec",
    "ModelState",
    "Outcomes",
    "Predictions",
    "RewardModel",
    "Scores",
    "UpdateMetrics",
    "auc",
    "bin_edges_ms",
    "check_outcomes",
    "completion_label",
    "completion_model",
    "direct_model",
    "ece",
    "expected_listen_fraction",
    "fit",
    "hazard_targets",
    "history_entries",
    "interaction_features",
    "invalid_rows",
    "listen_bin",
    "listen_fraction",
    "log_loss",
    "n_interaction_features",
    "outcomes_from_frame",
    "pad",
    "plot_reliability",
    "plot_reliability_panels",
    "prediction_columns",
    "prequential",
    "push_history",
    "reliability_table",
    "score",
    "score_heads",
    "session_model",
    "skip_labels",
    "skip_model",
    "slate_history",
    "stream30_label",
    "survival_model",
    "take",
    "valid_rows",
]
