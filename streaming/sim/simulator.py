"""A seeded simulator of listening sessions: the one source of synthetic traffic.

Why one long module: users, tracks, moods, slates and the hazard of skipping are one generative
model whose parts share their random streams; split, its seeds would no longer say what they do.

It feeds the demo, the tests and the benchmarks, and it knows the true expected reward of every
candidate, so regret and the true value of any policy are exact. Everything is numpy, seeded, and
vectorised over requests.

The world:

- users have observed profile features ``u`` (``d_user``) and a hidden session *mood* that makes
  skips come in runs (a skip lowers the mood, which decays back between requests);
- tracks have observed embeddings ``t`` (``d_track``), durations (log-normal, median about 3.5
  minutes), a popularity, and a hidden per-track quality, so the track id carries information the
  features do not;
- affinity ``a = scale * u' M_t t + pop_weight * z(popularity) + quality + bias + mood -
  position_penalty * position``. ``M_t`` is a fixed random matrix, or with ``drift > 0`` it rotates
  between two matrices as simulated time passes (tastes drift through the day), or with
  ``change_at_ms`` it is replaced by the second matrix at that moment (tastes change at once);
- a play walks through listening bins ``[0, 5 s)``, ``[5 s, 30 s)``, ``[30 s, 50 %)``,
  ``[50 %, 90 %)``, ``[90 %, 100 %)`` with a skip hazard per bin that falls with the affinity;
  surviving every bin is a completion (``trackdone``); a session can end mid-track (``logout``,
  censored: not a skip) and after any track (the rest of the slate is not heard);
- a save follows a completion with a small probability that rises with the affinity.

Marginals under the built-in logging policy (``encore simulate --describe`` prints them) are
tuned to sit near published music-streaming figures: about a quarter of plays skipped within
five seconds and about half before the end (Lamere, "The Skip", 2014, on 1 billion plays),
and a skip rate near one half as in the Music Streaming Sessions Dataset (Brost et al., 2019).
This is a simulator, not data: it covers what no public data set gives (true expected rewards,
counterfactual outcomes), and says so wherever it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

REASONS: tuple[str, ...] = ("trackdone", "fwdbtn", "backbtn", "endplay", "logout")
"""Codes of ``reason_end``, by index (``Plays.reason_end`` holds the index)."""
TRACKDONE, FWDBTN, BACKBTN, ENDPLAY, LOGOUT = range(5)

# Listening bins: lower edges; each bin's upper edge is the next lower edge.
BIN_EDGES_MS = (0, 5_000, 30_000)  # absolute edges, then fractions of the duration
BIN_FRACTIONS = (0.5, 0.9)
# Hazard intercepts per bin (logit of skipping in the bin at affinity 0) and slope on affinity.
_HAZ_INTERCEPT = np.array([-1.15, -1.25, -2.3, -2.8, -3.8])
_HAZ_SLOPE = np.array([1.0, 0.9, 0.7, 0.6, 0.4])


@dataclass(frozen=True)
class SimConfig:
    """The simulated world's size and behaviour. Durations are in milliseconds.

    Args:
        n_users: users in the world.
        n_tracks: tracks in the catalogue.
        d_user: observed user features.
        d_track: observed track features.
        n_candidates: candidates offered per request (``k``).
        drift: radians per simulated hour by which tastes rotate (0 = stationary).
        change_at_ms: simulated time (ms since ``start_ms``) at which the taste map is replaced
            by another, independent one; None: never (not with ``drift``).
        mood_weight: how strongly the hidden session mood moves the affinity.
        session_end_prob: probability that a session ends after any one track.
        logout_prob: probability that a play is cut off by a logout (censored).
        request_gap_ms: mean simulated gap between requests of the whole population.
        logging_temperature: temperature of the logging policy's softmax.
        seed: the world's seed; requests and plays use streams derived from it.
        start_ms: the simulated clock's start (event time of ms 0 of the simulation), so a
            simulation can continue a stream already in a topic.
    """

    n_users: int = 1000
    n_tracks: int = 2000
    d_user: int = 16
    d_track: int = 16
    n_candidates: int = 20
    drift: float = 0.0
    change_at_ms: int | None = None
    affinity_scale: float = 0.85
    pop_weight: float = 0.3
    quality_sd: float = 0.45
    bias: float = -1.2
    mood_weight: float = 1.0
    position_penalty: float = 0.12
    session_end_prob: float = 0.03
    logout_prob: float = 0.01
    request_gap_ms: int = 50
    logging_temperature: float = 0.5
    candidate_source: str = "uniform"
    recall_pool: int = 200
    recall_noise: float = 0.5
    seed: int = 0
    start_ms: int = 0

    def __post_init__(self) -> None:
        if self.start_ms < 0:
            raise ValueError(f"SimConfig.start_ms must be >= 0, got {self.start_ms}")
        if self.change_at_ms is not None and (self.change_at_ms < 0 or self.drift != 0.0):
            raise ValueError(
                "SimConfig.change_at_ms must be >= 0 and cannot be combined with drift, got "
                f"change_at_ms={self.change_at_ms}, drift={self.drift}"
            )
        for name in ("n_users", "n_tracks", "d_user", "d_track", "n_candidates", "request_gap_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SimConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_candidates > self.n_tracks:
            raise ValueError(
                f"SimConfig.n_candidates ({self.n_candidates}) exceeds n_tracks ({self.n_tracks})"
            )
        for name in ("session_end_prob", "logout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"SimConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.logging_temperature <= 0:
            raise ValueError("SimConfig.logging_temperature must be positive")
        if self.candidate_source not in ("uniform", "recall"):
            raise ValueError(
                f"SimConfig.candidate_source must be 'uniform' or 'recall', got {self.candidate_source!r}"
            )
        if self.candidate_source == "recall" and not (
            self.n_candidates <= self.recall_pool <= self.n_tracks
        ):
            raise ValueError("SimConfig.recall_pool must be in [n_candidates, n_tracks]")


class World(NamedTuple):
    """The fixed, seeded catalogue and population."""

    user_features: F32  # (n_users, d_user)
    track_features: F32  # (n_tracks, d_track)
    duration_ms: I64  # (n_tracks,)
    popularity: F64  # (n_tracks,) share of plays, sums to 1
    quality: F64  # (n_tracks,) hidden per-track effect on the affinity
    m0: F64  # (d_user, d_track) taste map at time 0
    m1: F64  # (d_user, d_track) the map tastes rotate towards when drift > 0


class Requests(NamedTuple):
    """A batch of ``n`` requests, each offering ``k`` candidates."""

    request_id: I64  # (n,) unique, increasing
    t_ms: I64  # (n,) event time
    user_id: I64  # (n,)
    context: F32  # (n, d_user) the user's observed features
    candidates: I64  # (n, k) track ids, distinct within a row
    candidate_features: F32  # (n, k, d_track)
    mood: F64  # (n,) the hidden session mood at request time (for exact expectations)


class Plays(NamedTuple):
    """What the listener did with each shown track. Every field is ``(n, s)``.

    ``heard`` is False for tracks after the session ended (no outcome event is emitted for them;
    their other fields are zero).
    """

    heard: B
    track_id: I64
    position: I64
    t_ms: I64  # when the play ended
    ms_played: I64
    duration_ms: I64
    reason_end: I8  # index into REASONS
    saved: B
    censored: B  # cut off by a logout: not a skip
    stream30: B  # ms_played >= 30 s
    prev_skipped: B  # the previous track in this session was skipped (< 30 s, not censored)
    p_stream30: F64  # the true probability of stream30 given everything before this play


class Slates(NamedTuple):
    """Slates chosen by the logging policy with the exact probability of each choice."""

    shown: I64  # (n, s) indices into the request's candidates, in order
    propensity: F64  # (n, s) P(choice at position j | choices before it)


def _sigmoid(x: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-x))


def _bin_bounds_ms(duration_ms: I64) -> F64:
    """Upper edge of every listening bin per track, shape ``(..., 5)``; last is the duration."""
    d = duration_ms.astype(np.float64)
    fixed = [np.minimum(float(e), d) for e in BIN_EDGES_MS[1:]]
    fracs = [np.maximum(d * f, fixed[-1]) for f in BIN_FRACTIONS]
    return np.stack([*fixed, *fracs, d], axis=-1)


def hazards(affinity: F64) -> F64:
    """Per-bin skip hazards for affinities of any shape; returns shape ``(..., 5)``."""
    return _sigmoid(_HAZ_INTERCEPT - _HAZ_SLOPE * affinity[..., None])


def p_stream30(affinity: F64) -> F64:
    """P(ms_played >= 30 s) from the affinity, ignoring censoring (exact under the model)."""
    h = hazards(affinity)
    return (1.0 - h[..., 0]) * (1.0 - h[..., 1])


class Simulator:
    """Seeded listening sessions. Requests and plays advance simulated time and session moods."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = cfg = config or SimConfig()
        root = np.random.default_rng(cfg.seed)
        world_rng, self._req_rng, self._play_rng = (
            np.random.default_rng(s)
            for s in root.bit_generator.seed_seq.spawn(3)  # type: ignore[attr-defined]
        )
        users = world_rng.normal(size=(cfg.n_users, cfg.d_user)) / np.sqrt(cfg.d_user)
        tracks = world_rng.normal(size=(cfg.n_tracks, cfg.d_track)) / np.sqrt(cfg.d_track)
        duration = np.exp(world_rng.normal(np.log(210_000.0), 0.35, size=cfg.n_tracks))
        duration = np.clip(duration, 40_000, 600_000).astype(np.int64)
        pop_logit = world_rng.normal(size=cfg.n_tracks) * 1.2
        popularity = np.exp(pop_logit) / np.exp(pop_logit).sum()
        quality = world_rng.normal(size=cfg.n_tracks) * cfg.quality_sd
        m0 = world_rng.normal(size=(cfg.d_user, cfg.d_track))
        m1 = world_rng.normal(size=(cfg.d_user, cfg.d_track))
        self.world = World(
            user_features=users.astype(np.float32),
            track_features=tracks.astype(np.float32),
            duration_ms=duration,
            popularity=popularity,
            quality=quality,
            m0=m0,
            m1=m1,
        )
        self._pop_z = (pop_logit - pop_logit.mean()) / pop_logit.std()
        self._mood = np.zeros(cfg.n_users)
        self._mood_t_ms = np.full(cfg.n_users, cfg.start_ms, dtype=np.int64)
        self._now_ms = np.int64(cfg.start_ms)
        self._next_id = np.int64(0)

    # ----------------------------------------------------------------------------- requests
    def requests(self, n: int) -> Requests:
        """Draw ``n`` requests: users, times and ``k`` distinct candidates each."""
        cfg, rng = self.config, self._req_rng
        gaps = rng.exponential(cfg.request_gap_ms, size=n)
        t_ms = self._now_ms + np.cumsum(gaps).astype(np.int64) + 1
        self._now_ms = t_ms[-1] if n else self._now_ms
        user_id = rng.integers(0, cfg.n_users, size=n)
        candidates = np.empty((n, cfg.n_candidates), dtype=np.int64)
        chunk = max(1, 4_000_000 // cfg.n_tracks)
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            keys = rng.random((m, cfg.n_tracks))
            if cfg.candidate_source == "recall":
                # A recall stage: the best `recall_pool` tracks by a noisy taste score, of which
                # n_candidates are offered at random (production candidates are already relevant).
                u = self.world.user_features[user_id[lo : lo + m]].astype(np.float64)
                noisy = (u @ self.world.m0) @ self.world.track_features.T.astype(np.float64)
                noisy = cfg.affinity_scale * noisy + cfg.pop_weight * self._pop_z
                noisy = noisy + rng.normal(scale=cfg.recall_noise, size=noisy.shape)
                pool = np.argpartition(-noisy, cfg.recall_pool - 1, axis=1)[:, : cfg.recall_pool]
                pick = np.argpartition(rng.random(pool.shape), cfg.n_candidates - 1, axis=1)
                candidates[lo : lo + m] = np.take_along_axis(
                    pool, pick[:, : cfg.n_candidates], axis=1
                )
            else:
                candidates[lo : lo + m] = np.argpartition(keys, cfg.n_candidates - 1, axis=1)[
                    :, : cfg.n_candidates
                ]
        request_id = self._next_id + np.arange(n, dtype=np.int64)
        self._next_id += n
        # Mood decays towards 0 with a half-life of one simulated minute since it was last set,
        # so it carries within a session and fades between them.
        elapsed = np.maximum(t_ms - self._mood_t_ms[user_id], 0)
        mood = self._mood[user_id] * np.power(0.5, elapsed / 60_000.0)
        return Requests(
            request_id=request_id,
            t_ms=t_ms,
            user_id=user_id,
            context=self.world.user_features[user_id],
            candidates=candidates,
            candidate_features=self.world.track_features[candidates],
            mood=mood,
        )

    def _taste_map(self, t_ms: I64) -> F64:
        """``(n, d_user, d_track)`` taste maps at the given times (one map when drift is 0)."""
        w = self.world
        if self.config.change_at_ms is not None:
            after = t_ms - self.config.start_ms >= self.config.change_at_ms
            if not after.any():
                return w.m0[None]
            return np.where(after[:, None, None], w.m1[None], w.m0[None])
        if self.config.drift == 0.0:
            return w.m0[None]
        angle = self.config.drift * t_ms.astype(np.float64) / 3_600_000.0
        return np.cos(angle)[:, None, None] * w.m0 + np.sin(angle)[:, None, None] * w.m1

    def affinity(self, req: Requests, *, with_mood: bool = True) -> F64:
        """``(n, k)`` affinity of every candidate at position 0."""
        cfg, w = self.config, self.world
        maps = self._taste_map(req.t_ms)
        u = req.context.astype(np.float64)
        t = req.candidate_features.astype(np.float64)
        if maps.shape[0] == 1:
            bil = np.einsum("ne,nke->nk", u @ maps[0], t)
        else:
            bil = np.einsum("ne,nke->nk", np.einsum("nd,nde->ne", u, maps), t)
        a = (
            cfg.affinity_scale * bil
            + cfg.pop_weight * self._pop_z[req.candidates]
            + w.quality[req.candidates]
            + cfg.bias
        )
        if with_mood:
            a = a + cfg.mood_weight * req.mood[:, None]
        return a

    def expected_reward(self, req: Requests) -> F64:
        """True ``(n, k)`` P(stream >= 30 s) of each candidate if shown at position 0."""
        return p_stream30(self.affinity(req))

    # ----------------------------------------------------------------------------- logging policy
    def logging_scores(self, req: Requests) -> F64:
        """The logging policy's ``(n, k)`` scores: popularity plus a weak taste signal."""
        a = self.affinity(req, with_mood=False)
        return 0.5 * self._pop_z[req.candidates] + 0.6 * a

    def logging_probs(self, req: Requests) -> F64:
        """``(n, k)`` probabilities with which the logging policy picks its first track."""
        z = self.logging_scores(req) / self.config.logging_temperature
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def log_slates(self, req: Requests, slate_size: int) -> Slates:
        """Sample slates from the logging policy (Plackett-Luce) with exact propensities."""
        k = req.candidates.shape[1]
        if not 1 <= slate_size <= k:
            raise ValueError(f"slate_size must be in [1, {k}], got {slate_size}")
        z = self.logging_scores(req) / self.config.logging_temperature
        # Gumbel-top-s sampling is exactly Plackett-Luce; propensities follow from the scores.
        g = z + self._req_rng.gumbel(size=z.shape)
        shown = np.argsort(-g, axis=1)[:, :slate_size]
        w = np.exp(z - z.max(axis=1, keepdims=True))
        remaining = w.sum(axis=1)
        prop = np.empty(shown.shape, dtype=np.float64)
        for j in range(slate_size):
            wj = np.take_along_axis(w, shown[:, j : j + 1], axis=1)[:, 0]
            prop[:, j] = wj / remaining
            remaining = remaining - wj
        return Slates(shown=shown.astype(np.int64), propensity=prop)

    # ----------------------------------------------------------------------------- plays
    def play(self, req: Requests, shown: I64) -> Plays:
        """Play each request's slate ``shown`` (indices into its candidates) in order.

        Plays are simulated position by position for all requests at once; the session mood of
        each user is updated by what happened, which the next ``requests`` call sees.
        """
        cfg, rng = self.config, self._play_rng
        n, s = shown.shape
        if n != req.candidates.shape[0]:
            raise ValueError(f"shown has {n} rows but there are {req.candidates.shape[0]} requests")
        base = np.take_along_axis(self.affinity(req, with_mood=False), shown, axis=1)
        track = np.take_along_axis(req.candidates, shown, axis=1)
        duration = self.world.duration_ms[track]
        out = {
            name: np.zeros((n, s), dtype=dt)
            for name, dt in (
                ("heard", bool),
                ("t_ms", np.int64),
                ("ms_played", np.int64),
                ("reason_end", np.int8),
                ("saved", bool),
                ("censored", bool),
                ("stream30", bool),
                ("prev_skipped", bool),
                ("p_stream30", np.float64),
            )
        }
        mood = req.mood.copy()
        alive = np.ones(n, dtype=bool)
        clock = req.t_ms.copy()
        prev_skipped = np.zeros(n, dtype=bool)
        bounds = _bin_bounds_ms(duration)  # (n, s, 5)
        for j in range(s):
            a = base[:, j] + cfg.mood_weight * mood - cfg.position_penalty * j
            h = hazards(a)  # (n, 5)
            # First bin in which the listener skips; 5 means they survive every bin.
            u = rng.random((n, 5))
            skips = u < h
            first = np.where(skips.any(axis=1), skips.argmax(axis=1), 5)
            lo = np.concatenate([np.zeros((n, 1)), bounds[:, j, :4]], axis=1)
            hi = bounds[:, j, :]
            idx = np.minimum(first, 4)
            pos_in_bin = rng.random(n)
            ms = lo[np.arange(n), idx] + pos_in_bin * (
                hi[np.arange(n), idx] - lo[np.arange(n), idx]
            )
            ms = np.where(first == 5, duration[:, j], ms).astype(np.int64)
            reason = np.where(
                first == 5, TRACKDONE, np.where(rng.random(n) < 0.9, FWDBTN, BACKBTN)
            ).astype(np.int8)
            # A logout cuts the play at a uniform point of what would have been heard.
            logout = rng.random(n) < cfg.logout_prob
            ms = np.where(logout, (ms * rng.random(n)).astype(np.int64), ms)
            reason = np.where(logout, np.int8(LOGOUT), reason)
            completed = reason == TRACKDONE
            saved = completed & (rng.random(n) < _sigmoid(a - 3.0))
            p30 = (1.0 - h[:, 0]) * (1.0 - h[:, 1])
            stream30 = ms >= 30_000
            skipped = ~stream30 & ~logout
            clock = clock + ms
            out["heard"][:, j] = alive
            out["t_ms"][:, j] = np.where(alive, clock, 0)
            out["ms_played"][:, j] = np.where(alive, ms, 0)
            out["reason_end"][:, j] = np.where(alive, reason, 0)
            out["saved"][:, j] = alive & saved
            out["censored"][:, j] = alive & logout
            out["stream30"][:, j] = alive & stream30
            out["prev_skipped"][:, j] = alive & prev_skipped
            out["p_stream30"][:, j] = np.where(alive, p30, 0.0)
            # Skips come in runs: a skip lowers the mood; a stream lifts it a little.
            mood = np.where(alive & skipped, mood - 0.4, mood)
            mood = np.where(alive & stream30, mood + 0.2, mood)
            mood = np.clip(mood, -2.0, 1.0)
            prev_skipped = skipped
            ended = logout | (rng.random(n) < cfg.session_end_prob)
            alive = alive & ~ended
        # Write moods back (the last request of a user in the batch wins, as time moves forward).
        order = np.argsort(req.t_ms, kind="stable")
        self._mood[req.user_id[order]] = mood[order]
        self._mood_t_ms[req.user_id[order]] = clock[order]
        return Plays(
            heard=out["heard"],
            track_id=np.where(out["heard"], track, 0),
            position=np.broadcast_to(np.arange(s, dtype=np.int64), (n, s)).copy(),
            t_ms=out["t_ms"],
            ms_played=out["ms_played"],
            duration_ms=np.where(out["heard"], duration, 0),
            reason_end=out["reason_end"],
            saved=out["saved"],
            censored=out["censored"],
            stream30=out["stream30"],
            prev_skipped=out["prev_skipped"],
            p_stream30=out["p_stream30"],
        )


def describe(sim: Simulator, *, n_requests: int = 20_000, slate_size: int = 5) -> dict[str, float]:
    """Marginals of plays under the logging policy, next to the random and oracle rewards."""
    req = sim.requests(n_requests)
    er = sim.expected_reward(req)
    slates = sim.log_slates(req, slate_size)
    plays = sim.play(req, slates.shown)
    heard = plays.heard
    n_heard = heard.sum()
    not_censored = heard & ~plays.censored
    frac = plays.ms_played / np.maximum(plays.duration_ms, 1)
    return {
        "plays": float(n_heard),
        "skip_rate_5s": float(
            (not_censored & (plays.ms_played < 5_000)).sum() / not_censored.sum()
        ),
        "skip_rate_30s": float((not_censored & ~plays.stream30).sum() / not_censored.sum()),
        "skip_before_end_rate": float(
            (not_censored & (plays.reason_end != TRACKDONE)).sum() / not_censored.sum()
        ),
        "completion_rate": float((plays.reason_end[heard] == TRACKDONE).mean()),
        "save_rate": float(plays.saved[heard].mean()),
        "censored_rate": float(plays.censored[heard].mean()),
        "mean_listen_fraction": float(frac[heard].mean()),
        "mean_tracks_heard_per_slate": float(heard.sum(axis=1).mean()),
        "reward_random_top1": float(er.mean()),
        "reward_logging_top1": float((sim.logging_probs(req) * er).sum(axis=1).mean()),
        "reward_oracle_top1": float(er.max(axis=1).mean()),
    }
