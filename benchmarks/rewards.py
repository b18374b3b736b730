"""Reward models on simulated plays: log loss, AUC, ECE and update throughput vs River and sklearn;
and what a model-based (denoised) reward does to a bandit's regret.

Run: ``/tmp/venv/bin/python -m benchmarks rewards [--quick] --out /tmp/bench-rewards``.

Part 1 (calibration and throughput). One seeded stream of simulated plays under the logging
policy (1,000,000 plays; quick: 20,000). The first 90 % is the training stream: every online
learner (the encore models and River's logistic regression) sees it once, in order, predicting
each batch before learning from it (prequential). scikit-learn's ``LogisticRegression`` is fitted
offline on the most recent training rows (at most 400,000: its sparse design matrix is the memory
limit). All are then scored on the same held-out last 10 % on P(skip before 30 s) (skip_2) and
P(complete). Every system gets the same features: user, track, user x track outer product,
position one-hot, and the track id (one-hot for River and sklearn, a learned per-track table for
encore); the session model also gets the listener's last 8 plays. Throughput counts only the
update calls (River: ``learn_one`` per play, and ``learn_many`` on the same batches without the
track id, which ``learn_many`` cannot take sparsely); encore updates padded batches of 1,024 from
numpy arrays, host-to-device conversion included (one call per chunk of ~920 plays, the same
chunks River sees). Every encore update is compiled once before timing (one padded shape, so no
retrace per batch). The "averaged" rows serve the Polyak-Ruppert average of the online iterates
(``average=0.99``, :func:`rewards.model.make_update`); the plain rows serve the last iterate.

Part 2 (denoised reward). A numpy LinUCB picks 1 of 20 candidates per request; its reward is
either the raw 30 s stream (a noisy 0/1) or the survival model's expected P(stream >= 30 s) for
the track it played (the ``denoised`` composite, ``shrink`` 0 and 0.5), with the reward model
pre-trained on logged plays and updated online. Regret is against the simulator's true
expected reward. The reward model runs at one padded batch shape (1,024 rows) throughout, so
each of its functions compiles once.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

import rewards as R
from benchmarks._runner import colour, fmt, rate, ratio
from rewards.calibration import (
    ReliabilityTable,
    head_labels,
    prediction_columns,
    reliability_table,
    score,
)
from rewards.model import RewardModel
from rewards.session import session_model
from rewards.survival import survival_model
from streaming.evaluate.reward_models import SimStream, concat_outcomes
from streaming.sim.simulator import SimConfig, Simulator

BATCH = 1024
REQUESTS_PER_CHUNK = 200  # about 920 heard plays: fits a padded batch of 1,024
N_ID_BUCKETS = 2048
TARGETS = {"skip_2": 1, "complete": 3}  # head -> column of calibration.HEADS


AVERAGE = 0.99  # iterate averaging of the "averaged" rows (about the last 100 updates)
MIN_BIN_PLAYS = 30  # the reliability plot draws a bin's observed frequency from this many plays


def _encore_models() -> list[tuple[str, RewardModel, str]]:
    ids = "features + track id"
    history = ids + " + last 8 plays"
    return [
        ("encore skip (direct multi-head)", R.skip_model(n_id_buckets=N_ID_BUCKETS), ids),
        ("encore completion (direct)", R.completion_model(n_id_buckets=N_ID_BUCKETS), ids),
        ("encore survival (hazard)", survival_model(n_id_buckets=N_ID_BUCKETS), ids),
        (
            f"encore survival (hazard, averaged {AVERAGE})",
            survival_model(n_id_buckets=N_ID_BUCKETS, average=AVERAGE),
            ids,
        ),
        ("encore session (GRU + hazard)", session_model(n_id_buckets=N_ID_BUCKETS), history),
        (
            f"encore session (GRU + hazard, averaged {AVERAGE})",
            session_model(n_id_buckets=N_ID_BUCKETS, average=AVERAGE),
            history,
        ),
    ]


def _compilations(model: RewardModel) -> int:
    """Entries in the jit cache of ``model.update`` (-1 if jax does not say)."""
    size = getattr(model.update, "_cache_size", None)
    return int(size()) if callable(size) else -1


def _river_dicts(x: np.ndarray, track: np.ndarray, names: list[str]) -> list[dict[str, float]]:
    rows = []
    for row, t in zip(x.tolist(), track.tolist(), strict=True):
        d = dict(zip(names, row, strict=True))
        d[f"track={t}"] = 1.0
        rows.append(d)
    return rows


def _predict_all(model: RewardModel, state: R.ModelState, o: R.Outcomes) -> np.ndarray:
    """``(n, 4)`` predictions in padded chunks of ``BATCH`` (one compiled shape)."""
    n = int(o.mask.size)
    out = [
        prediction_columns(
            model.predict(state, R.pad(R.take(o, slice(i, i + BATCH)), BATCH).inputs)
        )
        for i in range(0, n, BATCH)
    ]
    return np.concatenate(out)[:n]


def _sparse_design(o: R.Outcomes) -> Any:
    import scipy.sparse as sp

    x = sp.csr_matrix(np.asarray(o.features, np.float32))
    track = np.asarray(o.track_id)
    onehot = sp.csr_matrix(
        (np.ones(track.size, np.float32), (np.arange(track.size), track)),
        shape=(track.size, N_ID_BUCKETS),
    )
    return sp.hstack([x, onehot], format="csr")


def calibration_part(ctx: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        from river import linear_model
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:  # the peers are the point of this suite
        raise RuntimeError(f"benchmarks.rewards needs river and scikit-learn: {err}") from err
    import pandas as pd

    n_plays = 20_000 if ctx.quick else 1_000_000
    n_train = int(n_plays * 0.9)
    sk_max = 400_000
    stream = SimStream(SimConfig(seed=0))
    models = _encore_models()
    d = R.n_interaction_features(16, 16)
    key = jax.random.key(0)
    states = [m.init(key, d) for _, m, _ in models]
    # Compile every update before timing: an all-padding batch takes no step.
    warm = stream.next(REQUESTS_PER_CHUNK).outcomes
    warm = R.pad(warm._replace(mask=np.zeros(warm.mask.size, bool)), BATCH)
    for i, (_, m, _) in enumerate(models):
        states[i], _ = m.update(states[i], warm)
        m.predict(states[i], warm.inputs)
    compiled_before = [_compilations(m) for _, m, _ in models]
    update_s = [0.0] * len(models)
    preq: list[list[np.ndarray]] = [[] for _ in models]
    names = [f"f{i}" for i in range(d)]
    river = {h: linear_model.LogisticRegression() for h in TARGETS}
    river_batched = {h: linear_model.LogisticRegression() for h in TARGETS}
    river_s = dict.fromkeys(TARGETS, 0.0)
    river_batched_s = dict.fromkeys(TARGETS, 0.0)
    river_preq: dict[str, list[float]] = {h: [] for h in TARGETS}
    river_rows = dict.fromkeys(TARGETS, 0)
    recent: list[R.Outcomes] = []  # the last <= sk_max training plays, for sklearn
    labels_train: list[tuple[np.ndarray, np.ndarray]] = []
    n_train_rows = 0
    test: list[R.Outcomes] = []
    n_seen = 0
    while n_seen < n_plays:
        o = stream.next(REQUESTS_PER_CHUNK).outcomes
        n_seen += int(o.mask.size)
        if n_seen > n_train:
            test.append(o)
            continue
        recent.append(o)
        n_train_rows += int(o.mask.size)
        while sum(int(r.mask.size) for r in recent[1:]) >= sk_max:
            recent.pop(0)
        padded = R.pad(o, BATCH)
        for i, (_, m, _) in enumerate(models):
            preq[i].append(prediction_columns(m.predict(states[i], padded.inputs))[: o.mask.size])
            t0 = time.perf_counter()
            states[i], _ = m.update(states[i], padded)
            jax.block_until_ready(states[i])
            update_s[i] += time.perf_counter() - t0
        y, k = head_labels(o)
        labels_train.append((y, k))
        dicts = _river_dicts(np.asarray(o.features), np.asarray(o.track_id), names)
        frame = pd.DataFrame(np.asarray(o.features), columns=names)
        for h, col in TARGETS.items():
            rows = np.flatnonzero(k[:, col])
            model = river[h]
            river_preq[h].extend(model.predict_proba_one(dicts[r]).get(True, 0.5) for r in rows)
            t0 = time.perf_counter()
            for r in rows:
                model.learn_one(dicts[r], bool(y[r, col]))
            river_s[h] += time.perf_counter() - t0
            river_rows[h] += rows.size
            t0 = time.perf_counter()
            river_batched[h].learn_many(frame.iloc[rows], pd.Series(y[rows, col]))
            river_batched_s[h] += time.perf_counter() - t0
    retraced = {
        name: _compilations(m) - before
        for (name, m, _), before in zip(models, compiled_before, strict=True)
    }
    held = concat_outcomes(test)
    y_test, k_test = head_labels(held)
    y_train = np.concatenate([y for y, _ in labels_train])
    k_train = np.concatenate([k for _, k in labels_train])

    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, ReliabilityTable]] = {}  # target -> system -> table
    # encore, scored on the held-out plays with the state after the training stream
    for i, (name, m, given) in enumerate(models):
        cols = _predict_all(m, states[i], held)
        pq = np.concatenate(preq[i])
        for h, col in TARGETS.items():
            if np.all(np.isnan(cols[:, col])):
                continue
            use = k_test[:, col]
            s = score(cols[use, col], y_test[use, col])
            pu = k_train[:, col]
            rows.append(
                {
                    "system": name,
                    "given": given,
                    "target": h,
                    "log_loss": s.log_loss,
                    "auc": s.auc,
                    "ece": s.ece,
                    "prequential_log_loss": score(pq[pu, col], y_train[pu, col]).log_loss,
                    "test_plays": s.n,
                    "update_plays_per_s": rate(n_train_rows, update_s[i]),
                    "update_batch": BATCH,
                }
            )
            curves.setdefault(h, {})[name] = reliability_table(cols[use, col], y_test[use, col])
    # River, online, same stream
    x_test = np.asarray(held.features)
    test_dicts = _river_dicts(x_test, np.asarray(held.track_id), names)
    test_frame = pd.DataFrame(x_test, columns=names)
    for h, col in TARGETS.items():
        use = np.flatnonzero(k_test[:, col])
        p = np.array([river[h].predict_proba_one(test_dicts[r]).get(True, 0.5) for r in use])
        s = score(p, y_test[use, col])
        pu = k_train[:, col]
        rows.append(
            {
                "system": "river logistic (learn_one)",
                "given": "features + track id (one-hot)",
                "target": h,
                "log_loss": s.log_loss,
                "auc": s.auc,
                "ece": s.ece,
                "prequential_log_loss": score(np.array(river_preq[h]), y_train[pu, col]).log_loss,
                "test_plays": s.n,
                "update_plays_per_s": rate(river_rows[h], river_s[h]),
            }
        )
        pb = river_batched[h].predict_proba_many(test_frame.iloc[use])[True].to_numpy()
        sb = score(np.clip(pb, 0, 1), y_test[use, col])
        rows.append(
            {
                "system": "river logistic (learn_many, batches of ~920)",
                "given": "features, no track id",
                "target": h,
                "log_loss": sb.log_loss,
                "auc": sb.auc,
                "ece": sb.ece,
                "test_plays": sb.n,
                "update_plays_per_s": rate(river_rows[h], river_batched_s[h]),
            }
        )
        curves.setdefault(h, {})["river logistic (learn_one)"] = reliability_table(
            p, y_test[use, col]
        )
    # scikit-learn, offline on the most recent training rows
    recent_all = concat_outcomes(recent)
    recent_all = R.take(recent_all, slice(max(0, int(recent_all.mask.size) - sk_max), None))
    y_r, k_r = head_labels(recent_all)
    design = _sparse_design(recent_all)
    design_test = _sparse_design(held)
    for h, col in TARGETS.items():
        use_r = np.flatnonzero(k_r[:, col])
        t0 = time.perf_counter()
        lr = LogisticRegression(max_iter=300).fit(design[use_r], y_r[use_r, col])
        fit_s = time.perf_counter() - t0
        use = np.flatnonzero(k_test[:, col])
        p = lr.predict_proba(design_test[use])[:, 1]
        s = score(p, y_test[use, col])
        rows.append(
            {
                "system": f"sklearn LogisticRegression (offline, last {use_r.size:,} plays)",
                "given": "features + track id (one-hot)",
                "target": h,
                "log_loss": s.log_loss,
                "auc": s.auc,
                "ece": s.ece,
                "test_plays": s.n,
                "fit_plays_per_s": rate(use_r.size, fit_s),
            }
        )
        curves.setdefault(h, {})["sklearn LogisticRegression (offline)"] = reliability_table(
            p, y_test[use, col]
        )
    info = {"n_train": n_train_rows, "n_test": int(held.mask.size), "retraced": retraced}
    return rows, {"curves": curves, **info}


# ----------------------------------------------------------------------------- part 2
class _LinUCB:
    """A tiny numpy LinUCB over candidate features (benchmark only; rewards must not import
    bandits)."""

    def __init__(self, d: int, alpha: float, ridge: float = 1.0) -> None:
        self.a = np.eye(d) * ridge
        self.b = np.zeros(d)
        self.alpha = alpha

    def choose(self, x: np.ndarray) -> np.ndarray:  # x: (n, k, d)
        a_inv = np.linalg.inv(self.a)
        theta = a_inv @ self.b
        mean = x @ theta
        flat = x.reshape(-1, x.shape[-1])  # one (n k, d) x (d, d) product
        width = np.sqrt(np.maximum(np.sum((flat @ a_inv) * flat, axis=-1), 0.0))
        return np.argmax(mean + self.alpha * width.reshape(mean.shape), axis=1)

    def update(self, x: np.ndarray, r: np.ndarray) -> None:  # x: (n, d), r: (n,)
        self.a += x.T @ x
        self.b += x.T @ r


def _candidate_features(sim: Simulator, req: Any) -> np.ndarray:
    n, k = req.candidates.shape
    u = np.repeat(req.context, k, axis=0)
    t = req.candidate_features.reshape(n * k, -1)
    x = R.interaction_features(u, t, np.zeros(n * k, np.int64))
    return x.reshape(n, k, -1)


def _p_skip_2(model: RewardModel, state: R.ModelState, inputs: R.Inputs) -> np.ndarray:
    """``(n,)`` P(skip before 30 s) for ``inputs``, predicted in chunks padded to ``BATCH``."""
    n = int(np.shape(inputs.features)[0])
    out: list[np.ndarray] = []
    for lo in range(0, n, BATCH):
        rows = min(BATCH, n - lo)
        chunk = R.Inputs._make(
            None
            if a is None
            else np.pad(
                np.asarray(a)[lo : lo + rows],
                [(0, BATCH - rows)] + [(0, 0)] * (np.ndim(a) - 1),
            )
            for a in inputs
        )
        out.append(np.asarray(model.predict(state, chunk).skip[:rows, 1]))
    return np.concatenate(out)


def regret_part(ctx: Any) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    rounds = 1_000 if ctx.quick else 40_000
    per_batch = 100
    pretrain_plays = 10_000 if ctx.quick else 200_000
    key = jax.random.key(0)
    # The reward model, pre-trained on logged plays of the same world (logging policy).
    model = survival_model(n_id_buckets=N_ID_BUCKETS)
    d = R.n_interaction_features(16, 16)
    base_state = model.init(key, d)
    logged = SimStream(SimConfig(seed=0))
    n = 0
    while n < pretrain_plays:
        # without the listening history (this model does not read it), as the rounds below
        o = logged.next(REQUESTS_PER_CHUNK).outcomes._replace(history=None)
        n += int(o.mask.size)
        base_state, _ = model.update(base_state, R.pad(o, BATCH))
    arms: list[tuple[str, R.CompositeReward | None]] = [
        ("LinUCB on raw stream30 reward", R.CompositeReward(kind="stream30")),
        (
            "LinUCB on denoised reward (model only, shrink 0)",
            R.CompositeReward(kind="denoised", w_complete=0.0, w_skip_30s=-1.0, w_saved=0.0),
        ),
        (
            "LinUCB on denoised reward (shrink 0.5)",
            R.CompositeReward(
                kind="denoised", w_complete=0.0, w_skip_30s=-1.0, w_saved=0.0, shrink=0.5
            ),
        ),
        ("greedy on the reward model alone (no bandit)", None),
    ]
    rows: list[dict[str, Any]] = []
    curves: dict[str, np.ndarray] = {}
    for name, reward in arms:
        sim = Simulator(SimConfig(seed=0))
        sim.requests(1)  # same stream position for every arm
        bandit = _LinUCB(d, alpha=0.5)
        state = base_state
        regret = np.zeros(rounds)
        got = np.zeros(rounds)
        for lo in range(0, rounds, per_batch):
            req = sim.requests(per_batch)
            x = _candidate_features(sim, req)
            k = x.shape[1]
            if reward is None:
                inputs = R.Inputs(
                    x.reshape(per_batch * k, -1),
                    sim.world.duration_ms[req.candidates].reshape(-1),
                    req.candidates.reshape(-1),
                )
                skip_2 = _p_skip_2(model, state, inputs)
                choice = np.argmax((1.0 - skip_2).reshape(per_batch, k), axis=1)
            else:
                choice = bandit.choose(x)
            true_p = sim.expected_reward(req)  # (n, k) at the request's mood
            plays = sim.play(req, choice[:, None])
            rows_ix = np.arange(per_batch)
            xs = x[rows_ix, choice]
            track = req.candidates[rows_ix, choice]
            o = R.Outcomes(
                features=xs,
                ms_played=plays.ms_played[:, 0],
                duration_ms=plays.duration_ms[:, 0],
                reason_end=plays.reason_end[:, 0],
                saved=plays.saved[:, 0],
                position=np.zeros(per_batch, np.int32),
                censored=plays.censored[:, 0],
                mask=np.ones(per_batch, bool),
                track_id=track,
            )
            padded = R.pad(o, BATCH)
            pred = model.predict(state, padded.inputs)  # made at impression time
            if reward is not None:
                r = np.asarray(reward.final(pred, padded), np.float64)[:per_batch]
                if reward.kind == "denoised":
                    r = r + 1.0  # -P(skip_2) + 1 = P(stream30); raw part: 1 - skipped
                bandit.update(xs.astype(np.float64), r)
            state, _ = model.update(state, padded)
            regret[lo : lo + per_batch] = true_p.max(axis=1) - true_p[rows_ix, choice]
            got[lo : lo + per_batch] = true_p[rows_ix, choice]
        half = rounds // 2
        rows.append(
            {
                "system": name,
                "given": "LinUCB: user, track, user x track (no track id)",
                "target": "P(stream >= 30 s)",
                "rounds": rounds,
                "cum_regret": float(regret.sum()),
                "avg_true_reward_second_half": float(got[half:].mean()),
            }
        )
        curves[name] = np.cumsum(regret)
    return rows, curves


def _same_points(x: np.ndarray, y: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> bool:
    """Whether ``(x, y)`` lies on ``(x0, y0)`` to within 0.001 (a plot cannot tell them apart)."""
    return x.shape == x0.shape and bool(
        np.allclose(x, x0, rtol=0, atol=1e-3) and np.allclose(y, y0, rtol=0, atol=1e-3)
    )


def _draw_reliability(fig: Any, curves: dict[str, dict[str, ReliabilityTable]]) -> None:
    """Per target, observed frequency against mean prediction for every system's bins with at
    least ``MIN_BIN_PLAYS`` plays (fewer cannot place a frequency), over a strip of plays per
    bin; a system keeps its colour (``_runner.colour``) in both panels."""
    grid = fig.add_gridspec(2, max(len(curves), 1), height_ratios=(4, 1))
    first: Any = None
    for j, (target, tables) in enumerate(curves.items()):
        panel = fig.add_subplot(grid[0, j], sharey=first)
        strip = fig.add_subplot(grid[1, j], sharex=panel)
        first = first or panel
        panel.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
        drawn: list[tuple[np.ndarray, np.ndarray]] = []
        for system, t in tables.items():
            used = t.counts >= MIN_BIN_PLAYS
            x, y = t.mean_predicted[used], t.fraction_positive[used]
            # a line that coincides with one drawn before it is dashed, so both stay visible
            again = any(_same_points(x, y, a, b) for a, b in drawn)
            drawn.append((x, y))
            panel.plot(
                x,
                y,
                marker="o",
                ms=5 if again else 3,
                mfc="none" if again else colour(system),
                lw=1.5 if again else 1,
                ls=(0, (3, 3)) if again else "-",
                color=colour(system),
                label=system,
            )
            edges = np.append(t.lower, t.upper[-1:])
            strip.stairs(np.maximum(t.counts, 0.5), edges, baseline=0.5, color=colour(system), lw=1)
        strip.axhline(MIN_BIN_PLAYS, color="grey", lw=0.8, ls=":")
        panel.set_xlim(0.0, 1.0)
        panel.set_ylim(0.0, 1.0)
        panel.set_title(f"P({target}) on held-out plays")
        panel.tick_params(labelbottom=False)
        panel.grid(alpha=0.3)
        strip.set_yscale("log")
        strip.set_xlabel("mean predicted probability (bin)")
        strip.grid(alpha=0.3)
        if j == 0:
            panel.set_ylabel("observed frequency")
            strip.set_ylabel("plays per bin")


def run(ctx: Any) -> list[dict[str, Any]]:
    rows, info = calibration_part(ctx)
    ctx.notes.append(
        f"part 1: {info['n_train']:,} training plays (one online pass), {info['n_test']:,} "
        "held-out plays; log loss / AUC / ECE (15 equal-width bins) on the held-out plays."
    )
    ctx.notes.append(
        f"encore updates: one call per chunk, padded to {BATCH} rows; new compilations of "
        f"update during the timed online pass: {info['retraced']}"
    )
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["system"].startswith("encore") and (
            r["target"] not in best or r["log_loss"] < best[r["target"]]["log_loss"]
        ):
            best[r["target"]] = r
    for h, r in best.items():
        others = [o for o in rows if o["target"] == h and not o["system"].startswith("encore")]
        floor = min(o["log_loss"] for o in others)
        ctx.notes.append(
            f"{h}: best encore model {r['system']} log loss {r['log_loss']:.4f} vs best baseline "
            f"{floor:.4f} ({'lower' if r['log_loss'] < floor else 'NOT lower'}); "
            f"ECE {r['ece']:.4f} ({'<' if r['ece'] < 0.01 else 'NOT <'} 0.01)"
        )
    river_one = [r for r in rows if r["system"] == "river logistic (learn_one)"]
    river_many = [r for r in rows if r["system"].startswith("river logistic (learn_many")]
    for r in rows:
        if r["system"].startswith("encore") and r["target"] == "complete":
            rate_ = r["update_plays_per_s"]
            ctx.notes.append(
                f"{r['system']}: {fmt(r['update_plays_per_s'], ',.0f')} plays/s updating every "
                "head at once = "
                f"{fmt(ratio(rate_, river_one[0]['update_plays_per_s']), '.1f', 'x')} "
                "River learn_one, "
                f"{fmt(ratio(rate_, river_many[0]['update_plays_per_s']), '.1f', 'x')} "
                "River learn_many (each River model learns one target)"
            )
    curves = info["curves"]

    def draw_reliability(fig: Any) -> None:
        _draw_reliability(fig, {h: curves[h] for h in TARGETS if h in curves})

    ctx.save_figure("rewards_reliability", draw_reliability, size=(11.0, 5.5))
    ctx.notes.append(
        f"Reliability plot: one panel per target, a point per bin of {MIN_BIN_PLAYS} or more "
        "held-out plays (the strip under each panel counts the plays of every bin); a dashed "
        "line with open markers lies on a line drawn before it (within 0.001: the same "
        "predictions, as far as the plot can show)."
    )
    regret_rows, regret_curves = regret_part(ctx)
    rows.extend(regret_rows)

    def draw_regret(ax: Any) -> None:
        for label, c in regret_curves.items():
            ax.plot(np.arange(1, c.size + 1), c, label=label, color=colour(label))
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative regret (true P(stream >= 30 s))")
        ax.set_title(f"Model-based rewards for a bandit, {regret_rows[0]['rounds']:,} rounds")
        ax.grid(alpha=0.3)

    ctx.save_plot("rewards_denoised_regret", draw_regret)
    raw = regret_rows[0]["cum_regret"]
    for r in regret_rows[1:]:
        ctx.notes.append(
            f"{r['system']}: cumulative regret {r['cum_regret']:.1f} vs "
            f"{raw:.1f} on the raw reward ({100 * (r['cum_regret'] / raw - 1):+.1f} %)"
        )
    return rows
