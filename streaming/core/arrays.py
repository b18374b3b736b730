"""A ``WorkerState`` as named arrays plus a JSON-able header, and back again; no I/O.

``to_arrays`` flattens the policy state (``bandits.save``), the reward model's leaves, every
partition's join state, the row tables and any pending or sealed ``LinearDelta``; the header
holds the offsets, counters, sums and rewards per logging policy, the reward model's spec and the
composite reward's. ``from_arrays`` rebuilds the state, and refuses with a ``ValueError`` one
learned with another reward model, composite reward or model params. The daemon hands the
arrays and header to ``streaming.worker.checkpoint``, which writes and reads the files.

``_delta_from_arrays`` and ``_joins_from_arrays`` are in ``__all__`` only because
``streaming.core.step`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from bandits import linear
from streaming import join
from streaming.core.history import History, newest
from streaming.core.state import Engine, ModelRows, Plays, PolicyRows, Side, WorkerState
from streaming.core.tables import empty_policy_rows
from streaming.events import ImpressionBatch

__all__ = [
    "from_arrays",
    "history_from_arrays",
    "plays_from_arrays",
    "to_arrays",
]


# ---------------------------------------------------------------------------------- persistence
def to_arrays(engine: Engine, state: WorkerState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The state as named arrays plus a JSON-able header part (offsets, counters)."""
    from bandits import save

    arrays: dict[str, np.ndarray] = {
        "policy_blob": np.frombuffer(save(engine.policy, state.policy), dtype=np.uint8),
        "next_payload": np.array(state.next_payload, np.int64),
        "tracks": state.tracks,
    }
    leaves = jax.tree.leaves(state.model)
    arrays.update({f"model/{i:04d}": np.asarray(x) for i, x in enumerate(leaves)})
    for p, js in state.join.items():
        arrays.update({f"join/{p}/{k}": v for k, v in join.to_arrays(js).items()})
    arrays.update({f"side/{k}": v for k, v in state.side._asdict().items() if k != "log"})
    arrays.update({f"side/log/{k}": v for k, v in state.side.log._asdict().items()})
    arrays.update({f"plays/{k}": v for k, v in state.plays._asdict().items()})
    arrays.update({f"model_rows/{k}": v for k, v in state.model_rows._asdict().items()})
    arrays.update({f"policy_rows/{k}": v for k, v in state.policy_rows._asdict().items()})
    for p, table in state.history.items():
        arrays.update({f"history/{p}/{k}": v for k, v in table._asdict().items()})
    for name, delta in (("pending", state.pending), ("outbox", state.outbox)):
        if delta is not None:
            arrays.update({f"{name}/{k}": np.asarray(v) for k, v in delta._asdict().items()})
    header = {
        "offsets": [[t, p, o] for (t, p), o in sorted(state.offsets.items())],
        "counters": dict(state.counters),
        "sums": dict(state.sums),
        "reward_by_policy": [[str(k), s, c] for k, (s, c) in state.reward_by_policy.items()],
        "reward_model": {
            "name": engine.reward_model.spec.name,
            "version": engine.reward_model.spec.version,
            "params": dict(engine.reward_model.spec.params),
            "n_leaves": len(leaves),
        },
        "composite_reward": engine.composite.to_spec(),
        "delta_seq": state.delta_seq,
        "seen": dict(state.seen),
    }
    return arrays, header


def _delta_from_arrays(arrays: Mapping[str, np.ndarray], name: str, policy_state: Any) -> Any:
    if f"{name}/precision" not in arrays:
        return None
    prefix = f"{name}/"
    return linear.delta_from(
        {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)},
        like=linear.empty_delta(policy_state),
    )


