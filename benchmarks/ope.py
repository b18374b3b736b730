"""Off-policy evaluation: accuracy and intervals on the simulator, the Open Bandit Dataset, speed.

Three parts, each a block of rows (``part`` column):

(a) ``simulator``: bias, RMSE and interval coverage of every single-action estimator over many
    seeded logs from ``streaming.sim.simulator`` (100 logs; 10 with ``--quick``), for a target close
    to and far from the logging policy; ``slates``: the slate estimators on sequential slates
    whose rewards interact across positions (and, as a control, on additive ones), with exact
    true values by enumeration.
(b) ``obd``: the Open Bandit Dataset sample carried in the ``obp`` 0.5.7 source distribution,
    fetched with ``pip download`` on the first run and kept in encore's cache folder (nothing is
    committed). The dataset paper's
    protocol: estimate the Bernoulli-TS policy's click rate from the uniform-random log (BTS's
    action distribution by Monte Carlo from its production prior, as obp's
    ``compute_batch_action_dist``), compare with the on-policy click rate of the BTS log,
    relative error per estimator and campaign (Saito et al., "Open Bandit Dataset and
    Pipeline", NeurIPS Datasets and Benchmarks 2021).
(c) ``speed``: 10 million logged rows (1 million with ``--quick``), all single-action estimators
    with bootstrap intervals plus the cross-fitted reward model, timed in a fresh subprocess so
    its peak memory is its own.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bandits.ope import (
    ESTIMATORS,
    SLATE_ESTIMATORS,
    Estimate,
    LoggedFeedback,
    LoggedSlates,
    SlateTargetProbs,
    TargetProbs,
    cross_fit_slate_q_hat,
    estimate_all,
    with_q_hat,
)
from benchmarks._runner import Context, colour, rate

Row = dict[str, Any]
GOAL_ESTIMATORS = ("ips", "snips", "dr")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sample(prob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (prob.cumsum(axis=-1) > rng.random((*prob.shape[:-1], 1))).argmax(axis=-1)


def coverage_se_pct(hits: int, n: int) -> float:
    """Monte Carlo standard error, in percentage points, of a coverage of ``hits`` in ``n``
    logs: the Agresti-Coull form (two hits and two misses added), which stays honest at 0 % and
    100 % (the plain binomial form says 0 there, as if ``n`` logs settled it exactly)."""
    p = (hits + 2.0) / (n + 4.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / (n + 4.0))


def _summary(errors: list[float], hits: list[bool], widths: list[float]) -> dict[str, float]:
    e = np.asarray(errors)
    return {
        "bias": float(e.mean()),
        "rmse": float(np.sqrt(np.mean(e * e))),
        "coverage_pct": 100.0 * float(np.mean(hits)),
        "coverage_mc_se_pct": coverage_se_pct(sum(hits), len(hits)),
        "mean_width": float(np.mean(widths)),
    }


# ----------------------------------------------------------------------------- (a) simulator


def simulator_rows(ctx: Context) -> list[Row]:
    from streaming.sim.simulator import SimConfig, Simulator

    n_logs, n = (10, 3_000) if ctx.quick else (100, 5_000)
    # No session mood: rounds are then independent given the world, so "the policy's value" is
    # one population number that every log estimates (with moods, consecutive logs see
    # different traffic and only a per-log value exists; that one is reported too).
    sim = Simulator(SimConfig(seed=0, mood_weight=0.0))

    def targets_of(req: Any, mu: np.ndarray) -> dict[str, np.ndarray]:
        far = _softmax(sim.affinity(req, with_mood=False) / 0.3)
        return {"close": 0.8 * mu + 0.2 * far, "far": far}

    population: dict[str, list[float]] = defaultdict(list)
    for _ in range(10 if ctx.quick else 40):
        req = sim.requests(10_000)
        q, mu = sim.expected_reward(req), sim.logging_probs(req)
        for tname, pi in targets_of(req, mu).items():
            population[tname].append(float((pi * q).sum(axis=1).mean()))
    rng = np.random.default_rng(1)
    ests = {name: ESTIMATORS[name]() for name in ESTIMATORS}
    results: dict[str, list[tuple[Estimate, Estimate | None]]] = defaultdict(list)
    true_parts: dict[str, list[float]] = defaultdict(list)
    for i in range(n_logs):
        req = sim.requests(n)
        mu = sim.logging_probs(req)
        q = sim.expected_reward(req)
        targets = targets_of(req, mu)
        a = _sample(mu, rng)
        plays = sim.play(req, a[:, None])
        reward = (rng.random(n) < plays.p_stream30[:, 0]).astype(np.float64)
        log = LoggedFeedback(
            action=a.astype(np.int64),
            reward=reward,
            propensity=mu[np.arange(n), a],
            context=req.context,
            action_features=req.candidate_features,
        )
        log = with_q_hat(log, n_actions=mu.shape[1], key=jax.random.key(i))
        for tname, pi in targets.items():
            # The estimand: what the target would have earned on the traffic this log saw.
            true_parts[tname].append(float((pi * q).sum(axis=1).mean()))
            target = TargetProbs(pi)
            normal = estimate_all(ests, log, target, interval="normal")
            boot = estimate_all(
                {k: ests[k] for k in GOAL_ESTIMATORS},
                log,
                target,
                key=jax.random.key(10_000 + i),
                n_bootstrap=300,
            )
            for name, est in normal.items():
                results[f"{tname}/{name}"].append((est, boot.get(name)))
    rows: list[Row] = []
    for tname in ("close", "far"):
        truth = float(np.mean(population[tname]))
        per_log = np.asarray(true_parts[tname])
        for name in ESTIMATORS:
            pairs = results[f"{tname}/{name}"]
            normal = [p[0] for p in pairs]
            row: Row = {
                "part": "simulator",
                "system": f"encore {name}",
                "scenario": f"target {tname}",
                "given": f"{n_logs} logs x {n:,} rounds, k=20, cross-fitted bilinear ridge q_hat",
                "true_value": truth,
                **_summary(
                    [e.value - truth for e in normal],
                    [e.lower <= truth <= e.upper for e in normal],
                    [e.upper - e.lower for e in normal],
                ),
                "interval": "normal",
                "coverage_per_log_value_pct": 100.0
                * float(
                    np.mean([e.lower <= t <= e.upper for e, t in zip(normal, per_log, strict=True)])
                ),
                "mean_ess": float(np.mean([e.diagnostics.ess for e in normal])),
                "warned_pct": 100.0 * float(np.mean([e.diagnostics.warning for e in normal])),
            }
            rows.append(row)
            if pairs[0][1] is not None:
                boot = [p[1] for p in pairs if p[1] is not None]
                row["coverage_bootstrap_pct"] = 100.0 * float(
                    np.mean([e.lower <= truth <= e.upper for e in boot])
                )
    return rows


def simulator_goals(rows: list[Row], *, quick: bool) -> list[str]:
    notes: list[str] = []
    sim = [r for r in rows if r["part"] == "simulator"]
    for scenario in sorted({r["scenario"] for r in sim}):
        by = {r["system"].split()[-1]: r for r in sim if r["scenario"] == scenario}
        for name in GOAL_ESTIMATORS:
            r = by[name]
            for kind, cov in (
                ("normal", r["coverage_pct"]),
                ("bootstrap", r.get("coverage_bootstrap_pct")),
            ):
                if cov is None:
                    continue
                ok = abs(cov - 95.0) <= 2.0
                verdict = (
                    "not judged (quick: too few logs)" if quick else ("met" if ok else "NOT met")
                )
                notes.append(
                    f"goal coverage {scenario} {name} ({kind}): {cov:.1f} % "
                    f"(Monte Carlo s.e. {r['coverage_mc_se_pct']:.1f}) -> {verdict}"
                )
        best = min(by["ips"]["rmse"], by["dm"]["rmse"])
        ok = by["dr"]["rmse"] <= best
        notes.append(
            f"goal DR RMSE {scenario}: dr {by['dr']['rmse']:.4f} vs min(ips {by['ips']['rmse']:.4f}, "
            f"dm {by['dm']['rmse']:.4f}) -> {'met' if ok else 'NOT met'}"
        )
    return notes


# ----------------------------------------------------------------------------- (a) slates

S, K_SLATE, N_CTX = 3, 5, 4


def _slate_world(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(
        -2.0, 0.0, size=(N_CTX, S, K_SLATE)
    )  # logit of a stream per (ctx, pos, item)
    genre = np.arange(K_SLATE) % 2
    logging = _softmax(rng.normal(size=(N_CTX, S, K_SLATE)) * 0.5)
    far = _softmax(3.0 * base)
    return {
        "base": base,
        "genre": genre,
        "logging": logging,
        "far": far,
        "close": 0.7 * logging + 0.3 * far,
    }


def _slate_click_probs(
    world: dict[str, np.ndarray], c: np.ndarray, slate: np.ndarray, interacting: bool
) -> np.ndarray:
    """``(n, S)`` P(stream) per position; with interaction, a genre repeat after a skip hurts."""
    logit = world["base"][c[:, None], np.arange(S)[None, :], slate]
    if not interacting:
        return 1.0 / (1.0 + np.exp(-logit))
    p = np.empty(slate.shape)
    p[:, 0] = 1.0 / (1.0 + np.exp(-logit[:, 0]))
    for pos in range(1, S):
        same = world["genre"][slate[:, pos]] == world["genre"][slate[:, pos - 1]]
        # a repeat of the previous genre is a hit (+1.5 logit), a change costs 1.0: the value of
        # position `pos` depends on the track before it (sequential reward interaction)
        p[:, pos] = 1.0 / (1.0 + np.exp(-(logit[:, pos] + np.where(same, 1.5, -1.0))))
    return p


def _slate_truth(world: dict[str, np.ndarray], target: np.ndarray, interacting: bool) -> float:
    import itertools

    slates = np.array(list(itertools.product(range(K_SLATE), repeat=S)))
    total = 0.0
    for c in range(N_CTX):
        prob = np.prod(target[c, np.arange(S), slates], axis=1)
        clicks = _slate_click_probs(world, np.full(len(slates), c), slates, interacting).sum(axis=1)
        total += float(prob @ clicks) / N_CTX
    return total


def slate_rows(ctx: Context) -> list[Row]:
    n_logs, n = (10, 2_000) if ctx.quick else (100, 5_000)
    world = _slate_world(7)
    ests = {name: SLATE_ESTIMATORS[name]() for name in SLATE_ESTIMATORS}
    rows: list[Row] = []
    for interacting in (True, False):
        for tname in ("close", "far"):
            truth = _slate_truth(world, world[tname], interacting)
            got: dict[str, list[Estimate]] = defaultdict(list)
            for i in range(n_logs):
                rng = np.random.default_rng(1_000 * i + 3)
                c = rng.integers(0, N_CTX, n)
                slate = np.stack(
                    [_sample(world["logging"][c, pos], rng) for pos in range(S)], axis=1
                )
                reward = (
                    rng.random((n, S)) < _slate_click_probs(world, c, slate, interacting)
                ).astype(float)
                log = LoggedSlates(
                    slate=slate,
                    reward=reward,
                    propensity=world["logging"][c[:, None], np.arange(S), slate],
                )
                log = log._replace(
                    q_hat=cross_fit_slate_q_hat(log, n_actions=K_SLATE, key=jax.random.key(i))
                )
                target = SlateTargetProbs(world[tname][c])
                for name, est in estimate_all(ests, log, target, interval="normal").items():
                    got[name].append(est)
            for name, values in got.items():
                rows.append(
                    {
                        "part": "slates",
                        "system": f"encore {name}",
                        "scenario": f"{'interacting' if interacting else 'additive'} rewards, target {tname}",
                        "given": f"{n_logs} logs x {n:,} slates, s={S}, k={K_SLATE}, product logging",
                        "true_value": truth,
                        **_summary(
                            [e.value - truth for e in values],
                            [e.lower <= truth <= e.upper for e in values],
                            [e.upper - e.lower for e in values],
                        ),
                        "interval": "normal",
                    }
                )
    return rows


# ----------------------------------------------------------------------------- (b) Open Bandit Dataset

OBP_VERSION = "0.5.7"
CAMPAIGNS = ("all", "men", "women")


def _obp_sdist(tmp: Path) -> Path:
    """The obp sdist: from encore's cache folder (``streaming.kafka.broker.cache_dir``, where the
    broker's jars live too), else ``pip download``-ed into ``tmp`` and copied into that folder
    for later runs."""
    from streaming.kafka.broker import cache_dir

    name = f"obp-{OBP_VERSION}.tar.gz"
    cached = cache_dir() / "obp" / name
    if cached.is_file():
        return cached
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"obp=={OBP_VERSION}",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--ignore-requires-python",
        "-d",
        str(tmp),
        "-q",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    sdist = tmp / name
    if done.returncode != 0 or not sdist.exists():
        raise RuntimeError(f"could not fetch obp {OBP_VERSION}: {done.stderr.strip()[-500:]}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".part")
        shutil.copyfile(sdist, partial)
        partial.replace(cached)  # whole or absent, never half written
    except OSError:
        pass  # no cache this time: the download in tmp serves this run
    return sdist


def fetch_obd(tmp: Path) -> Path:
    """``pip download`` the obp sdist once (no install: it does not support Python 3.11) and
    unpack its dataset sample and BTS prior into ``tmp``."""
    sdist = _obp_sdist(tmp)
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if "/obp/dataset/obd/" in m.name or m.name.endswith("prior_bts.yaml")
        ]
        tar.extractall(tmp, members=members, filter="data")
    return tmp / f"obp-{OBP_VERSION}" / "obp"


def read_bts_prior(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The tiny two-level YAML (campaign -> alpha/beta -> list of floats), without a YAML library."""
    prior: dict[str, dict[str, list[float]]] = {}
    campaign = param = ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if indent == 0:
            campaign = text.rstrip(":")
            prior[campaign] = {}
        elif text.endswith(":"):
            param = text.rstrip(":")
            prior[campaign][param] = []
        else:
            prior[campaign][param].append(float(text.lstrip("- ")))
    return {c: {p: np.asarray(v) for p, v in d.items()} for c, d in prior.items()}


