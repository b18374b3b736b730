"""Input validation, done once at the edge. Errors name the offending field and rows.

Shapes and dtypes are checked whenever a policy function is called, also under ``jax.jit`` and
``jax.vmap`` (they are static). Values (NaN / inf, empty candidate sets, a slate longer than the
valid candidates, propensities outside ``(0, 1]``) can only be checked on concrete arrays, so the
policy functions check them when called eagerly and skip them while being traced. A caller that
jits ``rank`` or ``update`` itself should call :func:`check_request` / :func:`check_feedback`
on the host first (``streaming`` does). A raw array where ``Candidates`` or ``Feedback`` belongs
is a ``TypeError`` that says how to build one (:func:`require_candidates`,
:func:`require_feedback`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.core as jax_core
import numpy as np

from bandits.types import Candidates, Feedback

__all__ = [
    "check_feedback",
    "check_request",
    "is_concrete",
    "require_candidates",
    "require_feedback",
]


def is_concrete(*arrays: Any) -> bool:
    """True when none of ``arrays`` (pytrees allowed) is being traced by jit / vmap / grad."""
    return not any(isinstance(leaf, jax_core.Tracer) for leaf in jax.tree_util.tree_leaves(arrays))


def _rows(bad: Any, limit: int = 5) -> str:
    idx = np.flatnonzero(bad)
    more = f" (and {idx.size - limit} more)" if idx.size > limit else ""
    return f"rows {idx[:limit].tolist()}{more}"


def _described(x: object) -> str:
    """``"an array of shape (5, 2)"``, ``"a tuple"``: what a caller handed in."""
    if isinstance(x, np.ndarray | jax.Array):
        return f"an array of shape {tuple(x.shape)}"
    return f"a {type(x).__module__}.{type(x).__qualname__}".replace("a builtins.", "a ")


def require_candidates(candidates: object) -> None:
    """Raise a ``TypeError`` that says how to build ``Candidates`` unless it is one.

    Raises:
        TypeError: ``candidates`` is a raw array (or anything else) instead of ``Candidates``.
    """
    if not isinstance(candidates, Candidates):
        raise TypeError(
            f"candidates must be bandits.types.Candidates, got {_described(candidates)}; "
            "build one with bandits.Candidates(features=(k, d_track) float32, ids=(k,) int32), "
            "or pad raw arrays with bandits.pad(features, ids), which also returns the mask"
        )


def require_feedback(feedback: object) -> None:
    """Raise a ``TypeError`` that says how to build ``Feedback`` unless it is one.

    Raises:
        TypeError: ``feedback`` is a raw array (or anything else) instead of ``Feedback``.
    """
    if not isinstance(feedback, Feedback):
        raise TypeError(
            f"feedback must be bandits.types.Feedback, got {_described(feedback)}; build one "
            "with bandits.Feedback(context=(n, d_user), features=(n, d_track), action=(n,), "
            "position=(n,), reward=(n,), propensity=(n,), mask=(n,)), one row per shown item"
        )


def _kind(name: str, x: Any, kind: str) -> None:
    dt = np.dtype(x.dtype)
    ok = {
        "float": np.issubdtype(dt, np.floating),
        "int": np.issubdtype(dt, np.integer),
        "bool": dt == np.bool_,
    }[kind]
    if not ok:
        raise TypeError(f"{name} must have a {kind} dtype, got {dt}")


def check_request_shapes(
    context: Any,
    candidates: Candidates,
    mask: Any,
    d_user: int,
    d_track: int,
    slate_size: int | None,
) -> None:
    """Static checks of one ``rank``/``score`` request (work under jit and vmap)."""
    require_candidates(candidates)
    if context.shape != (d_user,):
        raise ValueError(f"context must have shape ({d_user},), got {tuple(context.shape)}")
    feats, ids = candidates.features, candidates.ids
    if feats.ndim != 2 or feats.shape[1] != d_track:
        raise ValueError(
            f"candidates.features must have shape (k, {d_track}), got {tuple(feats.shape)}"
        )
    k = feats.shape[0]
    if k == 0:
        raise ValueError("candidates is empty (k = 0)")
    if ids.shape != (k,):
        raise ValueError(f"candidates.ids must have shape ({k},), got {tuple(ids.shape)}")
    if mask.shape != (k,):
        raise ValueError(f"mask must have shape ({k},), got {tuple(mask.shape)}")
    _kind("context", context, "float")
    _kind("candidates.features", feats, "float")
    _kind("candidates.ids", ids, "int")
    _kind("mask", mask, "bool")
    if slate_size is not None and not 1 <= slate_size <= k:
        raise ValueError(f"slate_size must be in [1, k={k}], got {slate_size}")


def check_request(
    context: Any,
    candidates: Candidates,
    mask: Any,
    *,
    d_user: int,
    d_track: int,
    slate_size: int | None = None,
) -> None:
    """Check one request fully (shapes, dtypes and values) on the host.

    Raises:
        TypeError: a wrong container or dtype.
        ValueError: shape mismatch, NaN or infinite features, no valid candidate, or a
            ``slate_size`` larger than the number of valid (unmasked) candidates.
    """
    check_request_shapes(context, candidates, mask, d_user, d_track, slate_size)
    ctx = np.asarray(context)
    if not np.isfinite(ctx).all():
        raise ValueError(
            f"context has NaN or infinite values at features {_rows(~np.isfinite(ctx))}"
        )
    feats = np.asarray(candidates.features)
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        raise ValueError(
            f"candidates.features has NaN or infinite values in candidate {_rows(bad)}"
        )
    m = np.asarray(mask)
    n_valid = int(m.sum())
    if n_valid == 0:
        raise ValueError("no valid candidate: mask is all False")
    if slate_size is not None and slate_size > n_valid:
        raise ValueError(
            f"slate_size ({slate_size}) exceeds the number of valid candidates ({n_valid})"
        )


def check_feedback_shapes(fb: Feedback, d_user: int, d_track: int) -> None:
    """Static checks of a ``Feedback`` batch (work under jit)."""
    require_feedback(fb)
    n = fb.reward.shape[0] if fb.reward.ndim == 1 else -1
    expect = {
        "context": (n, d_user),
        "features": (n, d_track),
        "action": (n,),
        "position": (n,),
        "reward": (n,),
        "propensity": (n,),
        "mask": (n,),
    }
    for name, shape in expect.items():
        got = tuple(getattr(fb, name).shape)
        if got != shape:
            raise ValueError(f"Feedback.{name} must have shape {shape}, got {got}")
    for name, kind in (
        ("context", "float"),
        ("features", "float"),
        ("action", "int"),
        ("position", "int"),
        ("reward", "float"),
        ("propensity", "float"),
        ("mask", "bool"),
    ):
        _kind(f"Feedback.{name}", getattr(fb, name), kind)


def check_feedback(fb: Feedback, *, d_user: int, d_track: int) -> None:
    """Check a ``Feedback`` batch fully on the host.

    Raises:
        TypeError: a wrong container or dtype.
        ValueError: inconsistent shapes, NaN or infinite values, a negative position, or a
            propensity outside ``(0, 1]`` on a real (unmasked) row.
    """
    check_feedback_shapes(fb, d_user, d_track)
    for name in ("context", "features", "reward"):
        x = np.asarray(getattr(fb, name))
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        if bad.any():
            raise ValueError(f"Feedback.{name} has NaN or infinite values in {_rows(bad)}")
    m = np.asarray(fb.mask)
    p = np.asarray(fb.propensity)
    bad = m & ~((p > 0) & (p <= 1))
    if bad.any():
        raise ValueError(
            f"Feedback.propensity must be in (0, 1]; {_rows(bad)} are not: {p[bad][:5].tolist()}"
        )
    pos = np.asarray(fb.position)
    bad = m & (pos < 0)
    if bad.any():
        raise ValueError(f"Feedback.position must be >= 0; {_rows(bad)} are not")
    bad = m & (np.asarray(fb.action) < 0)
    if bad.any():
        raise ValueError(f"Feedback.action must be >= 0; {_rows(bad)} are not")
