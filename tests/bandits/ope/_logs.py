"""Tiny simulated loggers whose true policy values are known exactly (shared by the OPE tests)."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from bandits.ope import LoggedFeedback, LoggedSlates, SlateTargetProbs, TargetProbs

# P(reward = 1 | context c, action a) for 3 contexts and 4 actions.
Q = np.array([[0.2, 0.5, 0.7, 0.4], [0.6, 0.3, 0.2, 0.8], [0.5, 0.5, 0.1, 0.9]])
N_CTX, K = Q.shape


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


LOGGING = {
    "uniform": np.full((N_CTX, K), 1.0 / K),
    "softmax": _softmax(
        np.array([[1.0, 0.0, -0.5, 0.3], [0.0, 0.8, 0.2, -0.4], [0.3, 0.3, 0.9, -0.6]])
    ),
}
TARGETS = {
    "close": 0.7 * LOGGING["softmax"] + 0.3 * _softmax(4.0 * Q),
    "far": _softmax(8.0 * Q),
}


class Case(NamedTuple):
    log: LoggedFeedback
    target: TargetProbs
    truth: float


def single_action_log(n: int, seed: int, *, logging: str, target: str) -> Case:
    """``n`` rounds; contexts uniform over 3 types (one-hot ``context``), Bernoulli rewards."""
    rng = np.random.default_rng(seed)
    mu, pi = LOGGING[logging], TARGETS[target]
    c = rng.integers(0, N_CTX, n)
    a = (mu[c].cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    r = (rng.random(n) < Q[c, a]).astype(np.float64)
    log = LoggedFeedback(
        action=a.astype(np.int64),
        reward=r,
        propensity=mu[c, a],
        context=np.eye(N_CTX)[c],
    )
    truth = float((pi * Q).sum(axis=1).mean())
    return Case(log, TargetProbs(pi[c]), truth)


# Slates: S positions, each filled independently from K_SLATE candidates (a product policy).
S, K_SLATE = 2, 3
ITEM = np.array([[0.3, 0.5, 0.6], [0.2, 0.4, 0.5]])  # base click probability (position, item)
SLATE_LOGGING = np.full((S, K_SLATE), 1.0 / K_SLATE)
SLATE_TARGET = _softmax(np.array([[0.0, 1.0, 1.5], [1.2, 0.0, 0.8]]))


def slate_reward_probs(slate: np.ndarray, interacting: bool) -> np.ndarray:
    """``(n, S)`` click probabilities; with ``interacting`` position 2 depends on position 1's item."""
    p = ITEM[np.arange(S), slate].copy()
    if interacting:
        # A repeat at position 2 is punished; the transition 2 -> 0 is a hit.
        same = slate[:, 1] == slate[:, 0]
        hit = (slate[:, 0] == 2) & (slate[:, 1] == 0)
        p[:, 1] = np.where(same, 0.05, np.where(hit, 0.9, p[:, 1]))
    return p


def slate_truth(interacting: bool) -> float:
    total = 0.0
    for items in itertools.product(range(K_SLATE), repeat=S):
        slate = np.array([items])
        prob = float(np.prod(SLATE_TARGET[np.arange(S), items]))
        total += prob * float(slate_reward_probs(slate, interacting).sum())
    return total


def slate_log(
    n: int, seed: int, *, interacting: bool
) -> tuple[LoggedSlates, SlateTargetProbs, float]:
    rng = np.random.default_rng(seed)
    slate = np.stack(
        [(SLATE_LOGGING[pos].cumsum() > rng.random((n, 1))).argmax(axis=1) for pos in range(S)],
        axis=1,
    ).astype(np.int64)
    reward = (rng.random((n, S)) < slate_reward_probs(slate, interacting)).astype(np.float64)
    propensity = SLATE_LOGGING[np.arange(S), slate]
    log = LoggedSlates(slate=slate, reward=reward, propensity=propensity)
    target = SlateTargetProbs(np.broadcast_to(SLATE_TARGET, (n, S, K_SLATE)).copy())
    return log, target, slate_truth(interacting)
