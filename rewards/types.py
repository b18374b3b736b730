"""The inputs and state of reward models: batches of arrays, never per-event objects.

``rewards`` owns these types; ``streaming`` adapts its decoded events into them. Every batch is
a NamedTuple of arrays of one length ``n`` (rows), padded to a fixed size with ``mask`` so that
jitted functions see static shapes (see :func:`rewards.model.pad`).

Dimension names: ``n`` rows (plays), ``d`` features, ``h`` history length (previous plays of the
listener), ``e`` features per history entry, ``m`` model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from jaxtyping import Array, ArrayLike, Bool, Float, Int

REASONS: tuple[str, ...] = ("trackdone", "fwdbtn", "backbtn", "endplay", "logout")
"""Codes of ``reason_end`` by index (the same order as ``streaming.sim.simulator.REASONS``).

``reason_end`` outside ``[0, len(REASONS))`` is invalid (see :mod:`rewards.validate`).
"""
TRACKDONE, FWDBTN, BACKBTN, ENDPLAY, LOGOUT = range(5)

HEADS: tuple[str, ...] = ("skip_1", "skip_2", "skip_3", "complete")
"""What every model predicts (``Predictions``), after the public skip-prediction data.

- ``skip_1``: the play ended (not censored) within the first 5 s ("played very briefly").
- ``skip_2``: ended before 30 s ("played briefly"; the complement of a 30 s stream).
- ``skip_3``: ended before the end of the track (not played in its entirety).
- ``complete``: played to the end; by definition ``complete == 1 - skip_3``.
"""


class Outcomes(NamedTuple):
    """A batch of ``n`` finished plays: what the model saw and what the listener did.

    Args:
        features: ``(n, d)`` float32 model features of (user, context, track, position), for
            example from :func:`rewards.features.interaction_features`.
        ms_played: ``(n,)`` int64 milliseconds played.
        duration_ms: ``(n,)`` int64 track duration in milliseconds.
        reason_end: ``(n,)`` int8 index into :data:`REASONS`.
        saved: ``(n,)`` bool explicit save / like / add-to-playlist.
        position: ``(n,)`` int32 slate position (0 = top).
        censored: ``(n,)`` bool the play was cut off (session end, logout): not a skip.
        mask: ``(n,)`` bool rows that are real (False = padding, ignored everywhere).
        track_id: ``(n,)`` int track ids, or None. Models built with ``n_id_buckets > 0`` learn a
            per-track effect from ``track_id % n_id_buckets`` and require it.
        history: ``(n, h, e)`` float32 the listener's previous plays, oldest first, from
            :func:`rewards.session.session_history`, or None. Session models require it.
    """

    features: Float[ArrayLike, "n d"]
    ms_played: Int[ArrayLike, " n"]
    duration_ms: Int[ArrayLike, " n"]
    reason_end: Int[ArrayLike, " n"]
    saved: Bool[ArrayLike, " n"]
    position: Int[ArrayLike, " n"]
    censored: Bool[ArrayLike, " n"]
    mask: Bool[ArrayLike, " n"]
    track_id: Int[ArrayLike, " n"] | None = None
    history: Float[ArrayLike, "n h e"] | None = None

    @property
    def inputs(self) -> Inputs:
        """What a model sees before the outcome: the same rows as :class:`Inputs`."""
        return Inputs(self.features, self.duration_ms, self.track_id, self.history)


class Inputs(NamedTuple):
    """What ``predict`` needs when an impression is seen (before any outcome).

    Args:
        features: ``(n, d)`` float32, as in :class:`Outcomes`.
        duration_ms: ``(n,)`` int track durations; the listening bins depend on them. If a
            duration is unknown at impression time pass a catalogue median (e.g. 210_000).
        track_id: ``(n,)`` int or None, as in :class:`Outcomes`.
        history: ``(n, h, e)`` float32 or None, as in :class:`Outcomes`.
    """

    features: Float[ArrayLike, "n d"]
    duration_ms: Int[ArrayLike, " n"]
    track_id: Int[ArrayLike, " n"] | None = None
    history: Float[ArrayLike, "n h e"] | None = None


class Predictions(NamedTuple):
    """Per-row probabilities, one column per skip horizon.

    Args:
        skip: ``(n, 3)`` float32 P(skip_1), P(skip_2), P(skip_3) (see :data:`HEADS`).
        complete: ``(n,)`` float32 P(complete) == 1 - P(skip_3).

    A model that does not model a head (``spec.heads``) fills it with NaN; consumers check
    ``spec.heads`` first (:meth:`rewards.composite.CompositeReward.check`).
    """

    skip: Float[Array, "n 3"]
    complete: Float[Array, " n"]


class ModelState(NamedTuple):
    """A reward model's whole state: a pytree of arrays (checkpoint with ``np.savez``).

    Args:
        params: the model's parameters (a dict of arrays; layout per model).
        opt_state: the optax optimiser state.
        step: ``()`` int32 number of accepted updates.
    """

    params: Any
    opt_state: Any
    step: Int[Array, ""]


class UpdateMetrics(NamedTuple):
    """What one ``update`` did, as arrays (no host sync inside jit).

    Args:
        loss: ``()`` mean loss over the used rows *before* the update (progressive validation).
        n_used: ``()`` rows that entered the loss.
        n_dropped: ``()`` rows with ``mask`` True that were dropped as invalid (non-finite
            features, bad durations, unknown ``reason_end``; see :mod:`rewards.validate`).
        accepted: ``()`` False when no step was taken: no valid row, or the loss, the gradient
            norm or the new parameters were not finite; the state is then returned unchanged.
        grad_norm: ``()`` global norm of the gradient (before clipping).
    """

    loss: Float[Array, ""]
    n_used: Int[Array, ""]
    n_dropped: Int[Array, ""]
    accepted: Bool[Array, ""]
    grad_norm: Float[Array, ""]


class ModelSpec(NamedTuple):
    """What produced a model state, to write into checkpoints and snapshots.

    Args:
        name: the factory's name, e.g. ``"survival"``.
        version: bumped whenever the meaning of the parameters or the labels changes.
        heads: the heads of :data:`HEADS` the model predicts (others come out NaN).
        params: the hyperparameters (JSON-serialisable scalars).
    """

    name: str
    version: int
    heads: tuple[str, ...]
    params: Mapping[str, float | int | str | bool]
