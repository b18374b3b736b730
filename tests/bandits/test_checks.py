"""Bad input raises a clear error naming the field (nothing is silently coerced)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bandits import POLICIES, Candidates, Feedback, check_feedback

DU, DT, K = 3, 2, 5
POLICY = POLICIES["linucb"](n_ids=8)
STATE = POLICY.init(DU, DT)


def _request() -> tuple[np.ndarray, Candidates, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=DU).astype(np.float32),
        Candidates(rng.normal(size=(K, DT)).astype(np.float32), np.arange(K, dtype=np.int32)),
        np.ones(K, bool),
    )


def _feedback(n: int = 4) -> Feedback:
    rng = np.random.default_rng(1)
    return Feedback(
        rng.normal(size=(n, DU)).astype(np.float32),
        rng.normal(size=(n, DT)).astype(np.float32),
        np.arange(n, dtype=np.int32),
        np.zeros(n, np.int32),
        np.ones(n, np.float32),
        np.full(n, 0.5, np.float32),
        np.ones(n, bool),
    )


def _rank(x: Any, c: Any, m: Any, s: int = 2) -> Any:
    return POLICY.rank(STATE, x, c, m, key=jax.random.key(0), slate_size=s)


def _with(c: Candidates, **kw: Any) -> Candidates:
    return c._replace(**kw)


def _nan_at(a: np.ndarray, idx: Any, value: float = np.nan) -> np.ndarray:
    a = a.copy()
    a[idx] = value
    return a


x0, c0, m0 = _request()
RANK_CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("context shape", lambda: _rank(x0[:2], c0, m0), ValueError, r"context must have shape \(3,\)"),
    (
        "feature dims",
        lambda: _rank(x0, _with(c0, features=c0.features[:, :1]), m0),
        ValueError,
        r"candidates.features must have shape \(k, 2\)",
    ),
    (
        "ids length",
        lambda: _rank(x0, _with(c0, ids=c0.ids[:3]), m0),
        ValueError,
        r"candidates.ids must have shape \(5,\)",
    ),
    ("mask length", lambda: _rank(x0, c0, m0[:4]), ValueError, r"mask must have shape \(5,\)"),
    (
        "empty",
        lambda: _rank(
            x0, Candidates(np.zeros((0, DT), np.float32), np.zeros(0, np.int32)), np.zeros(0, bool)
        ),
        ValueError,
        "candidates is empty",
    ),
    (
        "nan feature",
        lambda: _rank(x0, _with(c0, features=_nan_at(c0.features, (3, 1))), m0),
        ValueError,
        r"candidates.features has NaN or infinite values in candidate rows \[3\]",
    ),
    (
        "inf context",
        lambda: _rank(_nan_at(x0, 0, np.inf), c0, m0),
        ValueError,
        "context has NaN or infinite values",
    ),
    ("all masked", lambda: _rank(x0, c0, np.zeros(K, bool)), ValueError, "no valid candidate"),
    (
        "slate > valid",
        lambda: _rank(x0, c0, np.array([1, 1, 0, 0, 0], bool), 3),
        ValueError,
        r"slate_size \(3\) exceeds the number of valid candidates \(2\)",
    ),
    ("slate > k", lambda: _rank(x0, c0, m0, 6), ValueError, r"slate_size must be in \[1, k=5\]"),
    (
        "int features",
        lambda: _rank(x0, _with(c0, features=c0.features.astype(np.int32)), m0),
        TypeError,
        "candidates.features must have a float dtype",
    ),
    (
        "float mask",
        lambda: _rank(x0, c0, m0.astype(np.float32)),
        TypeError,
        "mask must have a bool dtype",
    ),
    (
        "not Candidates",
        lambda: _rank(x0, (c0.features, c0.ids), m0),
        TypeError,
        "candidates must be bandits.types.Candidates",
    ),
]


@pytest.mark.parametrize(
    ("case", "call", "error", "message"), RANK_CASES, ids=[c[0] for c in RANK_CASES]
)
def test_bad_requests_raise(
    case: str, call: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


fb0 = _feedback()
FEEDBACK_CASES: list[tuple[str, Feedback, type[Exception], str]] = [
    (
        "propensity 0",
        fb0._replace(propensity=_nan_at(fb0.propensity, 2, 0.0)),
        ValueError,
        r"Feedback.propensity must be in \(0, 1\]; rows \[2\] are not",
    ),
    (
        "propensity > 1",
        fb0._replace(propensity=_nan_at(fb0.propensity, 1, 1.5)),
        ValueError,
        r"Feedback.propensity must be in \(0, 1\]; rows \[1\]",
    ),
    (
        "nan reward",
        fb0._replace(reward=_nan_at(fb0.reward, 0)),
        ValueError,
        r"Feedback.reward has NaN or infinite values in rows \[0\]",
    ),
    (
        "inf features",
        fb0._replace(features=_nan_at(fb0.features, (3, 0), np.inf)),
        ValueError,
        r"Feedback.features has NaN or infinite values in rows \[3\]",
    ),
    (
        "negative position",
        fb0._replace(position=np.array([0, -1, 0, 0], np.int32)),
        ValueError,
        r"Feedback.position must be >= 0; rows \[1\]",
    ),
    (
        "row count",
        fb0._replace(reward=fb0.reward[:3]),
        ValueError,
        r"Feedback.context must have shape \(3, 3\)",
    ),
    (
        "feature dims",
        fb0._replace(features=fb0.features[:, :1]),
        ValueError,
        r"Feedback.features must have shape \(4, 2\)",
    ),
    (
        "float action",
        fb0._replace(action=fb0.action.astype(np.float32)),
        TypeError,
        "Feedback.action must have a int dtype",
    ),
]


@pytest.mark.parametrize(
    ("case", "fb", "error", "message"), FEEDBACK_CASES, ids=[c[0] for c in FEEDBACK_CASES]
)
def test_bad_feedback_raises(case: str, fb: Feedback, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        POLICY.update(STATE, fb)
    with pytest.raises(error, match=message):
        check_feedback(fb, d_user=DU, d_track=DT)


def test_masked_rows_may_hold_any_propensity() -> None:
    fb = fb0._replace(
        propensity=_nan_at(fb0.propensity, 2, 0.0), mask=np.array([True, True, False, True])
    )
    state = POLICY.update(STATE, fb)
    assert int(state.n) == 3


def test_disjoint_ids_must_be_arm_indices() -> None:
    policy = POLICIES["disjoint_linucb"](n_arms=4)
    state = policy.init(DU, DT)
    with pytest.raises(
        ValueError, match=r"candidates.ids must be arm indices in \[0, 4\); rows \[4\]"
    ):
        policy.rank(state, x0, c0, m0, key=jax.random.key(0), slate_size=1)
    with pytest.raises(ValueError, match=r"Feedback.action must be arm indices"):
        policy.update(state, fb0._replace(action=np.array([0, 1, 2, 9], np.int32)))


def test_checks_also_run_shapes_under_jit() -> None:
    with pytest.raises(ValueError, match=r"context must have shape \(3,\)"):
        jax.jit(POLICY.score)(STATE, jnp.ones((4,), jnp.float32), c0, m0)
