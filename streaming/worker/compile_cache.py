"""JAX's persistent compilation cache for a worker: set when it opens, undone when it closes.

A restarted worker loads the step's compiled functions from the cache instead of compiling them
again (``jax.compilation_cache``). A cache this process set up before (another worker, a test)
stays as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)

__all__ = ["restore_compilation_cache", "use_compilation_cache"]


def use_compilation_cache(path: Path) -> tuple[Any, Any] | None:
    """Point JAX's persistent cache at ``path`` unless this process already has one.

    Returns:
        The settings to restore on close, or None when the cache was left as it was.
    """
    current = jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    if current:
        if Path(current) != path:
            log.info("JAX compilation cache stays at %s (set before this worker opened)", current)
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # compiling every time is slower, never wrong
        log.warning("no JAX compilation cache at %s: %s", path, exc)
        return None
    before = (current, jax.config.jax_persistent_cache_min_compile_time_secs)  # pyright: ignore[reportAttributeAccessIssue]
    jax.config.update("jax_compilation_cache_dir", str(path))
    # every function, however fast it compiles: JAX's default skips those under a second
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    log.info("JAX compilation cache at %s", path)
    return before


def restore_compilation_cache(before: tuple[Any, Any]) -> None:
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()