def _joins_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[int, join.JoinState]:
    parts: dict[int, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        if name.startswith("join/"):
            _, p, key = name.split("/", 2)
            parts.setdefault(int(p), {})[key] = value
    return {p: join.from_arrays(a) for p, a in sorted(parts.items())}


def from_arrays(
    engine: Engine, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]
) -> WorkerState:
    """Rebuild a state written by ``to_arrays``; another policy, model or reward is a clear error."""
    from bandits import load

    spec = header["reward_model"]
    mine = engine.reward_model.spec
    if (spec["name"], spec["version"]) != (mine.name, mine.version):
        raise ValueError(
            f"checkpoint holds reward model {spec['name']} v{spec['version']}, "
            f"the config runs {mine.name} v{mine.version}"
        )
    if header["composite_reward"] != engine.composite.to_spec():
        raise ValueError(
            f"checkpoint was learned with reward {header['composite_reward']}, "
            f"the config declares {engine.composite.to_spec()}"
        )
    like = engine.reward_model.init(jax.random.key(engine.seed), engine.n_model_features)
    leaves, treedef = jax.tree.flatten(like)
    if spec["n_leaves"] != len(leaves):
        raise ValueError(
            f"checkpoint's reward-model state has {spec['n_leaves']} arrays, the configured "
            f"{mine.name} model has {len(leaves)}: reward.model_params changed (the checkpoint "
            f"was written with {spec.get('params')}, the config says {dict(mine.params)}); "
            "use the same params or another checkpoint.dir"
        )
    shapes = [tuple(arrays[f"model/{i:04d}"].shape) for i in range(len(leaves))]
    if shapes != [tuple(x.shape) for x in leaves]:
        raise ValueError(
            f"checkpoint's reward-model arrays have other shapes than the configured "
            f"{mine.name} model's: reward.model_params changed (the checkpoint was written with "
            f"{spec.get('params')}, the config says {dict(mine.params)}); use the same params or "
            "another checkpoint.dir"
        )
    model = jax.tree.unflatten(
        treedef, [jnp.asarray(arrays[f"model/{i:04d}"]) for i in range(len(leaves))]
    )
    policy_state = load(
        engine.policy,
        arrays["policy_blob"].tobytes(),
        like=engine.policy.init(engine.d_user, engine.d_track),
    )
    return WorkerState(
        policy=policy_state,
        model=model,
        join=_joins_from_arrays(arrays),
        side=Side(
            **{f: arrays[f"side/{f}"] for f in Side._fields if f != "log"},
            log=ImpressionBatch(**{f: arrays[f"side/log/{f}"] for f in ImpressionBatch._fields}),
        ),
        plays=plays_from_arrays(arrays, "plays/"),
        model_rows=_model_rows_from_arrays(engine, arrays),
        policy_rows=(
            PolicyRows(**{f: arrays[f"policy_rows/{f}"] for f in PolicyRows._fields})
            if "policy_rows/end_ms" in arrays
            else empty_policy_rows(engine)  # written when the policy learned rows as they closed
        ),
        next_payload=int(arrays["next_payload"]),
        offsets={(str(t), int(p)): int(o) for t, p, o in header["offsets"]},
        counters={str(k): v for k, v in header["counters"].items()},
        sums={str(k): float(v) for k, v in header["sums"].items()},
        reward_by_policy={int(k): (float(s), int(c)) for k, s, c in header["reward_by_policy"]},
        pending=_delta_from_arrays(arrays, "pending", policy_state),
        outbox=_delta_from_arrays(arrays, "outbox", policy_state),
        delta_seq=int(header.get("delta_seq", 0)),
        seen={str(k): int(v) for k, v in header.get("seen", {}).items()},
        history=_history_from_arrays(arrays),
        tracks=arrays.get("tracks", np.zeros(0, np.int32)),
    )


def plays_from_arrays(arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> Plays:
    """The ``Plays`` columns named ``prefix + field``; a table without a ``listener`` column gets
    0 for each play (an unknown listener, which gets no history)."""
    n = arrays[f"{prefix}payload"].shape[0]
    missing = {"listener": np.zeros(n, np.uint64)}
    return Plays(**{f: arrays.get(f"{prefix}{f}", missing.get(f)) for f in Plays._fields})  # type: ignore[arg-type]


def history_from_arrays(arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> History | None:
    """The ``History`` columns named ``prefix + field``, or None where there are none."""
    if f"{prefix}listener" not in arrays:
        return None
    return History(**{f: arrays[f"{prefix}{f}"] for f in History._fields})


def _history_from_arrays(arrays: Mapping[str, npt.NDArray[Any]]) -> dict[int, History]:
    parts = {int(name.split("/")[1]) for name in arrays if name.startswith("history/")}
    return {
        p: table
        for p in sorted(parts)
        if (table := history_from_arrays(arrays, f"history/{p}/")) is not None
    }


def _model_rows_from_arrays(engine: Engine, arrays: Mapping[str, npt.NDArray[Any]]) -> ModelRows:
    """The queued reward-model rows; a checkpoint whose rows lack their event-time order columns
    held only rows already released, so they are marked released (window end ``NO_TIME_MS``);
    one whose rows lack histories was written for a model that reads none."""
    n = arrays["model_rows/ms_played"].shape[0]
    missing = {
        "history": np.zeros((n, engine.history_length, engine.history_dim), np.float32),
        "end_ms": np.full(n, join.NO_TIME_MS, np.int64),
        "partition": np.zeros(n, np.int32),
        "request_key": np.zeros(n, np.uint64),
        "ts_ms": np.zeros(n, np.int64),
    }
    rows = ModelRows(
        **{f: arrays.get(f"model_rows/{f}", missing.get(f)) for f in ModelRows._fields}  # type: ignore[arg-type]
    )
    h, e = engine.history_length, engine.history_dim
    if rows.history.shape[1:] != (h, e):  # written with another reward.history_length
        fitted = (
            newest(rows.history, h, 0.0)
            if rows.history.shape[2] == e
            else np.zeros((n, h, e), np.float32)
        )
        rows = rows._replace(history=fitted)
    return rows
