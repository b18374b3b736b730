"""Contextual bandit policies as pure JAX functions, slate re-ranking, and off-policy evaluation.

A policy is ``Policy(init, score, rank, update, spec, prepare)``: pure functions over an explicit state
(a NamedTuple of arrays). A policy is built by calling its factory with its hyperparameters, the
way ``optax.adam(1e-3)`` builds an optimiser: ``bandits.linucb(alpha=1.0)``. The factories,
also found by name in :data:`bandits.registry.POLICIES` (``POLICIES["linucb"](alpha=1.0)``), are:

- ``linucb``, ``lin_ts``, ``squarecb``, ``epsilon_greedy``, ``softmax``: one shared ridge model
  over joint user x track features plus a hashed per-track bias (``bandits.linear``), so unseen
  tracks are scored from their features; forgetting via ``discount``; position-aware learning
  via ``position_bias``.
- ``logistic_ts``: logistic model for binary rewards, Laplace posterior.
- ``neural_linear``: optax-trained MLP embedding with a Bayesian linear head.
- ``disjoint_linucb``: one model per arm, for small fixed action sets.
- ``uniform``: the logging baseline.

Propensities are exact for all but the Thompson-sampling family (``lin_ts``, ``logistic_ts``,
``neural_linear``), where they are Monte Carlo estimates with standard error about
``sqrt(p (1 - p) / mc_samples)``; greedy policies (``linucb``, ``disjoint_linucb``) log 1.0.

How a caller (the daemon, the re-ranker, a replay) uses one::

    import jax, numpy as np
    import bandits
    from bandits import Feedback, pad, save, load

    policy = bandits.linucb(alpha=1.0)                # or bandits.POLICIES[name](**params)
    state = policy.init(d_user, d_track)              # e.g. 16, 16

    # Re-rank one request: pad the k candidates to a bucket so jit compiles once per bucket.
    cands, mask = pad(track_features, track_ids)       # (k, d_track) float32, (k,) int
    ranked = policy.rank(state, context, cands, mask,  # context: (d_user,) float32
                         key=jax.random.key(seed), slate_size=s)
    ranked.order       # (s,) int32 indices into the candidates, top first
    ranked.propensity  # (s,) P(order[j] at position j | order[:j]): log it on the impression

    # Many requests at once: jax.vmap(policy.rank, in_axes=(None, 0, 0, 0)) with keys split,
    # or jax.jit(policy.rank, static_argnames="slate_size") for one request at a time.
    # A server ranks from policy.prepare(state), derived once per loaded state: the same
    # slates and propensities (to float rounding), cheaper per request (for the linear
    # policies the covariance packed to its symmetric part, a quarter of the bytes).
    serving = policy.prepare(state)                   # never saved; update() takes the state
    ranked = policy.rank(serving, context, cands, mask, key=jax.random.key(seed), slate_size=s)

    # Learn: one row per shown item that has an outcome (pad rows with mask=False).
    fb = Feedback(
        context=ctx,           # (n, d_user) float32: the request's context
        features=feats,        # (n, d_track) float32: the shown item's features
        action=track_id,       # (n,) int32: the shown item's track id
        position=position,     # (n,) int32: its slate position, 0 = top
        reward=reward,         # (n,) float32: the composite reward
        propensity=prop,       # (n,) float32 in (0, 1]: Ranked.propensity of that choice
        mask=mask,             # (n,) bool: False for padding rows
    )
    state = policy.update(state, fb)

    blob = save(policy, state)                        # bytes: JSON header + npz, no pickle
    state = load(policy, blob, like=policy.init(d_user, d_track))

Linear policies (linucb, lin_ts, squarecb, epsilon_greedy, softmax) also expose
``bandits.linear.delta(state, feedback, id_ridge=...)`` and ``bandits.linear.merge(state, delta)``
so that several workers learn one policy by exchanging additive statistics.

Inputs are checked: shapes and dtypes always (also under jit/vmap), values (NaN/inf, empty
candidate sets, a slate longer than the valid candidates, propensities outside (0, 1]) when
called on concrete arrays; :func:`bandits.checks.check_request` and
:func:`bandits.checks.check_feedback` do the value checks for callers that jit themselves.

Off-policy estimators live in the subpackage ``bandits.ope`` (``import bandits.ope``); it is not
imported here, so the policies do not depend on it. Every estimator returns an
:class:`Estimate` (value, interval, rounds used and weight :class:`Diagnostics`).

Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import bandits
    >>> policy = bandits.linucb(alpha=1.0, n_ids=0)
    >>> policy.spec.name, policy.spec.params["alpha"]
    ('linucb', 1.0)
    >>> state = policy.init(2, 3)
    >>> cands, mask = bandits.pad(np.ones((5, 3), np.float32), np.arange(5))
    >>> ranked = policy.rank(state, jnp.ones(2), cands, mask, key=jax.random.key(0), slate_size=2)
    >>> ranked.order.shape, ranked.propensity.tolist()
    ((2,), [1.0, 1.0])
"""

from bandits.checks import check_feedback, check_request
from bandits.disjoint import disjoint_linucb
from bandits.epsilon_greedy import epsilon_greedy
from bandits.linucb import linucb
from bandits.logistic_ts import logistic_ts
from bandits.neural_linear import neural_linear
from bandits.policy import Policy, PolicySpec
from bandits.registry import POLICIES
from bandits.slates import pad
from bandits.softmax import softmax
from bandits.squarecb import squarecb
from bandits.state import StateFormatError, load, save
from bandits.thompson import lin_ts
from bandits.types import Candidates, Diagnostics, Estimate, Feedback, Ranked
from bandits.uniform import uniform

__all__ = [
    "POLICIES",
    "Candidates",
    "Diagnostics",
    "Estimate",
    "Feedback",
    "Policy",
    "PolicySpec",
    "Ranked",
    "StateFormatError",
    "check_feedback",
    "check_request",
    "disjoint_linucb",
    "epsilon_greedy",
    "lin_ts",
    "linucb",
    "load",
    "logistic_ts",
    "neural_linear",
    "pad",
    "save",
    "softmax",
    "squarecb",
    "uniform",
]
