"""The track catalogue against the real broker: load, slots kept, withdraw, rank by id, live update."""

from __future__ import annotations

import dataclasses
import http.client
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from streaming.config import Config
from streaming.events import decode_impressions, key64
from streaming.kafka.catalogue import read_catalogue
from streaming.kafka.clients import ensure_topics, make_consumer
from streaming.serving.catalogue import TrackTable, publish_tracks, withdraw_tracks
from streaming.serving.service import RankError, RerankService

pytestmark = pytest.mark.integration

D = 16


def fresh_config(servers: str, *overrides: str) -> Config:
    cfg = Config.load(
        env={},
        overrides=[f"kafka.bootstrap_servers={servers}", "policy.name=linucb", *overrides],
    )
    return dataclasses.replace(cfg, topics=cfg.topics.for_run(uuid.uuid4().hex[:8]))


def table(ids: list[str], scale: float) -> TrackTable:
    feats = np.sin(np.arange(len(ids) * D, dtype=np.float32)).reshape(len(ids), D) * scale
    return TrackTable(ids, feats, np.full(len(ids), 200_000))


def test_load_keeps_each_tracks_slot_and_withdraw_forgets_it(
    kafka_broker: str, tmp_path: Path
) -> None:
    cfg = fresh_config(kafka_broker)
    ensure_topics(cfg, kafka_broker)
    ids = [f"track-{i}" for i in range(30)]
    frame = pd.DataFrame(
        {"track_id": ids, **{f"f{j}": np.arange(30.0) / 30 + j / 16 for j in range(D)}}
    )
    path = tmp_path / "tracks.csv"
    frame.to_csv(path, index=False)
    # the command line, as a user runs it
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming",
            "catalogue",
            "load",
            str(path),
            "--bootstrap-servers",
            kafka_broker,
            "--set",
            f"topics.catalogue={cfg.topics.catalogue}",
            "--embedding-version",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "30 new, 0 updated, 0 back after a withdrawal" in out.stdout
    first = read_catalogue(cfg, kafka_broker).view()
    feats, version, slot, known = first.lookup(key64(ids))
    assert known.all() and set(version.tolist()) == {3}
    np.testing.assert_array_equal(feats, frame[[f"f{j}" for j in range(D)]].to_numpy(np.float32))
    assert sorted(slot.tolist()) == list(range(30))
    # A second load: ten tracks re-embedded, five new; the old keep their slots.
    counts = publish_tracks(
        cfg,
        kafka_broker,
        table([*ids[:10], "new-a", "new-b", "new-c", "new-d", "new-e"], 0.5),
        embedding_version=4,
    )
    assert counts == {"new": 5, "updated": 10, "restored": 0}
    withdraw_tracks(cfg, kafka_broker, ids[20:])
    second = read_catalogue(cfg, kafka_broker).view()
    _, version2, slot2, known2 = second.lookup(key64(ids))
    assert known2.tolist() == [True] * 20 + [False] * 10
    assert slot2[:20].tolist() == slot[:20].tolist()
    assert version2[:10].tolist() == [4] * 10 and version2[10:20].tolist() == [3] * 10
    _, _, new_slots, _ = second.lookup(key64(["new-a", "new-e"]))
    assert new_slots.tolist() == [30, 34]
    # Withdrawn tracks keep their slots: new tracks never take them, and a track that comes
    # back gets its own again.
    counts = publish_tracks(
        cfg, kafka_broker, table([*ids[25:], "new-f"], 0.25), embedding_version=5
    )
    assert counts == {"new": 1, "updated": 0, "restored": 5}
    third = read_catalogue(cfg, kafka_broker)
    _, _, slot3, known3 = third.view().lookup(key64([*ids[25:], "new-f"]))
    assert known3.all() and slot3[:5].tolist() == slot[25:].tolist() and slot3[5] == 35
    assert third.slot_of(key64(ids[20:25])).tolist() == slot[20:25].tolist()


