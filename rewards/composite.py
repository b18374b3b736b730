"""The composite reward: what the bandits maximise, as a declared, versioned function.

A :class:`CompositeReward` is a frozen, JSON-serialisable declaration (``to_spec`` /
``from_spec``; write the spec and :data:`REWARD_VERSION` into every checkpoint and snapshot) with
two pure functions of arrays, one for each moment the daemon learns something:

- ``provisional(predictions, duration_ms)``: when the impression is seen, the reward model's
  expectation of the final reward (for the bandit's first, provisional update, or for ranking);
- ``final(predictions, outcomes)``: when the outcome arrives.

Kinds:

- ``"stream30"``: 1 if at least 30 s were played (the crude baseline).
- ``"linear"``: ``w_complete * completed + w_skip_30s * skipped_before_30s + w_saved * saved``
  (default ``1.0, -0.5, 2.0``).
- ``"listen_fraction"``: fraction of the track played.
- ``"denoised"``: the model's expected ``"linear"`` reward for the action played, mixed with the
  raw outcome by ``shrink`` (0 = model only): the bandit learns from a low-variance signal.

Rules: a censored play (logout, session end) says nothing about the listener's taste after the
cut, so its final reward is its provisional one. For the expected ``saved`` term the models give
no save probability, so ``p_save_given_complete`` (a declared constant) stands in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from rewards.labels import (
    SKIP_2_MS,
    array_module,
    bin_edges_ms,
    completion_label,
    listen_fraction,
    skip_labels,
)
from rewards.types import ModelSpec, Outcomes, Predictions

REWARD_VERSION = 1
"""Bumped whenever the meaning of any kind or label changes; written into every checkpoint."""

KINDS = ("stream30", "linear", "listen_fraction", "denoised")
_NEEDS: dict[str, tuple[str, ...]] = {
    "stream30": ("skip_2",),
    "linear": ("skip_2", "complete"),
    "listen_fraction": ("skip_1", "skip_2", "complete"),
    "denoised": ("skip_2", "complete"),
}


@dataclass(frozen=True)
class CompositeReward:
    """A declared reward. Unknown spec keys and out-of-range values are errors.

    Args:
        kind: one of :data:`KINDS`.
        w_complete: weight of a completion (linear, denoised).
        w_skip_30s: weight of a skip before 30 s (linear, denoised); usually negative.
        w_saved: weight of a save (linear, denoised).
        p_save_given_complete: the assumed save rate of completed plays, for expectations.
        shrink: in ``[0, 1]``, weight of the raw outcome in the denoised final reward.

    >>> r = CompositeReward(kind="linear")
    >>> r.final(None, Outcomes(features=jnp.zeros((2, 1)), ms_played=jnp.array([200_000, 3_000]),
    ...     duration_ms=jnp.array([200_000, 200_000]), reason_end=jnp.array([0, 1]),
    ...     saved=jnp.array([True, False]), position=jnp.array([0, 1]),
    ...     censored=jnp.array([False, False]), mask=jnp.array([True, True]))).tolist()
    [3.0, -0.5]
    """

    kind: str = "linear"
    w_complete: float = 1.0
    w_skip_30s: float = -0.5
    w_saved: float = 2.0
    p_save_given_complete: float = 0.05
    shrink: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"CompositeReward.kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.shrink <= 1.0:
            raise ValueError(f"CompositeReward.shrink must be in [0, 1], got {self.shrink}")
        if not 0.0 <= self.p_save_given_complete <= 1.0:
            raise ValueError(
                "CompositeReward.p_save_given_complete must be in [0, 1], "
                f"got {self.p_save_given_complete}"
            )

    # ------------------------------------------------------------------ declaration
    def to_spec(self) -> dict[str, float | int | str]:
        """The JSON-serialisable declaration, with :data:`REWARD_VERSION`."""
        return {"reward_version": REWARD_VERSION, **asdict(self)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, float | int | str]) -> CompositeReward:
        """Rebuild from :meth:`to_spec` output.

        Raises:
            ValueError: on unknown keys or a ``reward_version`` other than :data:`REWARD_VERSION`.
        """
        known = {f.name for f in fields(cls)} | {"reward_version"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"CompositeReward spec: unknown keys {unknown}; known {sorted(known)}")
        version = spec.get("reward_version", REWARD_VERSION)
        if version != REWARD_VERSION:
            raise ValueError(
                f"CompositeReward spec has reward_version {version}; this code is {REWARD_VERSION}"
            )
        args = {k: v for k, v in spec.items() if k != "reward_version"}
        return cls(**args)  # type: ignore[arg-type]

    @property
    def needs(self) -> tuple[str, ...]:
        """Heads of the reward model that :meth:`provisional` uses."""
        return _NEEDS[self.kind]

    def check(self, model: ModelSpec) -> None:
        """Raise ``ValueError`` if the reward model does not predict every head this needs."""
        missing = [h for h in self.needs if h not in model.heads]
        if missing:
            raise ValueError(
                f"reward kind {self.kind!r} needs heads {missing} that model {model.name!r} "
                f"does not predict (it has {model.heads})"
            )

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest reward this declaration can return."""
        if self.kind in ("stream30", "listen_fraction"):
            return 0.0, 1.0
        terms = (self.w_complete, self.w_skip_30s, self.w_saved)
        return sum(min(0.0, w) for w in terms), sum(max(0.0, w) for w in terms)

    # ------------------------------------------------------------------ the two moments
    def provisional(
        self, predictions: Predictions, duration_ms: Int[ArrayLike, " n"]
    ) -> Float[Array, " n"]:
        """The model's expected final reward for each row, given only the impression."""
        p = predictions
        if self.kind == "stream30":
            return 1.0 - p.skip[:, 1]
        if self.kind == "listen_fraction":
            return expected_listen_fraction(p, duration_ms)
        return (
            self.w_complete * p.complete
            + self.w_skip_30s * p.skip[:, 1]
            + self.w_saved * self.p_save_given_complete * p.complete
        )

    def raw(self, outcomes: Outcomes) -> Float[Array, " n"]:
        """The reward computed from the outcome alone (no model), for every kind but denoised,
        where it is the linear reward."""
        o = outcomes
        xp = array_module(o.ms_played, o.duration_ms, o.reason_end, o.censored, o.saved)
        if self.kind == "stream30":
            return (xp.asarray(o.ms_played) >= SKIP_2_MS).astype(xp.float32)
        if self.kind == "listen_fraction":
            return listen_fraction(o.ms_played, o.duration_ms)
        done = completion_label(o.ms_played, o.duration_ms, o.reason_end).astype(xp.float32)
        skipped, _ = skip_labels(o.ms_played, o.duration_ms, o.reason_end, o.censored)
        saved = xp.asarray(o.saved).astype(xp.float32)
        return (
            xp.float32(self.w_complete) * done
            + xp.float32(self.w_skip_30s) * skipped[:, 1].astype(xp.float32)
            + xp.float32(self.w_saved) * saved
        )

    def final(self, predictions: Predictions | None, outcomes: Outcomes) -> Float[Array, " n"]:
        """The reward once the outcome is known.

        Args:
            predictions: what the model predicted at impression time (needed for ``denoised``
                and for censored rows; may be None for the other kinds if no row is censored,
                in which case censored rows keep their raw reward).
            outcomes: the joined outcomes.
        """
        raw = self.raw(outcomes)
        if predictions is None:
            if self.kind == "denoised":
                raise ValueError("the denoised reward needs the model's predictions")
            return raw
        prov = self.provisional(predictions, outcomes.duration_ms)
        value = raw
        if self.kind == "denoised":
            value = self.shrink * raw + (1.0 - self.shrink) * prov
        return jnp.where(jnp.asarray(outcomes.censored), prov, value)


def expected_listen_fraction(
    predictions: Predictions, duration_ms: Int[ArrayLike, " n"]
) -> Float[Array, " n"]:
    """E[fraction played] from the skip horizons, taking each bin's midpoint.

    Ends before 5 s count at 2.5 s, between 5 and 30 s at 17.5 s, between 30 s and the end at the
    midpoint of that span; completions count 1.
    """
    p = predictions
    d = jnp.asarray(duration_ms).astype(jnp.float32)
    edges = bin_edges_ms(duration_ms)
    p0 = jnp.clip(p.skip[:, 0], 0.0, 1.0)
    p1 = jnp.clip(p.skip[:, 1] - p.skip[:, 0], 0.0, 1.0)
    p2 = jnp.clip(p.skip[:, 2] - p.skip[:, 1], 0.0, 1.0)
    mid0 = edges[:, 0] / 2
    mid1 = (edges[:, 0] + edges[:, 1]) / 2
    mid2 = (edges[:, 1] + d) / 2
    frac = (p0 * mid0 + p1 * mid1 + p2 * mid2) / jnp.maximum(d, 1.0) + p.complete
    return jnp.clip(frac, 0.0, 1.0)
