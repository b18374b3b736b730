"""The local broker's pure helpers (the broker itself is exercised by the integration tests)."""

from __future__ import annotations

import base64
import uuid

import pytest

from streaming.kafka import broker


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first draw encodes to an id starting with "-" (0xf8 -> "-" in URL-safe base64), which
    # kafka-storage's argument parser would read as an option; the helper must draw again.
    draws = iter([uuid.UUID(bytes=b"\xf8" + b"\x00" * 15), uuid.UUID(int=1)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    cid = broker._cluster_id()  # pyright: ignore[reportPrivateUsage]
    assert not cid.startswith("-")
    assert base64.urlsafe_b64decode(cid + "==") == uuid.UUID(int=1).bytes
    assert len(cid) == 22
