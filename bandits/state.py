"""Save and load policy state as bytes, without pickle.

Layout: the magic ``b"ENCORE-POLICY\\n"``, an 8-byte little-endian header length, a UTF-8 JSON
header (format version, the policy's spec, the state type, and every leaf's path, shape and
dtype), then an ``.npz`` archive of the leaves (read with ``allow_pickle=False``). Nothing in
it can run code when read. Loading checks the policy name, its state version, its
hyperparameters and every leaf against a template state, and names what differs.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from bandits.policy import Policy, PolicySpec

__all__ = ["FORMAT_VERSION", "StateFormatError", "load", "save"]

FORMAT_VERSION = 1
MAGIC = b"ENCORE-POLICY\n"
S = TypeVar("S")


class StateFormatError(ValueError):
    """The bytes are not a state this policy can load (wrong policy, version, shape, ...)."""


def _spec_json(spec: PolicySpec) -> dict[str, Any]:
    return json.loads(
        json.dumps({"name": spec.name, "version": spec.version, "params": dict(spec.params)})
    )


def _leaves(state: Any) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat], treedef


def save(policy: Policy, state: Any) -> bytes:
    """Serialise ``state`` together with ``policy.spec`` and the format version.

    Example:
        >>> from bandits.linucb import linucb
        >>> p = linucb(n_ids=0)
        >>> s = p.init(2, 2)
        >>> load(p, save(p, s), like=s).precision.shape
        (9, 9)
    """
    leaves, _ = _leaves(state)
    arrays = [np.asarray(leaf) for _, leaf in leaves]
    header = {
        "format_version": FORMAT_VERSION,
        "spec": _spec_json(policy.spec),
        "state_type": type(state).__name__,
        "leaves": [
            {"path": path, "shape": list(a.shape), "dtype": a.dtype.str}
            for (path, _), a in zip(leaves, arrays, strict=True)
        ],
    }
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + buf.getvalue()


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON header of saved state bytes (policy spec, format version, leaves)."""
    if not data.startswith(MAGIC):
        raise StateFormatError("not an encore policy state (bad magic bytes)")
    start = len(MAGIC) + 8
    if len(data) < start:
        raise StateFormatError("truncated policy state (no header length)")
    (size,) = struct.unpack("<Q", data[len(MAGIC) : start])
    if len(data) < start + size:
        raise StateFormatError("truncated policy state (header cut short)")
    try:
        header: dict[str, Any] = json.loads(data[start : start + size].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFormatError(f"corrupt policy state header: {e}") from e
    return header


def load(policy: Policy, data: bytes, *, like: S) -> S:
    """Load state written by :func:`save` for ``policy``, shaped like the template ``like``.

    Args:
        policy: the policy that will use the state; its name, version and hyperparameters must
            match the ones the state was written with.
        data: bytes from :func:`save`.
        like: a template state, usually ``policy.init(d_user, d_track)``.

    Raises:
        StateFormatError: bad bytes, another format version, another policy or policy version,
            other hyperparameters, or leaves whose path, shape or dtype differ from ``like``.

    A state saved before the policy gained the hyperparameters in ``policy.added`` (its spec
    lacks them, everything else equal) loads too: the arrays it lacks are the template's.
    """
    header = read_header(data)
    if header.get("format_version") != FORMAT_VERSION:
        raise StateFormatError(
            f"state format version {header.get('format_version')} is not supported "
            f"(this encore reads version {FORMAT_VERSION})"
        )
    got, want = header["spec"], _spec_json(policy.spec)
    if got["name"] != want["name"]:
        raise StateFormatError(
            f"state was written by policy {got['name']!r}, cannot load it into {want['name']!r}"
        )
    if got["version"] != want["version"]:
        raise StateFormatError(
            f"state was written by {got['name']!r} version {got['version']}, this is version "
            f"{want['version']}"
        )
    missing = set(want["params"]) - set(got["params"])
    older = bool(missing) and missing <= set(policy.added)  # saved before those were added
    saved_params = (
        {**got["params"], **{k: want["params"][k] for k in missing}} if older else got["params"]
    )
    if saved_params != want["params"]:
        keys = sorted(set(got["params"]) | set(want["params"]))
        diff = [
            f"{k}: saved {got['params'].get(k)!r} != {want['params'].get(k)!r}"
            for k in keys
            if got["params"].get(k) != want["params"].get(k)
        ]
        raise StateFormatError(f"hyperparameters differ from the saved state: {'; '.join(diff)}")
    leaves, treedef = _leaves(like)
    saved = {meta["path"]: i for i, meta in enumerate(header["leaves"])}
    if older:  # the template's own arrays stand in for those the older state lacks
        wanted = [path for path, _ in leaves]
        lacking = [p for p in wanted if p not in saved]
        if [p for p in wanted if p in saved] != [m["path"] for m in header["leaves"]] or not (
            set(lacking) <= set(policy.added_leaves)
        ):
            raise StateFormatError(
                f"state leaves {[m['path'] for m in header['leaves']]} are not the template's "
                f"{wanted} less some of those added since ({list(policy.added_leaves)})"
            )
    elif len(header["leaves"]) != len(leaves):
        raise StateFormatError(
            f"state has {len(header['leaves'])} arrays, the template has {len(leaves)}"
        )
    start = len(MAGIC) + 8 + struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])[0]
    with np.load(io.BytesIO(data[start:]), allow_pickle=False) as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(header["leaves"]))]
    out = []
    for k, (path, leaf) in enumerate(leaves):
        tmpl = np.asarray(leaf) if not hasattr(leaf, "shape") else leaf
        if older and path not in saved:
            out.append(jnp.asarray(tmpl))
            continue
        i = saved[path] if older else k
        meta, arr = header["leaves"][i], arrays[i]
        if meta["path"] != path:
            raise StateFormatError(f"state leaf {meta['path']} where the template has {path}")
        if tuple(arr.shape) != tuple(tmpl.shape) or arr.dtype != np.dtype(tmpl.dtype):
            raise StateFormatError(
                f"state leaf {path} has shape {tuple(arr.shape)} dtype {arr.dtype}, the template "
                f"has {tuple(tmpl.shape)} {np.dtype(tmpl.dtype)} (other d_user / d_track?)"
            )
        out.append(jnp.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out)