def bts_action_dist(
    alpha: np.ndarray, beta: np.ndarray, *, len_list: int, n_sim: int, rng: np.random.Generator
) -> np.ndarray:
    """``(k, len_list)`` P(item at position) of BTS: sample Beta scores, rank, count (obp's way)."""
    k = alpha.shape[0]
    counts = np.zeros((k, len_list))
    for lo in range(0, n_sim, 20_000):
        m = min(20_000, n_sim - lo)
        theta = rng.beta(alpha, beta, size=(m, k))
        top = np.argsort(-theta, axis=1)[:, :len_list]
        for pos in range(len_list):
            counts[:, pos] += np.bincount(top[:, pos], minlength=k)
    return counts / n_sim


def obd_rows(ctx: Context) -> list[Row]:
    import pandas as pd

    rows: list[Row] = []
    n_boot = 300 if ctx.quick else 1_000
    with tempfile.TemporaryDirectory(prefix="encore-obd-") as tmp:
        root = fetch_obd(Path(tmp))
        prior = read_bts_prior(root / "policy" / "conf" / "prior_bts.yaml")
        for campaign in CAMPAIGNS:
            rand = pd.read_csv(
                root / "dataset" / "obd" / "random" / campaign / f"{campaign}.csv", index_col=0
            )
            bts = pd.read_csv(
                root / "dataset" / "obd" / "bts" / campaign / f"{campaign}.csv", index_col=0
            )
            rand = rand.sort_values("timestamp")
            k = int(max(rand["item_id"].max(), bts["item_id"].max())) + 1
            position = rand["position"].to_numpy() - rand["position"].min()
            len_list = int(position.max()) + 1
            dist = bts_action_dist(
                prior[campaign]["alpha"],
                prior[campaign]["beta"],
                len_list=len_list,
                n_sim=20_000 if ctx.quick else 100_000,
                rng=np.random.default_rng(12345),
            )
            n = len(rand)
            log = LoggedFeedback(
                action=rand["item_id"].to_numpy(np.int64),
                reward=rand["click"].to_numpy(np.float64),
                propensity=rand["propensity_score"].to_numpy(np.float64),
                context=np.eye(len_list)[position],  # the reward model: per item and position
            )
            log = with_q_hat(log, n_actions=k, key=jax.random.key(0))
            target = TargetProbs(np.ascontiguousarray(dist.T[position]))
            clicks = bts["click"].to_numpy(np.float64)
            on_policy = float(clicks.mean())
            on_se = float(clicks.std(ddof=1) / math.sqrt(len(clicks)))
            ests = {name: ESTIMATORS[name]() for name in ESTIMATORS}
            results = estimate_all(ests, log, target, key=jax.random.key(1), n_bootstrap=n_boot)
            for name, est in results.items():
                rows.append(
                    {
                        "part": "obd",
                        "system": f"encore {name}",
                        "scenario": f"campaign {campaign}",
                        "given": f"random log {n:,} rows ({int(log.reward.sum())} clicks), k={k}, "
                        f"BTS prior, q_hat per item x position, {n_boot:,} bootstrap replicates",
                        "true_value": on_policy,
                        "estimate": est.value,
                        "lower": est.lower,
                        "upper": est.upper,
                        "relative_error": abs(est.value - on_policy) / on_policy,
                        "covers_on_policy": bool(est.lower <= on_policy <= est.upper),
                        "on_policy_se": on_se,
                        "ess": est.diagnostics.ess,
                        "warning": est.diagnostics.reason,
                    }
                )
    return rows