def test_requests_by_id_rank_with_the_catalogues_features_and_follow_its_updates(
    kafka_broker: str,
) -> None:
    cfg = fresh_config(kafka_broker, "catalogue.follow=true")
    ensure_topics(cfg, kafka_broker)
    ids = [f"track-{i}" for i in range(8)]
    publish_tracks(cfg, kafka_broker, table(ids, 0.01), embedding_version=1)
    with RerankService(cfg, kafka_broker, refresh_ms=50, seed=0) as service:
        req = {
            "user_id": "u1",
            "surface": "home",
            "context": [0.1] * D,
            "candidates": ids[:5],
            "slate_size": 2,
        }
        served = service.rank(dict(req))
        assert len(served["shown"]) == 2
        with pytest.raises(RankError) as caught:
            service.rank({**req, "candidates": [*ids[:3], "nope-1", "nope-2"]})
        assert caught.value.code == "unknown_track" and "nope-1, nope-2" in str(caught.value)
        # features in the request still work, and win
        given = service.rank({**req, "candidate_features": [[0.0] * D] * 5})
        assert len(given["shown"]) == 2
        # a live update of the catalogue reaches the requests without a restart
        publish_tracks(cfg, kafka_broker, table(ids[:5], -1.0), embedding_version=2)
        deadline = time.monotonic() + 20
        want = table(ids[:5], -1.0).features
        while time.monotonic() < deadline:
            view = service.catalogue.catalogue.view() if service.catalogue else None
            assert view is not None
            if (view.lookup(key64(ids[:5]))[1] == 2).all():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the catalogue update did not arrive")
        after = service.rank(dict(req))
        service.flush()
    raws: list[bytes] = []
    consumer = make_consumer(
        cfg.kafka, kafka_broker, group_id=None, topics=[cfg.topics.impressions]
    )
    deadline = time.monotonic() + 20
    while len(raws) < 3 and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            raws.extend(rec.value for rec in recs)
    consumer.close()
    batch, rejects = decode_impressions(raws, service.limits)
    assert not rejects
    logged = dict(zip(batch.request_id.tolist(), batch.candidate_features, strict=True))
    # the daemon learns from the features the request was ranked with
    np.testing.assert_allclose(logged[served["request_id"]], table(ids, 0.01).features[:5])
    np.testing.assert_allclose(logged[after["request_id"]], want)


def test_unknown_tracks_score_from_zeros_when_the_config_says_so(kafka_broker: str) -> None:
    cfg = fresh_config(kafka_broker, "catalogue.follow=true", "catalogue.unknown=zeros")
    ensure_topics(cfg, kafka_broker)
    publish_tracks(cfg, kafka_broker, table(["a", "b"], 1.0), embedding_version=1)
    with RerankService(cfg, kafka_broker, refresh_ms=50, seed=0) as service:
        out = service.rank(
            {
                "user_id": "u1",
                "surface": "home",
                "context": [0.0] * D,
                "candidates": ["a", "b", "zz"],
                "slate_size": 3,
            }
        )
        assert sorted(out["track_ids"]) == ["a", "b", "zz"]
        assert service.counts()["unknown_tracks"] == 1


def test_the_simulators_tracks_go_to_the_catalogue(kafka_broker: str) -> None:
    from streaming.sim.simulator import SimConfig, Simulator

    cfg = fresh_config(kafka_broker)
    ensure_topics(cfg, kafka_broker)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming",
            "catalogue",
            "simulated",
            "--seed",
            "3",
            "--bootstrap-servers",
            kafka_broker,
            "--set",
            f"topics.catalogue={cfg.topics.catalogue}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    world = Simulator(SimConfig(seed=3)).world
    view = read_catalogue(cfg, kafka_broker).view()
    assert view.size == world.track_features.shape[0] == 2_000
    feats, _, slot, known = view.lookup(key64([f"t{i}" for i in range(2_000)]))
    assert known.all() and slot.tolist() == list(range(2_000))
    np.testing.assert_array_equal(feats, world.track_features)


def post(port: int, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/rank", body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def test_a_messagepack_body_by_id_is_answered_in_messagepack(kafka_broker: str) -> None:
    cfg = fresh_config(kafka_broker, "catalogue.follow=true")
    ensure_topics(cfg, kafka_broker)
    ids = [f"track-{i}" for i in range(6)]
    publish_tracks(cfg, kafka_broker, table(ids, 0.5), embedding_version=1)
    with RerankService(cfg, kafka_broker, refresh_ms=50, seed=0) as service:
        port = service.start_http(port=0)
        req = {
            "user_id": "u1",
            "surface": "radio",
            "context": [0.2] * D,
            "candidates": ids,
            "slate_size": 3,
        }
        status, kind, raw = post(port, msgspec.msgpack.encode(req), "application/msgpack")
        assert (status, kind) == (200, "application/msgpack")
        answer = msgspec.msgpack.decode(raw)
        assert len(answer["shown"]) == 3 and set(answer["track_ids"]) <= set(ids)
        # the same request as JSON gets the same kind of answer, as JSON
        status, kind, raw = post(port, json.dumps(req).encode(), "application/json")
        assert (status, kind) == (200, "application/json")
        assert len(json.loads(raw)["shown"]) == 3
        status, _, raw = post(port, b"\xc1not msgpack", "application/msgpack")
        assert status == 400 and msgspec.msgpack.decode(raw)["error"] == "invalid_msgpack"
        status, _, raw = post(port, b"x", "text/plain")
        assert status == 415 and b"application/msgpack" in raw
        bad = {**req, "candidates": ["nope"], "slate_size": 1}
        status, _, raw = post(port, msgspec.msgpack.encode(bad), "application/msgpack")
        assert status == 400 and msgspec.msgpack.decode(raw)["error"] == "unknown_track"
