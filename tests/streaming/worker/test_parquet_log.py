"""The joined-records log: round trip, rolling by rows and by age, atomic naming, reading."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from streaming.core import COLUMNS, JoinedRecords, from_impressions
from streaming.core.state import ModelPlays
from streaming.worker.lock import InUseError
from streaming.worker.parquet_log import (
    PLAYS_DIR,
    BackgroundLog,
    ParquetLog,
    example_records,
    log_files,
    plays_table,
    read_log,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 1_000

    def __call__(self) -> int:
        return self.now_ms


def committed(d: Path) -> list[str]:
    return [p.name for p in log_files(d)]


def temporaries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_round_trip_every_column(tmp_path: Path) -> None:
    rec = example_records(40, d_user=4, k=6, s=3, d_track=2, seed=1)
    # Ragged slates: row 0 shows one item only.
    shown = rec.shown.copy()
    shown[0, 1:] = -1
    rec = rec._replace(shown=shown, reward=rec.reward * np.float32(0.5))
    with ParquetLog(tmp_path, clock=FakeClock()) as log:
        log.append(rec)
    frame = read_log(tmp_path)
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 40
    assert frame["request_id"].tolist() == rec.request_id.tolist()
    assert frame["user_id"].tolist() == rec.user_id.tolist()
    np.testing.assert_array_equal(frame["ts_ms"].to_numpy(), rec.ts_ms)
    assert frame["surface"].tolist() == ["home"] * 40
    assert frame["policy"].tolist() == ["logging"] * 40
    assert frame["policy_version"].tolist() == ["1"] * 40
    assert frame["reward_name"].tolist() == ["stream30"] * 40
    assert frame["reward_version"].tolist() == [1] * 40
    for i in range(40):
        m = rec.candidate_mask[i]
        sm = rec.shown[i] >= 0
        np.testing.assert_array_equal(frame["context"][i], rec.context[i])
        np.testing.assert_array_equal(frame["candidate_key"][i], rec.candidate_key[i][m])
        assert frame["candidate_key"][i].dtype == np.uint64
        feats = np.stack(frame["candidate_features"][i])
        np.testing.assert_array_equal(feats, rec.candidate_features[i][m])  # type: ignore[index]
        np.testing.assert_array_equal(frame["shown"][i], rec.shown[i][sm])
        np.testing.assert_array_equal(frame["propensity"][i], rec.propensity[i][sm])
        np.testing.assert_array_equal(frame["reward"][i], rec.reward[i][sm])
        np.testing.assert_array_equal(frame["n_outcomes"][i], rec.n_outcomes[i][sm])
        np.testing.assert_array_equal(frame["defaulted"][i], rec.defaulted[i][sm])
    assert len(frame["shown"][0]) == 1
    assert frame["reward"][0].dtype == np.float32


def test_features_can_be_omitted(tmp_path: Path) -> None:
    with ParquetLog(tmp_path, clock=FakeClock()) as log:
        log.append(example_records(5, features=False))
    frame = read_log(tmp_path)
    assert "candidate_features" not in frame.columns
    assert len(frame) == 5


def test_rolls_by_rows_and_names_sort_by_time(tmp_path: Path) -> None:
    log = ParquetLog(tmp_path, rows_per_file=10, clock=FakeClock())
    log.append(example_records(25, ts0_ms=5_000))
    assert committed(tmp_path) == [
        "part-0000000005000-w0-000001.parquet",
        "part-0000000005010-w0-000002.parquet",
    ]
    assert len(temporaries(tmp_path)) == 1  # the last 5 rows, not yet visible
    assert len(read_log(tmp_path)) == 20
    log.append(example_records(5, ts0_ms=90_000))  # 5 + 5: rolls exactly at 10
    assert len(committed(tmp_path)) == 3
    assert temporaries(tmp_path) == []
    log.close()
    frame = read_log(tmp_path)
    assert len(frame) == 30
    assert frame["ts_ms"].is_monotonic_increasing
    assert log.rows_written == 30


def test_rolls_by_age_on_append_and_on_tick(tmp_path: Path) -> None:
    clock = FakeClock()
    log = ParquetLog(tmp_path, max_file_age_ms=1_000, clock=clock)
    log.append(example_records(3, ts0_ms=0))
    clock.now_ms += 999
    assert log.roll_if_due() is None
    log.append(example_records(3, ts0_ms=100))
    assert committed(tmp_path) == []
    clock.now_ms += 1
    log.append(example_records(3, ts0_ms=200))  # the old file rolls first, then a new one opens
    assert committed(tmp_path) == ["part-0000000000000-w0-000001.parquet"]
    assert len(read_log(tmp_path)) == 6
    clock.now_ms += 1_000
    rolled = log.roll_if_due()  # an idle daemon's tick
    assert rolled is not None and rolled.name == "part-0000000000200-w0-000002.parquet"
    assert len(read_log(tmp_path)) == 9
    assert log.roll_if_due() is None
    log.close()
    assert len(committed(tmp_path)) == 2


def test_reader_never_sees_an_open_file(tmp_path: Path) -> None:
    log = ParquetLog(tmp_path, clock=FakeClock())
    log.append(example_records(7))
    assert committed(tmp_path) == []
    (tmp,) = temporaries(tmp_path)
    assert tmp.startswith(".part-")
    assert len(read_log(tmp_path)) == 0
    path = log.flush()
    assert path is not None and path.exists()
    assert temporaries(tmp_path) == []
    assert len(read_log(tmp_path)) == 7
    assert log.flush() is None
    log.close()
    log.close()  # idempotent
    assert len(committed(tmp_path)) == 1


def test_restart_drops_stale_temporary_and_continues_numbering(tmp_path: Path) -> None:
    first = ParquetLog(tmp_path, clock=FakeClock())
    first.append(example_records(4, ts0_ms=0))
    first.flush()
    first.append(example_records(4, ts0_ms=10))  # killed here: never committed
    assert len(temporaries(tmp_path)) == 1
    del first  # the process is gone: the kernel drops its lock on the writer id
    gc.collect()
    other = ParquetLog(tmp_path, clock=FakeClock(), writer="w1")  # another worker's tmp is kept
    assert len(temporaries(tmp_path)) == 1
    second = ParquetLog(tmp_path, clock=FakeClock())
    assert temporaries(tmp_path) == []
    second.append(example_records(4, ts0_ms=10))  # the replay writes the rows again
    second.append(example_records(4, ts0_ms=0))  # and some committed ones a second time
    second.close()
    other.close()
    assert committed(tmp_path) == [
        "part-0000000000000-w0-000001.parquet",
        "part-0000000000010-w0-000002.parquet",
    ]
    frame = read_log(tmp_path)
    assert sorted(frame["ts_ms"].tolist()) == list(range(4)) + list(range(10, 14))
    assert len(read_log(tmp_path, dedupe=False)) == 12


def test_a_second_live_writer_with_the_same_id_is_refused_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    first = ParquetLog(tmp_path, clock=FakeClock())
    first.append(example_records(4, ts0_ms=0))  # its open file is a temporary
    with pytest.raises(InUseError, match=r"log writer 'w0' .* in use by another worker"):
        ParquetLog(tmp_path, clock=FakeClock())
    assert len(temporaries(tmp_path)) == 1
    first.close()
    second = ParquetLog(tmp_path, clock=FakeClock())  # free again once closed
    second.append(example_records(4, ts0_ms=10))
    second.close()
    assert committed(tmp_path) == [
        "part-0000000000000-w0-000001.parquet",
        "part-0000000000010-w0-000002.parquet",
    ]


def test_appending_after_close_takes_the_id_again_and_numbers_after_others(
    tmp_path: Path,
) -> None:
    first = ParquetLog(tmp_path, clock=FakeClock())
    first.append(example_records(2, ts0_ms=0))
    first.close()
    other = ParquetLog(tmp_path, clock=FakeClock())  # the same id, while the first is closed
    other.append(example_records(2, ts0_ms=5))
    with pytest.raises(InUseError):
        first.append(example_records(2, ts0_ms=9))
    other.close()
    first.append(example_records(2, ts0_ms=9))
    first.close()
    assert committed(tmp_path) == [
        "part-0000000000000-w0-000001.parquet",
        "part-0000000000005-w0-000002.parquet",
        "part-0000000000009-w0-000003.parquet",
    ]


def test_reads_several_files_from_several_writers(tmp_path: Path) -> None:
    a = ParquetLog(tmp_path, rows_per_file=4, clock=FakeClock(), writer="a")
    b = ParquetLog(tmp_path, rows_per_file=4, clock=FakeClock(), writer="b")
    a.append(example_records(10, ts0_ms=0))
    b.append(example_records(6, ts0_ms=100))
    a.close()
    b.close()
    assert len(committed(tmp_path)) == 5
    frame = read_log(tmp_path)
    assert len(frame) == 16
    assert frame["ts_ms"].tolist() == [*range(10), *range(100, 106)]


def test_empty_and_missing_directory(tmp_path: Path) -> None:
    frame = read_log(tmp_path)
    assert len(frame) == 0
    assert list(frame.columns) == list(COLUMNS)
    ParquetLog(tmp_path, clock=FakeClock()).close()  # nothing appended: no file
    assert committed(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_log(tmp_path / "nope")


def test_empty_append_writes_nothing(tmp_path: Path) -> None:
    with ParquetLog(tmp_path, clock=FakeClock()) as log:
        log.append(example_records(0))
    assert committed(tmp_path) == []


def test_bad_shapes_name_the_column(tmp_path: Path) -> None:
    rec = example_records(4)
    log = ParquetLog(tmp_path, clock=FakeClock())
    with pytest.raises(ValueError, match=r"JoinedRecords.reward has shape \(4, 1\)"):
        log.append(rec._replace(reward=rec.reward[:, :1]))
    with pytest.raises(ValueError, match=r"JoinedRecords.user_id has shape \(3,\)"):
        log.append(rec._replace(user_id=rec.user_id[:3]))
    bad = rec.shown.copy()
    bad[2, 0] = 99
    with pytest.raises(ValueError, match=r"shown has indices >= k=5 in rows \[2\]"):
        log.append(rec._replace(shown=bad))
    log.append(rec)
    with pytest.raises(ValueError, match="differs from the open file"):
        log.append(example_records(2, features=False))
    log.close()
    with pytest.raises(ValueError, match="rows_per_file must be positive"):
        ParquetLog(tmp_path, rows_per_file=0)
    with pytest.raises(ValueError, match="writer 'a-b'"):
        ParquetLog(tmp_path, writer="a-b")


def test_large_batch_appends_in_one_call(tmp_path: Path) -> None:
    rec: JoinedRecords = example_records(20_000, d_user=16, k=20, s=5, d_track=8)
    with ParquetLog(tmp_path, rows_per_file=8_000, clock=FakeClock()) as log:
        log.append(rec)
    assert len(committed(tmp_path)) == 3
    frame = read_log(tmp_path)
    assert len(frame) == 20_000
    np.testing.assert_array_equal(np.stack(frame["context"].to_numpy()), rec.context)


def test_from_decoded_impressions(tmp_path: Path) -> None:
    from streaming.events import Limits, decode_impressions, encode
    from streaming.sim.simulator import SimConfig, Simulator
    from streaming.sim.traffic import impressions

    sim = Simulator(SimConfig(seed=0, n_users=50, n_tracks=200))
    req = sim.requests(6)
    sl = sim.log_slates(req, 4)
    raws = [encode(e) for e in impressions(req, sl.shown, sl.propensity, policy="logging")]
    batch, rejects = decode_impressions(raws, Limits())
    assert rejects == []
    reward = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)  # the join's slate: 3 positions
    rec = from_impressions(
        batch,
        reward=reward,
        n_outcomes=np.ones((6, 3), np.int32),
        defaulted=np.zeros((6, 3), bool),
        reward_name="stream30",
        reward_version=2,
    )
    with ParquetLog(tmp_path, clock=FakeClock()) as log:
        log.append(rec)
    frame = read_log(tmp_path)
    assert frame["request_id"].tolist() == batch.request_id.tolist()
    assert [len(x) for x in frame["candidate_key"]] == [20] * 6
    np.testing.assert_array_equal(np.stack(frame["shown"].to_numpy()), sl.shown[:, :3])
    np.testing.assert_allclose(
        np.stack(frame["propensity"].to_numpy()), sl.propensity[:, :3], rtol=1e-6
    )
    np.testing.assert_array_equal(np.stack(frame["reward"].to_numpy()), reward)
    assert frame["reward_version"].tolist() == [2] * 6
    with pytest.raises(ValueError, match=r"reward has shape \(5, 3\)"):
        from_impressions(
            batch,
            reward=reward[:5],
            n_outcomes=np.ones((6, 3), np.int32),
            defaulted=np.zeros((6, 3), bool),
            reward_name="stream30",
            reward_version=2,
        )


def test_background_log_writes_the_same_rows_and_flush_commits_them(tmp_path: Path) -> None:
    plain, behind = tmp_path / "plain", tmp_path / "behind"
    batches = [example_records(n, ts0_ms=1_000 * i, seed=i) for i, n in enumerate([7, 0, 30, 5])]
    with ParquetLog(plain, clock=FakeClock()) as log:
        for rec in batches:
            log.append(rec)
    bg = BackgroundLog(ParquetLog(behind, clock=FakeClock()), max_pending=2)
    for rec in batches:
        bg.append(rec)
    bg.flush()  # what the daemon does before a checkpoint: every row is committed on return
    assert bg.rows_written == 42 and len(bg.committed) == 1 and not temporaries(behind)
    assert read_log(behind).equals(read_log(plain))
    bg.close()
    bg.close()  # idempotent
    bg.append(example_records(3, ts0_ms=9_000, seed=9))  # a closed log starts a new writer
    bg.close()
    assert len(read_log(behind)) == 45 and len(committed(behind)) == 2


def test_background_log_reports_a_writer_error_and_checks_shapes_at_once(tmp_path: Path) -> None:
    bg = BackgroundLog(ParquetLog(tmp_path, clock=FakeClock()))
    rec = example_records(4)
    with pytest.raises(ValueError, match=r"JoinedRecords\.context"):
        bg.append(rec._replace(context=rec.context[:2]))
    bg.append(rec)
    bg.append(example_records(4, d_track=5))  # another schema: refused by the writer thread
    with pytest.raises(RuntimeError, match="writer failed") as info:
        bg.flush()
    assert "schema" in str(info.value.__cause__)
    with pytest.raises(RuntimeError, match="writer failed"):
        bg.append(rec)  # nothing more is written after a failure
    with pytest.raises(RuntimeError, match="writer failed"):
        bg.close()
    ParquetLog(tmp_path, clock=FakeClock()).close()  # the failed writer let go of its id


def synthetic_plays(n: int, ts0: int, seed: int) -> ModelPlays:
    """``n`` plays with outcomes drawn to match their predictions (a calibrated model)."""
    rng = np.random.default_rng(seed)
    p = np.sort(rng.uniform(0.05, 0.95, (n, 3)), axis=1).astype(np.float32)
    u = rng.random(n)
    duration = np.full(n, 200_000, np.int64)
    # skipped within 5 s, before 30 s, before the end, or played to the end, per p
    ms = np.where(
        u < p[:, 0], 2_000, np.where(u < p[:, 1], 20_000, np.where(u < p[:, 2], 100_000, 200_000))
    )
    reason = np.where(ms < 200_000, 1, 0).astype(np.int8)  # rewards.REASONS: 0 trackdone, 1 fwdbtn
    return ModelPlays(
        ts_ms=ts0 + np.arange(n, dtype=np.int64),
        request_key=rng.integers(1, 2**62, n).astype(np.uint64),
        position=np.zeros(n, np.int32),
        track_id=rng.integers(0, 100, n).astype(np.int32),
        ms_played=ms.astype(np.int64),
        duration_ms=duration,
        reason_end=reason,
        saved=np.zeros(n, bool),
        censored=np.zeros(n, bool),
        p_skip=p,
        p_complete=(1 - p[:, 2]).astype(np.float32),
    )


def test_rewards_report_reads_the_daemons_plays_once_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reward model's plays in ``<log.dir>/reward-plays``, some written twice (a restart
    replays from its checkpoint): ``encore rewards report LOG_DIR`` scores each play once."""
    from streaming.evaluate.reward_models import main, read_plays

    plays = synthetic_plays(3000, ts0=1_000, seed=4)
    with ParquetLog(tmp_path / PLAYS_DIR, rows_per_file=1000, clock=lambda: 0) as log:
        log.append_table(plays_table(plays, "survival"))
        again = ModelPlays(*(x[2000:] for x in plays))  # replayed after a restart
        log.append_table(plays_table(again, "survival"))
    frame = read_plays(tmp_path)
    assert len(frame) == 3000 and frame["ts_ms"].is_monotonic_increasing
    assert (frame["model"] == "survival").all()
    np.testing.assert_allclose(frame["p_skip_2"].to_numpy(), plays.p_skip[:, 1])
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "survival" in line]
    assert len(rows) == 4 and all("3,000" in line for line in rows)  # four heads, each play once
    assert (tmp_path / "r.png").stat().st_size > 0


def test_rewards_report_says_what_to_set_when_the_log_has_no_plays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streaming.evaluate.reward_models import main

    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no reward-model plays" in err and "log.reward_plays" in err
