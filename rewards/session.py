"""Session-aware listening-time model: a small GRU over the listener's recent plays.

Skips come in runs (a listener in a "skippy" mood skips several tracks in a row), which a model
of one play at a time cannot see. This model encodes the listener's last ``h`` plays, oldest
first, with a GRU and feeds the final state, next to the usual features, into the survival
hazard head of :mod:`rewards.survival`; so its predictions keep the same consistency.

History entries (:func:`history_entries`, ``HISTORY_DIM`` = 9 floats per play): one-hot of the
listening bin the play ended in (0..4, or 5 = complete), censored, saved, optional ``extra``
floats per play (e.g. the track's features; then ``history_dim = 9 + k``), and ``present`` last
(0 for padding when the listener has fewer than ``h`` plays). The caller keeps the last ``h``
entries per listener (:func:`push_history`) and, for slates, the entries of earlier positions
(:func:`slate_history`). Only outcomes known when the impression is predicted may enter.

The API a daemon uses (all pure; ``predict`` and ``update`` are ``jax.jit``-ed, one compilation
per padded batch size ``n`` and history length ``h``):

- ``model = session_model(gru_units=16, n_id_buckets=..., average=0.99)``;
  ``state = model.init(key, d) -> ModelState``.
- ``model.predict(state, Inputs(features, duration_ms, track_id, history)) -> Predictions``:
  ``features`` ``(n, d)`` float32 (:func:`rewards.interaction_features`), ``duration_ms``
  ``(n,)`` int, ``track_id`` ``(n,)`` int or None (required when ``n_id_buckets > 0``),
  ``history`` ``(n, h, e)`` float32, oldest first, the listener's previous plays; a slot whose
  last column (``present``) is 0 is skipped, so a row with ``L`` known plays has
  ``present = arange(h) >= h - L`` (what :func:`push_history` keeps). Returns ``skip`` ``(n, 3)``
  and ``complete`` ``(n,)`` float32.
- ``model.update(state, Outcomes(..., history=history)) -> (ModelState, UpdateMetrics)``: one
  optimiser step on the mini-batch, each row with the history it was predicted with; pad with
  :func:`rewards.pad` (``mask`` False rows are ignored).

>>> import numpy as np, jax, rewards
>>> n, d, h, users = 4, 6, 8, 100
>>> model = session_model(gru_units=8, average=0.99)
>>> state = model.init(jax.random.key(0), d)
>>> buffer = np.zeros((users, h, HISTORY_DIM), np.float32)  # each listener's last h plays
>>> user, x, dur = np.array([3, 5, 7, 9]), np.ones((n, d), np.float32), np.full(n, 200_000)
>>> pred = model.predict(state, rewards.Inputs(x, dur, None, buffer[user]))  # impression seen
>>> ms, reason, no = np.array([3_000, 200_000, 40_000, 9_000]), np.array([1, 0, 1, 1]), np.zeros(n, bool)
>>> plays = rewards.Outcomes(x, ms, dur, reason, no, np.zeros(n, np.int32), no, ~no, history=buffer[user])
>>> state, metrics = model.update(state, rewards.pad(plays, 16))  # outcomes joined
>>> buffer = push_history(buffer, user, history_entries(ms, dur, reason, no, no, ~no))
>>> pred.skip.shape, bool(metrics.accepted), buffer[5, -1].tolist()
((4, 3), True, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])

References:
    Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder" (the GRU);
    Hansen et al. (2019), "Modelling sequential music track skips using a multi-RNN approach"
    (WSDM Cup 2019, Spotify sequential skip prediction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray
from numpy.typing import NDArray

from rewards.labels import listen_bin
from rewards.model import (
    Params,
    RewardModel,
    check_average,
    head_logits,
    initial_state,
    jit_predict,
    make_optimizer,
    make_update,
)
from rewards.survival import (
    hazard_logits,
    hazards,
    init_hazard_params,
    survival_predictions,
    survival_row_loss,
)
from rewards.types import HEADS, Inputs, ModelSpec, ModelState, Outcomes, Predictions

VERSION = 1
HISTORY_DIM = 9


def history_entries(
    ms_played: Int[ArrayLike, "*b"],
    duration_ms: Int[ArrayLike, "*b"],
    reason_end: Int[ArrayLike, "*b"],
    censored: Bool[ArrayLike, "*b"],
    saved: Bool[ArrayLike, "*b"],
    present: Bool[ArrayLike, "*b"],
    extra: Float[ArrayLike, "*b k"] | None = None,
) -> Float[NDArray[np.float32], "*b e"]:
    """Encode plays as history entries (numpy float32; all zero where not ``present``).

    Args:
        ms_played, duration_ms, reason_end, censored, saved: the plays' outcomes, any batch
            shape ``*b`` (as in :class:`~rewards.types.Outcomes`).
        present: ``*b`` bool, False for padding slots.
        extra: optional ``(*b, k)`` floats about each play (e.g. its track's features) placed
            between ``saved`` and ``present``; build the model with ``history_dim = 9 + k``.

    Returns:
        ``(*b, e)`` float32 with ``e = HISTORY_DIM + k``: columns 0-5 one-hot of the listening
        bin the play ended in (5 = complete), 6 censored, 7 saved, then ``extra``, and
        ``present`` last.

    Raises:
        ValueError: if ``extra``'s leading shape is not the plays' shape.

    >>> one, no = np.ones(1, bool), np.zeros(1, bool)
    >>> history_entries(np.array([1_000]), np.array([200_000]), np.array([1]), no, no, one).tolist()
    [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]
    """
    d = np.asarray(duration_ms)
    b = np.asarray(listen_bin(ms_played, np.where(d > 0, d, 1), reason_end))
    pres = np.asarray(present, dtype=bool)
    k = 0
    more = None
    if extra is not None:
        more = np.asarray(extra, np.float32)
        if more.shape[:-1] != b.shape:
            raise ValueError(
                f"history_entries: extra has shape {more.shape}, expected {(*b.shape, 'k')}"
            )
        k = more.shape[-1]
    out = np.zeros((*b.shape, HISTORY_DIM + k), np.float32)
    np.put_along_axis(out, b[..., None].astype(np.int64), 1.0, axis=-1)
    out[..., 6] = np.asarray(censored, dtype=np.float32)
    out[..., 7] = np.asarray(saved, dtype=np.float32)
    if more is not None:
        out[..., 8 : 8 + k] = more
    out[..., -1] = 1.0
    return out * pres[..., None]


def slate_history(
    prior: Float[NDArray[np.float32], "n h e"], entries: Float[NDArray[np.float32], "n s e"]
) -> Float[NDArray[np.float32], "n s h e"]:
    """History seen at each slate position: the last ``h`` of ``prior`` then earlier positions.

    Args:
        prior: ``(n, h, e)`` each request's listener history before the slate, oldest first.
        entries: ``(n, s, e)`` entries of the slate's own plays, by position.

    Returns:
        ``(n, s, h, e)``: position ``j`` sees ``concat(prior, entries[:, :j])[-h:]``.
    """
    h, s = prior.shape[1], entries.shape[1]
    full = np.concatenate([prior, entries], axis=1)  # (n, h + s, e)
    idx = np.arange(s)[:, None] + np.arange(h)[None, :]  # (s, h)
    return full[:, idx]


def push_history(
    buffer: Float[NDArray[np.float32], "u h e"],
    user: Int[NDArray[np.integer], " m"],
    entries: Float[NDArray[np.float32], "m e"],
) -> Float[NDArray[np.float32], "u h e"]:
    """Append plays (in time order) to each listener's last-``h`` buffer; returns a new buffer.

    Args:
        buffer: ``(u, h, e)`` per-listener history, oldest first.
        user: ``(m,)`` listener index of each new entry, rows in time order.
        entries: ``(m, e)`` the new entries.
    """
    u_count, h, _ = buffer.shape
    user = np.asarray(user, dtype=np.int64)
    order = np.argsort(user, kind="stable")  # by user, time order kept
    su = user[order]
    counts = np.bincount(su, minlength=u_count)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_from_end = counts[su] - 1 - (np.arange(su.size) - starts[su])
    keep = rank_from_end < h
    combined = np.concatenate([buffer, np.zeros_like(buffer)], axis=1)  # room to shift
    shift = np.minimum(counts, h)
    # new buffer row r = combined[r, shift : shift + h] after writing new entries at the end
    rows = np.arange(u_count)[:, None]
    cols = shift[:, None] + np.arange(h)[None, :]
    dest = h - 1 - rank_from_end[keep] + shift[su[keep]]
    combined[su[keep], dest] = entries[order][keep]
    return combined[rows, cols]


def _gru_init(key: PRNGKeyArray, e: int, hdim: int) -> Params:
    k1, k2 = jax.random.split(key)
    return {
        "gru_wx": jax.random.normal(k1, (e, 3 * hdim), jnp.float32) / np.sqrt(e),
        "gru_wh": jax.random.normal(k2, (hdim, 3 * hdim), jnp.float32) / np.sqrt(hdim),
        "gru_b": jnp.zeros((3 * hdim,), jnp.float32),
    }


def gru_encode(params: Params, history: Float[Array, "n h e"]) -> Float[Array, "n g"]:
    """Final GRU state over the history; padding entries (``present == 0``) are skipped.

    The recurrence is a ``lax.scan`` over the ``h`` steps in feature-major layout (state
    ``(g, n)``), with the three gates' weights taken apart *before* the loop. That keeps every
    step's gradient a few small matmuls: slicing gates out of one ``(n, 3g)`` projection inside the
    loop would make the backward pass pad and add full-size arrays at every step.
    """
    hdim = params["gru_wh"].shape[0]
    e = params["gru_wx"].shape[0]
    wx = params["gru_wx"].T.reshape(3, hdim, e)  # (3, g, e): z, r, candidate
    wh = params["gru_wh"].T.reshape(3, hdim, hdim)  # (3, g, g)
    b = params["gru_b"].reshape(3, hdim, 1)
    steps = jnp.transpose(history, (1, 2, 0))  # (h, e, n): inputs, not differentiated
    present = steps[:, -1:, :] > 0.5  # (h, 1, n)

    def cell(g: Array, step: tuple[Array, Array]) -> tuple[Array, None]:
        x, here = step
        z = jax.nn.sigmoid(wx[0] @ x + wh[0] @ g + b[0])
        r = jax.nn.sigmoid(wx[1] @ x + wh[1] @ g + b[1])
        cand = jnp.tanh(wx[2] @ x + r * (wh[2] @ g) + b[2])
        return jnp.where(here, g + z * (cand - g), g), None

    g0 = jnp.zeros((hdim, history.shape[0]), jnp.float32)
    g, _ = jax.lax.scan(cell, g0, (steps, present))
    return g.T


def session_model(
    *,
    gru_units: int = 16,
    history_dim: int = HISTORY_DIM,
    proportional: bool = True,
    hidden: int = 0,
    n_id_buckets: int = 0,
    learning_rate: float = 0.03,
    clip_norm: float = 10.0,
    average: float = 0.0,
) -> RewardModel:
    """The session-aware survival model (needs ``history`` in its inputs and outcomes).

    Args:
        gru_units: width of the GRU state.
        history_dim: ``e``, floats per history entry (the last one must be ``present``).
        proportional, hidden, n_id_buckets, learning_rate, clip_norm, average: as
            :func:`rewards.survival.survival_model`.
    """
    if gru_units <= 0 or history_dim <= 0:
        raise ValueError("gru_units and history_dim must be positive")
    check_average(average)
    optimizer = make_optimizer(learning_rate, clip_norm)

    def init(key: PRNGKeyArray, n_features: int) -> ModelState:
        k1, k2 = jax.random.split(key)
        params = init_hazard_params(
            k1,
            n_features + gru_units,
            proportional=proportional,
            hidden=hidden,
            n_id_buckets=n_id_buckets,
        )
        params.update(_gru_init(k2, history_dim, gru_units))
        return initial_state(params, optimizer, average=average)

    def logits(params: Params, features: ArrayLike, history: object, track_id: object) -> Array:
        if history is None:
            raise ValueError("the session model needs history (see rewards.session)")
        hist = jnp.asarray(history)
        if hist.shape[-1] != history_dim:
            raise ValueError(
                f"history has {hist.shape[-1]} floats per entry, expected {history_dim}"
            )
        x = jnp.asarray(features)
        g = gru_encode(params, hist)
        ids = None if track_id is None else jnp.asarray(track_id)
        if hidden == 0:
            # [x, g] @ w as two products: no (n, d + g) copy, and no gradient for the inputs.
            d = x.shape[-1]
            head = dict(params)
            head["w"] = params["w"][:d]
            z = head_logits(head, x, ids) + g @ params["w"][d:]
            if "bin_intercept" in params:
                return params["bin_intercept"][None, :] + params["bin_slope"][None, :] * z
            return z
        return hazard_logits(params, jnp.concatenate([x, g], axis=-1), ids)

    def row_loss(params: Params, o: Outcomes) -> Float[Array, " n"]:
        return survival_row_loss(logits(params, o.features, o.history, o.track_id), o)

    def predict(state: ModelState, inputs: Inputs) -> Predictions:
        z = logits(state.params, inputs.features, inputs.history, inputs.track_id)
        return survival_predictions(hazards(z, inputs.duration_ms))

    spec = ModelSpec(
        name="session",
        version=VERSION,
        heads=HEADS,
        params={
            "gru_units": gru_units,
            "history_dim": history_dim,
            "proportional": proportional,
            "hidden": hidden,
            "n_id_buckets": n_id_buckets,
            "learning_rate": learning_rate,
            "clip_norm": clip_norm,
            "average": average,
        },
    )
    return RewardModel(
        init=init,
        predict=jit_predict(predict),
        update=make_update(row_loss, optimizer, average=average),
        spec=spec,
    )
