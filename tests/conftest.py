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
from typing import Any

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
        _broker_log.append(broker.log_file)
        try:
            yield info.bootstrap_servers
        finally:
            _broker_log.clear()
            broker.stop()


# The log of the broker kafka_broker started (none with an external cluster), and where it ended
# when the running test began: a failing test reports what the broker logged meanwhile.
_broker_log: list[Path] = []
_log_start: dict[str, int] = {}
_BROKER_LINES = ("group", " WARN ", " ERROR ")  # a group's joins, rebalances, members


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used the session's broker gets the broker's lines on consumer groups,
    its warnings and errors logged while it ran (the last 80), as a section of its report."""
    if call.when == "setup" and _broker_log:
        _log_start[item.nodeid] = _broker_log[0].stat().st_size
    outcome: Any = yield
    report = outcome.get_result()
    start = _log_start.get(item.nodeid)
    if report.failed and _broker_log and start is not None:
        with _broker_log[0].open("rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if any(k in line for k in _BROKER_LINES)]
        report.sections.append(("broker log while it ran", "\n".join(lines[-80:])))
