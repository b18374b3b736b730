"""Offline training: the same ``update`` looped over mini-batches of a frame, Parquet file or batch.

Online and offline cannot drift apart: ``fit`` only calls ``model.update`` on padded batches of
fixed size. It holds out a validation split (by a seeded permutation), keeps the state with
the lowest validation loss and stops after ``patience`` epochs without improvement. Progress
goes to callbacks, so ``rewards`` stays free of I/O other than reading the given Parquet file;
the CLI wires them to a ``rich`` progress bar.

This is the only module of ``rewards`` that imports pandas.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
from jaxtyping import PRNGKeyArray

from rewards.model import RewardModel, pad, take
from rewards.types import LOGOUT, REASONS, ModelState, Outcomes

DURATION_COLUMNS = ("duration_ms", "track_duration_ms")


class EpochReport(NamedTuple):
    """What one epoch of :func:`fit` did.

    Args:
        epoch: 0-based epoch index.
        train_loss: mean pre-step loss over the epoch's batches (progressive).
        val_loss: mean loss on the held-out split at the end of the epoch (NaN without one).
        best_epoch: the epoch whose state is kept so far.
        n_rejected: batches whose step was refused (non-finite) this epoch.
    """

    epoch: int
    train_loss: float
    val_loss: float
    best_epoch: int
    n_rejected: int


class FitResult(NamedTuple):
    """The kept (best) state and one report per epoch run."""

    state: ModelState
    history: list[EpochReport]


def outcomes_from_frame(
    frame: pd.DataFrame, feature_columns: Sequence[str] | None = None
) -> Outcomes:
    """Columns of a frame (e.g. the daemon's joined Parquet) as a numpy :class:`Outcomes`.

    Columns: ``ms_played``; ``duration_ms`` or ``track_duration_ms``; ``reason_end`` (names of
    :data:`~rewards.types.REASONS` or their codes); optional ``saved`` (default False),
    ``position`` (default 0), ``censored`` (default ``reason_end == "logout"``), ``track_id``.
    Features come from ``feature_columns``, or by default every column named ``x_<int>`` in
    numeric order, or a column ``features`` holding equal-length arrays.

    Raises:
        ValueError: naming the missing columns or the unknown ``reason_end`` values.
    """
    cols = set(frame.columns)
    missing = [c for c in ("ms_played", "reason_end") if c not in cols]
    duration_col = next((c for c in DURATION_COLUMNS if c in cols), None)
    if duration_col is None:
        missing.append(" or ".join(DURATION_COLUMNS))
    if feature_columns is None:
        numbered = [
            c
            for c in frame.columns
            if isinstance(c, str) and c.startswith("x_") and c[2:].isdigit()
        ]
        feature_columns = sorted(numbered, key=lambda c: int(c[2:]))
    if not feature_columns and "features" not in cols:
        missing.append("features (x_0, x_1, ... or a 'features' column)")
    missing += [c for c in feature_columns if c not in cols]
    if missing:
        raise ValueError(f"frame is missing columns: {missing}")
    n = len(frame)
    if feature_columns:
        features = frame[list(feature_columns)].to_numpy(dtype=np.float32)
    else:
        features = (
            np.stack([np.asarray(v, np.float32) for v in frame["features"]])
            if n
            else (np.zeros((0, 0), np.float32))
        )
    reason_raw = frame["reason_end"]
    if reason_raw.dtype == object or pd.api.types.is_string_dtype(reason_raw):
        codes = {name: i for i, name in enumerate(REASONS)}
        unknown = sorted(set(reason_raw.astype(str)) - set(codes))
        if unknown:
            raise ValueError(f"reason_end has unknown values {unknown[:10]}; known {REASONS}")
        reason = np.asarray(
            pd.Categorical(reason_raw.astype(str), categories=list(REASONS)).codes, np.int8
        )
    else:
        reason = reason_raw.to_numpy(dtype=np.int64).astype(np.int8)
    censored = frame["censored"].to_numpy(dtype=bool) if "censored" in cols else reason == LOGOUT
    return Outcomes(
        features=features,
        ms_played=frame["ms_played"].to_numpy(dtype=np.int64),
        duration_ms=frame[duration_col].to_numpy(dtype=np.int64),
        reason_end=reason,
        saved=frame["saved"].to_numpy(dtype=bool) if "saved" in cols else np.zeros(n, bool),
        position=(
            frame["position"].to_numpy(dtype=np.int32)
            if "position" in cols
            else np.zeros(n, np.int32)
        ),
        censored=censored,
        mask=np.ones(n, bool),
        track_id=frame["track_id"].to_numpy(dtype=np.int64) if "track_id" in cols else None,
        history=None,
    )


def _as_outcomes(
    data: Outcomes | pd.DataFrame | str | os.PathLike[str], feature_columns: Sequence[str] | None
) -> Outcomes:
    if isinstance(data, Outcomes):
        return Outcomes._make(None if a is None else np.asarray(a) for a in data)
    if isinstance(data, pd.DataFrame):
        return outcomes_from_frame(data, feature_columns)
    return outcomes_from_frame(pd.read_parquet(data), feature_columns)


def batches(outcomes: Outcomes, order: np.ndarray, batch_size: int) -> list[Outcomes]:
    """``outcomes`` rows in ``order``, cut into batches padded to ``batch_size``."""
    return [
        pad(take(outcomes, order[i : i + batch_size]), batch_size)
        for i in range(0, order.size, batch_size)
    ]


def evaluate_loss(model: RewardModel, state: ModelState, data: Sequence[Outcomes]) -> float:
    """Mean training loss of ``state`` on padded batches (``update``'s pre-step loss, weighted
    by rows; the updated state is discarded)."""
    total, count = 0.0, 0
    for b in data:
        _, m = model.update(state, b)
        total += float(m.loss) * int(m.n_used)
        count += int(m.n_used)
    return total / count if count else float("nan")


def fit(
    model: RewardModel,
    state: ModelState,
    data: Outcomes | pd.DataFrame | str | os.PathLike[str],
    *,
    key: PRNGKeyArray,
    batch_size: int = 1024,
    epochs: int = 10,
    validation_fraction: float = 0.1,
    patience: int = 2,
    shuffle: bool = True,
    feature_columns: Sequence[str] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Train ``state`` offline by looping ``model.update``.

    Args:
        model: the reward model.
        state: where to start (e.g. ``model.init(key, d)`` or a checkpoint).
        data: an :class:`Outcomes` of numpy arrays, a pandas frame, or a Parquet path (see
            :func:`outcomes_from_frame` for the columns).
        key: seeds the validation split and the per-epoch shuffles.
        batch_size: rows per ``update`` (batches are padded to it: one compilation).
        epochs: maximum passes over the training split.
        validation_fraction: share of rows held out for early stopping (0 = none: every epoch
            runs and the last state is kept).
        patience: epochs without a lower validation loss before stopping.
        shuffle: reshuffle the training rows every epoch (False = in the given order).
        feature_columns: feature columns of a frame (default ``x_0, x_1, ...``).
        on_epoch: called with an :class:`EpochReport` after every epoch.
        on_batch: called with ``(batches done, batches per epoch)`` after every batch.

    Returns:
        :class:`FitResult` with the best state (lowest validation loss).

    Raises:
        ValueError: on bad arguments or columns.
    """
    if batch_size <= 0 or epochs <= 0 or patience <= 0:
        raise ValueError("batch_size, epochs and patience must be positive")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    outcomes = _as_outcomes(data, feature_columns)
    n = int(np.shape(outcomes.mask)[0])
    split_key, shuffle_key = jax.random.split(key)
    n_val = round(n * validation_fraction)
    if validation_fraction > 0:
        perm = np.asarray(jax.random.permutation(split_key, n))
        train_rows, val_rows = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    else:
        train_rows, val_rows = np.arange(n), np.arange(0)
    val_batches = batches(outcomes, val_rows, batch_size)
    best_state, best_loss, best_epoch = state, float("inf"), -1
    history: list[EpochReport] = []
    for epoch in range(epochs):
        order = train_rows
        if shuffle:
            order = train_rows[
                np.asarray(
                    jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), train_rows.size)
                )
            ]
        losses, weights, rejected = [], [], 0
        train_batches = batches(outcomes, order, batch_size)
        for i, b in enumerate(train_batches):
            state, m = model.update(state, b)
            losses.append(float(m.loss))
            weights.append(int(m.n_used))
            rejected += int(not bool(m.accepted)) if int(m.n_used) else 0
            if on_batch is not None:
                on_batch(i + 1, len(train_batches))
        train_loss = float(np.average(losses, weights=weights)) if sum(weights) else float("nan")
        val_loss = evaluate_loss(model, state, val_batches) if val_batches else float("nan")
        if not val_batches or val_loss < best_loss:
            best_state, best_loss, best_epoch = state, val_loss, epoch
        report = EpochReport(epoch, train_loss, val_loss, best_epoch, rejected)
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
        if val_batches and epoch - best_epoch >= patience:
            break
    return FitResult(best_state, history)
