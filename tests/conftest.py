"""Shared fixtures: strict JAX, a PRNG key, and one real local Kafka broker per test session."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the encore CLI does (see streaming/cli.py)
# The workers the tests run register for `encore status` here, not in the user's home.
os.environ.setdefault(
    "ENCORE_WORKERS_DIR", __import__("tempfile").mkdtemp(prefix="encore-workers-")
)

import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """A real single-node KRaft broker on 127.0.0.1 (fetched with Maven once), stopped at the end.

    Set ENCORE_TEST_BOOTSTRAP_SERVERS to run the integration tests against an existing cluster.
    """
    external = os.environ.get("ENCORE_TEST_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from streaming.kafka.broker import TEST_SETTINGS, LocalBroker

    with tempfile.TemporaryDirectory(prefix="encore-broker-") as tmp:
        broker = LocalBroker(state_dir=Path(tmp), settings=TEST_SETTINGS)
        info = broker.start()
        try:
            yield info.bootstrap_servers
        finally:
            broker.stop()
