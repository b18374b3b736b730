"""Fixtures for the reward-model tests: small synthetic batches with a known hazard process."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest

from rewards.labels import bin_edges_ms
from rewards.types import BACKBTN, FWDBTN, LOGOUT, TRACKDONE, Outcomes

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

N_FEATURES = 6
HISTORY_LEN = 3


def synthetic_outcomes(
    n: int, *, seed: int, d: int = N_FEATURES, censor_prob: float = 0.05, n_tracks: int = 50
) -> Outcomes:
    """Plays from a 5-bin hazard model whose index is linear in the features and a track effect.

    Durations are log-normal (some shorter than 30 s); a share of plays is cut off (censored);
    histories are random valid entries.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = np.linspace(-1.0, 1.0, d)
    track = rng.integers(0, n_tracks, size=n)
    quality = np.sin(np.arange(n_tracks))  # deterministic per-track effect
    eta = x @ w + quality[track]
    duration = (
        np.exp(rng.normal(np.log(150_000), 0.8, size=n)).clip(8_000, 900_000).astype(np.int64)
    )
    edges = np.asarray(bin_edges_ms(duration))
    lower = np.concatenate([np.zeros((n, 1)), edges[:, :-1]], axis=1)
    hz = 1 / (1 + np.exp(-(np.array([-1.0, -1.2, -2.0, -2.5, -3.0]) - eta[:, None])))
    hz = np.where(edges - lower > 0, hz, 0.0)
    stops = rng.random((n, 5)) < hz
    first = np.where(stops.any(axis=1), stops.argmax(axis=1), 5)
    idx = np.minimum(first, 4)
    r = np.arange(n)
    ms = lower[r, idx] + rng.random(n) * (edges[r, idx] - lower[r, idx])
    ms = np.where(first == 5, duration, ms).astype(np.int64)
    reason = np.where(first == 5, TRACKDONE, np.where(rng.random(n) < 0.8, FWDBTN, BACKBTN))
    censored = rng.random(n) < censor_prob
    ms = np.where(censored, (ms * rng.random(n)).astype(np.int64), ms)
    reason = np.where(censored, LOGOUT, reason).astype(np.int8)
    saved = (reason == TRACKDONE) & (rng.random(n) < 0.2)
    history = np.zeros((n, HISTORY_LEN, 9), np.float32)
    bins = rng.integers(0, 6, size=(n, HISTORY_LEN))
    np.put_along_axis(history, bins[..., None], 1.0, axis=-1)
    history[..., 8] = 1.0
    return Outcomes(
        features=x,
        ms_played=ms,
        duration_ms=duration,
        reason_end=reason,
        saved=saved,
        position=rng.integers(0, 5, size=n).astype(np.int32),
        censored=censored,
        mask=np.ones(n, bool),
        track_id=track.astype(np.int64),
        history=history,
    )


@pytest.fixture(scope="session")
def synth() -> Callable[..., Outcomes]:
    """The synthetic play generator, for tests that need their own sizes or seeds."""
    return synthetic_outcomes


@pytest.fixture(scope="session")
def batch() -> Outcomes:
    return synthetic_outcomes(256, seed=1)