# ----------------------------------------------------------------------------- (c) speed


def speed_main(n: int) -> None:
    """Run in a subprocess: build an ``n``-row log, time every estimator, print one JSON line."""
    import resource

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    k, d = 10, 10
    rng = np.random.default_rng(0)
    base_mb = rss_mb()
    context = np.empty((n, d), np.float32)
    target = np.empty((n, k))
    propensity = np.empty(n)
    action = np.empty(n, np.int64)
    reward = np.empty(n)
    chunk = 1 << 20
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        sl = slice(lo, lo + m)
        context[sl] = rng.normal(size=(m, d))
        mu = _softmax(0.5 * context[sl, :k])
        a = _sample(mu, rng)
        action[sl], propensity[sl] = a, mu[np.arange(m), a]
        reward[sl] = rng.random(m) < 0.2 + 0.05 * a + 0.05 * np.tanh(context[sl, 0])
        target[sl] = _softmax(-0.5 * context[sl, :k])
    data_mb = sum(x.nbytes for x in (context, target, propensity, action, reward)) / 2**20
    ready_mb = rss_mb()
    started = time.perf_counter()
    log = LoggedFeedback(action, reward, propensity, context=context)
    log = with_q_hat(log, n_actions=k, key=jax.random.key(0))
    fit_s = time.perf_counter() - started
    ests = {name: ESTIMATORS[name]() for name in ESTIMATORS}
    results = estimate_all(ests, log, TargetProbs(target), key=jax.random.key(1), n_bootstrap=500)
    total_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "n": n,
                "k": k,
                "d": d,
                "data_mb": data_mb,
                "q_hat_mb": log.q_hat.nbytes / 2**20 if log.q_hat is not None else 0.0,
                "interpreter_mb": base_mb,
                "ready_mb": ready_mb,
                "peak_rss_mb": rss_mb(),
                "fit_s": fit_s,
                "total_s": total_s,
                "values": {k_: v.value for k_, v in results.items()},
            }
        )
    )


