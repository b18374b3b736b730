"""Inputs and outputs of the off-policy estimators: typed batches of plain arrays.

``bandits.ope`` owns these types; callers (``streaming``, benchmarks, notebooks) adapt their data
to them. Nothing here knows about policies: a target policy reaches an estimator only as the
per-row probabilities it gives every action (``TargetProbs``).

The result of every estimator is :class:`bandits.types.Estimate` (also ``bandits.Estimate``),
re-exported here with its :class:`~bandits.types.Diagnostics`.

Validation happens once, in ``check()``, and every error names the type, the column and the
offending rows, so a bad log is fixed at its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from jaxtyping import Float, Int

from bandits.types import Diagnostics, Estimate

# Array shapes, named as in the docstrings (n rounds, k actions, s positions, d features).
FloatN = Float[np.ndarray, "n"]
IntN = Int[np.ndarray, "n"]
FloatND = Float[np.ndarray, "n d"]
FloatNKD = Float[np.ndarray, "n k da"]
FloatNK = Float[np.ndarray, "n k"]
IntNS = Int[np.ndarray, "n s"]
FloatNS = Float[np.ndarray, "n s"]
FloatNSK = Float[np.ndarray, "n s k"]
Float0 = Float[np.ndarray, ""]
Float3 = Float[np.ndarray, "3"]
Float33 = Float[np.ndarray, "3 3"]
FloatE = Float[np.ndarray, "e"]
FloatE3 = Float[np.ndarray, "e 3"]
FloatE33 = Float[np.ndarray, "e 3 3"]
Float5 = Float[np.ndarray, "5"]

_PREVIEW_ROWS = 10


class InvalidLogError(ValueError):
    """A logged batch or target distribution is malformed; the message names column and rows."""


def _rows(mask: npt.ArrayLike) -> str:
    """``"rows [3, 17] (2 of 100)"``: the first offending row indices and how many there are."""
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(r)) for r in rows[:_PREVIEW_ROWS])
    more = ", ..." if rows.size > _PREVIEW_ROWS else ""
    return f"rows [{shown}{more}] ({rows.size} of {mask.shape[0]})"


def _fail(owner: str, column: str, problem: str, mask: npt.ArrayLike) -> InvalidLogError:
    return InvalidLogError(f"{owner}.{column} {problem} at {_rows(mask)}")


def _require(owner: str, column: str, value: object) -> np.ndarray:
    if value is None:
        raise InvalidLogError(f"{owner}.{column} is missing (None)")
    if not isinstance(value, np.ndarray):
        raise InvalidLogError(f"{owner}.{column} must be a numpy array, got {type(value).__name__}")
    return value


def _check_shape(owner: str, column: str, a: np.ndarray, shape: tuple[int | None, ...]) -> None:
    dims = ["?" if s is None else str(s) for s in shape]
    want = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    ok = a.ndim == len(shape) and all(
        s is None or s == d for s, d in zip(shape, a.shape, strict=True)
    )
    if not ok:
        raise InvalidLogError(f"{owner}.{column} has shape {a.shape}, expected {want}")


def _check_finite(owner: str, column: str, a: np.ndarray) -> None:
    """Cheap reduction first; the row mask is only built when something is wrong."""
    if np.isfinite(a.sum(dtype=np.float64)):
        return
    bad = ~np.isfinite(a)
    if bad.ndim > 1:
        bad = bad.reshape(bad.shape[0], -1).any(axis=1)
    if bad.any():
        raise _fail(owner, column, "has NaN or infinite values", bad)


def _check_numeric(owner: str, column: str, a: np.ndarray, kind: str) -> None:
    if kind == "int" and not np.issubdtype(a.dtype, np.integer):
        raise InvalidLogError(f"{owner}.{column} must have an integer dtype, got {a.dtype}")
    if kind == "float" and not (
        np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool
    ):
        raise InvalidLogError(f"{owner}.{column} must be numeric, got dtype {a.dtype}")


class LoggedFeedback(NamedTuple):
    """A log of single-action rounds from a stochastic logging policy.

    Attributes:
        action: ``(n,)`` int, index of the logged action among the round's ``k`` candidates.
        reward: ``(n,)`` float, the observed reward of the logged action.
        propensity: ``(n,)`` float in (0, 1], the logging policy's probability of the logged action.
        context: ``(n, d)`` float or None, round features; only the fitted reward model uses them.
        action_features: ``(n, k, d_a)`` float or None, candidate features (for example track
            embeddings) for a reward model whose actions differ from round to round.
        q_hat: ``(n, k)`` float or None, reward-model estimates of every action's expected reward
            (needed by DM and the doubly robust family; see ``reward_model.cross_fit_q_hat``).

    Example:
        >>> import numpy as np
        >>> log = LoggedFeedback(action=np.array([0, 1]), reward=np.array([1.0, 0.0]),
        ...                      propensity=np.array([0.5, 0.5])).check()
        >>> log.n
        2
    """

    action: IntN
    reward: FloatN
    propensity: FloatN
    context: FloatND | None = None
    action_features: FloatNKD | None = None
    q_hat: FloatNK | None = None

    @property
    def n(self) -> int:
        """Number of logged rounds."""
        return int(self.action.shape[0])

    def check(self) -> LoggedFeedback:
        """Validate every column once and return the log unchanged.

        Raises:
            InvalidLogError: a column is missing, has the wrong shape or dtype, or has invalid
                values; the message names the column and the offending rows.
        """
        owner = "LoggedFeedback"
        action = _require(owner, "action", self.action)
        _check_numeric(owner, "action", action, "int")
        _check_shape(owner, "action", action, (None,))
        n = action.shape[0]
        if n == 0:
            raise InvalidLogError(f"{owner} is empty (0 rows)")
        for column in ("reward", "propensity"):
            a = _require(owner, column, getattr(self, column))
            _check_numeric(owner, column, a, "float")
            _check_shape(owner, column, a, (n,))
            _check_finite(owner, column, a)
        if action.min() < 0:
            raise _fail(owner, "action", "is negative", action < 0)
        p = self.propensity
        if not (p.min() > 0.0 and p.max() <= 1.0):
            raise _fail(owner, "propensity", "must be in (0, 1]", ~((p > 0.0) & (p <= 1.0)))
        if self.context is not None:
            c = _require(owner, "context", self.context)
            _check_shape(owner, "context", c, (n, None))
            _check_finite(owner, "context", c)
        k: int | None = None
        if self.action_features is not None:
            f = _require(owner, "action_features", self.action_features)
            _check_shape(owner, "action_features", f, (n, None, None))
            _check_finite(owner, "action_features", f)
            k = f.shape[1]
        if self.q_hat is not None:
            q = _require(owner, "q_hat", self.q_hat)
            _check_shape(owner, "q_hat", q, (n, k))
            _check_finite(owner, "q_hat", q)
            k = q.shape[1]
        if k is not None and action.max() >= k:
            raise _fail(owner, "action", f"is >= k={k} (the number of actions)", action >= k)
        return self

    @staticmethod
    def from_columns(
        columns: Mapping[str, np.ndarray], column_map: Mapping[str, str] | None = None
    ) -> LoggedFeedback:
        """Build a log from named columns (``{"click": array, ...}``), renaming via ``column_map``.

        Args:
            columns: source column name -> ``(n,)`` array.
            column_map: field name -> source column name, for fields named differently at the
                source (``{"reward": "click", "propensity": "pscore"}``).

        Raises:
            InvalidLogError: a required field has no column; the message lists what exists.
        """
        mapping = dict(column_map or {})
        unknown = sorted(set(mapping) - {"action", "reward", "propensity"})
        if unknown:
            raise InvalidLogError(
                f"column map names unknown field(s) {unknown}; fields are action, reward, propensity"
            )
        found: dict[str, np.ndarray] = {}
        for name in ("action", "reward", "propensity"):
            source = mapping.get(name, name)
            if source not in columns:
                raise InvalidLogError(
                    f"missing column {source!r} for LoggedFeedback.{name}; "
                    f"available columns: {sorted(columns)}"
                )
            found[name] = np.asarray(columns[source])
        return LoggedFeedback(found["action"], found["reward"], found["propensity"])


class TargetProbs(NamedTuple):
    """The evaluation (target) policy, as the probability it gives each action in each round.

    Attributes:
        target_prob: ``(n, k)`` float, rows sum to 1; ``target_prob[i, a]`` is the probability
            that the target policy picks action ``a`` in logged round ``i``.
    """

    target_prob: FloatNK

    def check(self, log: LoggedFeedback) -> TargetProbs:
        """Validate against a (checked) log and return self.

        Raises:
            InvalidLogError: wrong shape, negative or non-finite values, rows not summing to 1,
                or an action space that does not match the log's.
        """
        owner = "TargetProbs"
        t = _require(owner, "target_prob", self.target_prob)
        n = log.n
        if t.ndim != 2 or t.shape[0] != n:
            raise InvalidLogError(
                f"{owner}.target_prob has shape {t.shape}, expected ({n}, k) to match the log's {n} rows"
            )
        k = t.shape[1]
        _check_finite(owner, "target_prob", t)
        if t.min() < 0:
            raise _fail(owner, "target_prob", "has negative probabilities", (t < 0).any(axis=1))
        sums = t.sum(axis=1, dtype=np.float64)
        tol = 1e-6 if t.dtype == np.float64 else 1e-4
        off = np.abs(sums - 1.0) > tol
        if off.any():
            raise _fail(owner, "target_prob", "rows do not sum to 1", off)
        if log.action.max() >= k:
            raise _fail(
                "LoggedFeedback",
                "action",
                f"is >= k={k}, the target's number of actions",
                log.action >= k,
            )
        for column in ("q_hat", "action_features"):
            a = getattr(log, column)
            if a is not None and a.shape[1] != k:
                raise InvalidLogError(
                    f"LoggedFeedback.{column} has k={a.shape[1]} actions but TargetProbs.target_prob has k={k}"
                )
        return self


class LoggedSlates(NamedTuple):
    """A log of ranked lists (slates) of ``s`` positions, each filled from ``k`` candidates.

    Attributes:
        slate: ``(n, s)`` int, the candidate shown at each position, in order.
        reward: ``(n, s)`` float, the reward observed at each position (0 where unheard).
        propensity: ``(n, s)`` float in (0, 1], the logging policy's probability of the item at
            position ``l`` *given the items above it* (the Plackett-Luce / sequential factor).
        marginal_propensity: ``(n, s)`` float or None, the logging policy's marginal probability
            of the item at position ``l``; None means the logging policy is a product over
            positions (each position drawn independently), so it equals ``propensity``.
        q_hat: ``(n, s, k)`` float or None, reward-model estimate of the reward at position
            ``l`` if candidate ``a`` were shown there after the logged items above it
            (cascade-DR needs it).
    """

    slate: IntNS
    reward: FloatNS
    propensity: FloatNS
    marginal_propensity: FloatNS | None = None
    q_hat: FloatNSK | None = None

    @property
    def n(self) -> int:
        """Number of logged slates."""
        return int(self.slate.shape[0])

    def check(self) -> LoggedSlates:
        """Validate every column once and return the log unchanged.

        Raises:
            InvalidLogError: as for ``LoggedFeedback.check``.
        """
        owner = "LoggedSlates"
        slate = _require(owner, "slate", self.slate)
        _check_numeric(owner, "slate", slate, "int")
        _check_shape(owner, "slate", slate, (None, None))
        n, s = slate.shape
        if n == 0:
            raise InvalidLogError(f"{owner} is empty (0 rows)")
        if slate.min() < 0:
            raise _fail(owner, "slate", "is negative", (slate < 0).any(axis=1))
        for column in ("reward", "propensity", "marginal_propensity"):
            value = getattr(self, column)
            if value is None and column == "marginal_propensity":
                continue
            a = _require(owner, column, value)
            _check_numeric(owner, column, a, "float")
            _check_shape(owner, column, a, (n, s))
            _check_finite(owner, column, a)
            if column != "reward" and not (a.min() > 0.0 and a.max() <= 1.0):
                raise _fail(owner, column, "must be in (0, 1]", (~((a > 0) & (a <= 1))).any(axis=1))
        if self.q_hat is not None:
            q = _require(owner, "q_hat", self.q_hat)
            _check_shape(owner, "q_hat", q, (n, s, None))
            _check_finite(owner, "q_hat", q)
            if slate.max() >= q.shape[2]:
                raise _fail(
                    owner, "slate", f"is >= k={q.shape[2]}", (slate >= q.shape[2]).any(axis=1)
                )
        return self


class SlateTargetProbs(NamedTuple):
    """The target policy over slates, position by position.

    Attributes:
        target_prob: ``(n, s, k)`` float; ``target_prob[i, l, a]`` is the probability that the
            target puts candidate ``a`` at position ``l`` given the *logged* items above ``l``.
        marginal: ``(n, s, k)`` float or None; the target's marginal probability of candidate
            ``a`` at position ``l``. None means the target is a product over positions, so it
            equals ``target_prob``.
    """

    target_prob: FloatNSK
    marginal: FloatNSK | None = None

    def check(self, log: LoggedSlates) -> SlateTargetProbs:
        """Validate against a (checked) slate log and return self.

        Raises:
            InvalidLogError: wrong shape, invalid probabilities or mismatched action spaces.
        """
        owner = "SlateTargetProbs"
        n, s = log.slate.shape
        for column in ("target_prob", "marginal"):
            value = getattr(self, column)
            if value is None and column == "marginal":
                continue
            t = _require(owner, column, value)
            if t.ndim != 3 or t.shape[:2] != (n, s):
                raise InvalidLogError(
                    f"{owner}.{column} has shape {t.shape}, expected ({n}, {s}, k)"
                )
            _check_finite(owner, column, t)
            if t.min() < 0:
                raise _fail(owner, column, "has negative probabilities", (t < 0).any(axis=(1, 2)))
            off = (np.abs(t.sum(axis=2, dtype=np.float64) - 1.0) > 1e-4).any(axis=1)
            if off.any():
                raise _fail(owner, column, "rows do not sum to 1", off)
            k = t.shape[2]
            if log.slate.max() >= k:
                raise _fail(
                    "LoggedSlates",
                    "slate",
                    f"is >= k={k}, the target's number of actions",
                    (log.slate >= k).any(axis=1),
                )
            if log.q_hat is not None and log.q_hat.shape[2] != k:
                raise InvalidLogError(
                    f"LoggedSlates.q_hat has k={log.q_hat.shape[2]} actions but {owner}.{column} has k={k}"
                )
        return self


class RoundValues(NamedTuple):
    """What an estimator computes per round; the estimate is ``mean(direct) + sum(weighted) / sum(normaliser)``.

    Plain estimators (IPS, DR) set ``normaliser`` to ones; self-normalised ones (SNIPS, SNDR) set
    it to the importance weights, so intervals resample numerator and denominator together.

    Attributes:
        direct: ``(n,)`` the model-based part (DM, the baseline of DR), zeros if unused.
        weighted: ``(n,)`` the importance-weighted part.
        normaliser: ``(n,)`` the denominator terms (ones for unnormalised estimators).
    """

    direct: FloatN
    weighted: FloatN
    normaliser: FloatN


__all__ = [
    "Diagnostics",
    "Estimate",
    "InvalidLogError",
    "LoggedFeedback",
    "LoggedSlates",
    "RoundValues",
    "SlateTargetProbs",
    "TargetProbs",
]
