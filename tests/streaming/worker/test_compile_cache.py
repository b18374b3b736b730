"""The daemon's JAX compilation cache: set for a worker, left alone when set before, undone."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from streaming.config import Config
from streaming.worker.compile_cache import restore_compilation_cache, use_compilation_cache


def _cumsum(x: jax.Array) -> jax.Array:
    return jnp.cumsum(x * 3.0) + 1.0


def test_config_keys_default_and_layer() -> None:
    assert not Config.load(env={}).jax.compile_ahead
    cfg = Config.load(
        env={"ENCORE_JAX__COMPILATION_CACHE": "false"},
        overrides=["jax.compilation_cache_dir=/var/cache/encore", "jax.compile_ahead=true"],
    )
    assert not cfg.jax.compilation_cache and cfg.jax.compile_ahead
    assert cfg.jax.compilation_cache_dir == "/var/cache/encore"


def test_cache_is_used_then_restored_and_an_existing_one_is_kept(tmp_path: Path) -> None:
    assert not jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    before = use_compilation_cache(tmp_path / "cache")
    assert before is not None
    try:
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")  # pyright: ignore[reportAttributeAccessIssue]
        assert use_compilation_cache(tmp_path / "other") is None  # the first one stays
        f = jax.jit(_cumsum)
        f(np.arange(7, dtype=np.float32)).block_until_ready()
        assert any((tmp_path / "cache").iterdir())  # the compiled function was stored
        assert not (tmp_path / "other").exists()
    finally:
        restore_compilation_cache(before)
    assert not jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    assert jax.config.jax_persistent_cache_min_compile_time_secs == before[1]  # pyright: ignore[reportAttributeAccessIssue]