def speed_rows(ctx: Context) -> list[Row]:
    n = 1_000_000 if ctx.quick else 10_000_000
    code = f"from benchmarks.ope import speed_main; speed_main({n})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"speed run failed: {done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    extra = r["peak_rss_mb"] - r["interpreter_mb"]
    return [
        {
            "part": "speed",
            "system": f"encore all {len(ESTIMATORS)} single-action estimators",
            "scenario": f"{n:,} rows, k={r['k']}, d={r['d']}",
            "given": "bootstrap intervals (500 replicates) + cross-fitted ridge q_hat, one process",
            "rows_per_s": rate(n, r["total_s"]),
            "total_s": r["total_s"],
            "q_hat_fit_s": r["fit_s"],
            "data_mb": r["data_mb"],
            "peak_rss_mb": r["peak_rss_mb"],
            "peak_over_data": r["peak_rss_mb"] / r["data_mb"],
            "peak_less_interpreter_over_data": extra / r["data_mb"],
        }
    ]


# ----------------------------------------------------------------------------- suite


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    t0 = time.perf_counter()
    rows += simulator_rows(ctx)
    t1 = time.perf_counter()
    rows += slate_rows(ctx)
    t2 = time.perf_counter()
    rows += obd_rows(ctx)
    t3 = time.perf_counter()
    rows += speed_rows(ctx)
    t4 = time.perf_counter()
    ctx.notes.append(
        f"timings: simulator {t1 - t0:.0f} s, slates {t2 - t1:.0f} s, obd {t3 - t2:.0f} s, speed {t4 - t3:.0f} s"
    )
    ctx.notes += simulator_goals(rows, quick=ctx.quick)
    speed = rows[-1]
    ctx.notes.append(
        f"goal speed: {speed['scenario']} in {speed['total_s']:.1f} s "
        f"({'met' if speed['total_s'] < 60 else 'NOT met'} for < 60 s); peak RSS {speed['peak_rss_mb']:.0f} MiB = "
        f"{speed['peak_over_data']:.2f} x the data ({'met' if speed['peak_over_data'] <= 2 else 'NOT met'} for <= 2x)"
        + (" [quick: 1M rows, the goal is stated for 10M]" if ctx.quick else "")
    )
    obd = [r for r in rows if r["part"] == "obd"]
    for name in ESTIMATORS:
        errs = [r["relative_error"] for r in obd if r["system"] == f"encore {name}"]
        ctx.notes.append(
            f"obd mean relative error {name}: {np.mean(errs):.3f} over {len(errs)} campaigns"
        )
    ctx.notes.append(
        f"obd data: the Open Bandit Dataset sample in the obp {OBP_VERSION} source distribution; "
        "obp itself is not installed (it does not support Python 3.11) and no obp code runs"
    )
    ctx.notes.append(
        "obd: the sample has 10,000 rows per log and about 40-70 clicks, so the on-policy click "
        "rate itself has a relative standard error near 15 %; relative errors below that are noise"
    )
    ctx.notes.append(
        "dm intervals ignore the reward model's error (the estimate carries a warning saying so); "
        "replay assumes uniform logging, which holds on OBD's random log but not on the simulator"
    )

    def draw(ax: Any) -> None:
        sim = [r for r in rows if r["part"] == "simulator"]
        names = list(ESTIMATORS)
        for j, scenario in enumerate(("target close", "target far")):
            rm = [
                next(
                    r["rmse"]
                    for r in sim
                    if r["scenario"] == scenario and r["system"] == f"encore {n}"
                )
                for n in names
            ]
            ax.bar(
                np.arange(len(names)) + 0.4 * j,
                rm,
                width=0.4,
                label=scenario,
                color=colour(scenario),
            )
        ax.set_xticks(np.arange(len(names)) + 0.2, names, rotation=45)
        ax.set_ylabel("RMSE of the policy value (simulator)")
        ax.set_title(f"Estimators' RMSE over {str(sim[0]['given']).split(', ')[0]}")
        ax.grid(axis="y", alpha=0.3)

    ctx.save_plot("ope_rmse", draw)
    return rows
