"""The ``Policy`` interface: a NamedTuple of pure functions over an explicit state (optax style).

Every policy module has a snake_case factory (``linucb(alpha=1.0, ...) -> Policy``). The
hyperparameters are closed over and recorded in ``Policy.spec``. The four functions are::

    init(d_user, d_track) -> S
    score(state, context, candidates, mask) -> (k,) float32   # masked entries are -inf
    rank(state, context, candidates, mask, *, key, slate_size) -> Ranked
    update(state, feedback) -> S
    prepare(state) -> P                                        # serving form; score/rank take S or P

``context`` is one request's ``(d_user,)`` features; use ``jax.vmap`` for many requests. All
functions pass ``jax.jit`` (``slate_size`` is static) and check shapes and dtypes while tracing;
values are checked when they are called on concrete arrays (see ``bandits.checks``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeVar

import jax
from jaxtyping import Array, Bool, Float

from bandits import checks
from bandits.types import Candidates, Feedback, Ranked

__all__ = ["Policy", "PolicySpec", "make_policy"]

S = TypeVar("S")


class PolicySpec(NamedTuple):
    """What produced a state: the policy's registry name, its state format version and its
    hyperparameters (JSON-serialisable scalars and tuples)."""

    name: str
    version: int
    params: Mapping[str, Any]


class InitFn(Protocol):
    def __call__(self, d_user: int, d_track: int) -> Any: ...


class ScoreFn(Protocol):
    def __call__(
        self,
        state: Any,
        context: Float[Array, " d_user"],
        candidates: Candidates,
        mask: Bool[Array, " k"],
    ) -> Float[Array, " k"]: ...


class RankFn(Protocol):
    def __call__(
        self,
        state: Any,
        context: Float[Array, " d_user"],
        candidates: Candidates,
        mask: Bool[Array, " k"],
        *,
        key: Array,
        slate_size: int,
    ) -> Ranked: ...


class UpdateFn(Protocol):
    def __call__(self, state: Any, feedback: Feedback) -> Any: ...


class PrepareFn(Protocol):
    def __call__(self, state: Any) -> Any: ...


def _same(state: Any) -> Any:
    return state


class Policy(NamedTuple):
    """A bandit policy: pure functions plus the spec of the hyperparameters they close over.

    ``prepare(state)`` derives the form of a state that ``score`` and ``rank`` read fastest
    (for the linear policies a packed covariance, see ``bandits.linear.prepare``; the state
    itself for the others). ``score`` and ``rank`` accept the state or its prepared form and
    give the same results to float rounding; ``update``, ``save`` and merging take the state
    only. A server prepares once per loaded snapshot; the prepared form is never saved.
    """

    init: InitFn
    score: ScoreFn
    rank: RankFn
    update: UpdateFn
    spec: PolicySpec
    prepare: PrepareFn = _same
    added: tuple[str, ...] = ()
    """Hyperparameters added to the policy after states of its version were saved: a saved
    state whose spec lacks them (and only them) loads, the arrays it lacks taken from the
    template (``bandits.state.load``), provided they are among ``added_leaves``."""
    added_leaves: tuple[str, ...] = ()
    """The state's arrays (leaf paths) that came with ``added``."""


def make_policy(
    spec: PolicySpec,
    *,
    init: Callable[[int, int], Any],
    score: Callable[[Any, Array, Candidates, Array], Array],
    rank: Callable[[Any, Array, Candidates, Array, Array, int], Ranked],
    update: Callable[[Any, Feedback], Any],
    dims: Callable[[Any], tuple[int, int]],
    prepare: Callable[[Any], Any] | None = None,
    added: tuple[str, ...] = (),
    added_leaves: tuple[str, ...] = (),
) -> Policy:
    """Wrap core functions with input checks and ``jax.jit``.

    Args:
        spec: the policy's spec.
        init: ``init(d_user, d_track) -> S``.
        score: core scoring, inputs already checked.
        rank: core ranking ``rank(state, context, candidates, mask, key, slate_size)``.
        update: core update, feedback already checked.
        dims: ``dims(state) -> (d_user, d_track)`` read from the state's static shapes (of the
            state or of its prepared form).
        prepare: ``prepare(state) -> P``, the serving form ``score`` and ``rank`` also accept;
            None: the state itself.
        added, added_leaves: see ``Policy.added``.
    """
    score_jit = jax.jit(score)
    rank_jit = jax.jit(rank, static_argnums=5)
    update_jit = jax.jit(update)

    def init_fn(d_user: int, d_track: int) -> Any:
        if d_user < 1 or d_track < 1:
            raise ValueError(f"d_user and d_track must be positive, got {d_user}, {d_track}")
        return init(d_user, d_track)

    def _check(
        state: Any, context: Any, candidates: Any, mask: Any, slate_size: int | None
    ) -> None:
        d_user, d_track = dims(state)
        checks.check_request_shapes(context, candidates, mask, d_user, d_track, slate_size)
        if checks.is_concrete(context, candidates, mask):
            checks.check_request(
                context, candidates, mask, d_user=d_user, d_track=d_track, slate_size=slate_size
            )

    def score_fn(state: Any, context: Any, candidates: Any, mask: Any) -> Any:
        _check(state, context, candidates, mask, None)
        return score_jit(state, context, candidates, mask)

    def rank_fn(
        state: Any, context: Any, candidates: Any, mask: Any, *, key: Array, slate_size: int = 1
    ) -> Ranked:
        _check(state, context, candidates, mask, slate_size)
        return rank_jit(state, context, candidates, mask, key, slate_size)

    def update_fn(state: Any, feedback: Feedback) -> Any:
        d_user, d_track = dims(state)
        checks.check_feedback_shapes(feedback, d_user, d_track)
        if checks.is_concrete(feedback):
            checks.check_feedback(feedback, d_user=d_user, d_track=d_track)
        return update_jit(state, feedback)

    return Policy(
        init=init_fn,
        score=score_fn,
        rank=rank_fn,
        update=update_fn,
        spec=spec,
        prepare=_same if prepare is None else jax.jit(prepare),
        added=added,
        added_leaves=added_leaves,
    )


def bind(fn: Callable[..., Any], **static: Any) -> Callable[..., Any]:
    """``functools.partial`` with a name that says why: close hyperparameters over a core fn."""
    return partial(fn, **static)
