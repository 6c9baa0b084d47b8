"""SessionLog: layout, round trip, slicing, splits and statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankgym.logs import SessionLog
from rankgym.logs.session_log import ranges
from rankgym.logs.synthetic import SyntheticWorld

ARRAYS = [
    "item_ids", "item_texts", "user_ids", "user_texts", "user_history_offsets",
    "user_history_items", "query_texts", "session_ids", "session_offsets", "request_ids",
    "request_user", "request_query", "request_timestamp", "request_offsets", "item", "position",
    "click", "propensity", "prefix_propensity",
]  # fmt: skip


def assert_same(a: SessionLog, b: SessionLog) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_ranges_matches_python_loop() -> None:
    starts, lengths = np.array([5, 0, 9, 2]), np.array([3, 0, 1, 2])
    expected = [i for s, n in zip(starts, lengths, strict=True) for i in range(s, s + n)]
    assert ranges(starts, lengths).tolist() == expected


def test_layout_is_sorted_and_contiguous(small_world) -> None:
    log, _ = small_world
    assert log.session_offsets[0] == 0 and log.session_offsets[-1] == log.n_requests
    assert log.request_offsets[-1] == log.n_impressions
    # impressions sorted by position inside every request, requests by time inside sessions
    req = log.impression_request
    same_req = req[1:] == req[:-1]
    assert (np.diff(log.position)[same_req] > 0).all()
    sess = log.request_session
    same_sess = sess[1:] == sess[:-1]
    assert (np.diff(log.request_timestamp)[same_sess] >= 0).all()
    starts = log.request_timestamp[log.session_offsets[:-1]]
    assert (np.diff(starts) >= 0).all()


def test_write_read_round_trip(small_world, tmp_path: Path) -> None:
    log, _ = small_world
    log.write(tmp_path / "ds")
    back = SessionLog.read(tmp_path / "ds")
    assert_same(log, back)
    assert back.meta["source"] == "synthetic" and back.meta["schema_version"] == 1
    assert back.meta["counts"]["impressions"] == log.n_impressions
    assert set(back.item_features) == {"category", "price_band"}


def test_failed_write_leaves_previous_directory(small_world, tmp_path: Path) -> None:
    log, _ = small_world
    target = tmp_path / "ds"
    log.write(target)
    before = (target / "impressions.parquet").read_bytes()
    broken = log.select_sessions(np.arange(3))
    broken.click = broken.click[:-1]  # inconsistent lengths: writing fails half-way
    with pytest.raises(Exception):  # noqa: B017 - any failure must leave the old directory
        broken.write(target)
    assert (target / "impressions.parquet").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary leftovers


def test_select_requests_keeps_the_chosen_requests_and_drops_empty_sessions(
    small_world,
) -> None:
    log, _ = small_world
    keep = np.zeros(log.n_requests, dtype=bool)
    keep[log.session_offsets[1:4]] = True  # the first request of sessions 1-3
    keep[log.session_offsets[1] + 1 : log.session_offsets[2]] = True  # all of session 1
    sub = log.select_requests(keep)
    assert sub.request_ids.tolist() == log.request_ids[keep].tolist()
    assert sub.session_ids.tolist() == log.session_ids[1:4].tolist()
    whole = log.session_offsets[2] - log.session_offsets[1]
    np.testing.assert_array_equal(np.diff(sub.session_offsets), [whole, 1, 1])
    np.testing.assert_array_equal(
        sub.click, np.concatenate([log.click[log.request_offsets[r] : log.request_offsets[r + 1]]
                                   for r in np.flatnonzero(keep)])
    )  # fmt: skip
    assert sub.item_ids is log.item_ids and sub.query_texts is log.query_texts
    with pytest.raises(ValueError, match="keep has shape"):
        log.select_requests(keep[:-1])


def test_select_sessions_is_indexing(small_world) -> None:
    log, _ = small_world
    pick = np.array([7, 2, 11])
    sub = log.select_sessions(pick)
    assert sub.session_ids.tolist() == log.session_ids[pick].tolist()
    for k, s in enumerate(pick):
        r0, r1 = log.session_offsets[s], log.session_offsets[s + 1]
        assert sub.request_ids[sub.session_offsets[k] : sub.session_offsets[k + 1]].tolist() == (
            log.request_ids[r0:r1].tolist()
        )
        rows = slice(log.request_offsets[r0], log.request_offsets[r1])
        q0, q1 = (
            sub.request_offsets[sub.session_offsets[k]],
            sub.request_offsets[sub.session_offsets[k + 1]],
        )
        np.testing.assert_array_equal(sub.item[q0:q1], log.item[rows])
        np.testing.assert_array_equal(sub.click[q0:q1], log.click[rows])
    assert sub.item_ids is log.item_ids  # shared tables keep codes aligned


@pytest.mark.parametrize("by", ["session", "time"])
def test_split_partitions_sessions(small_world, by: str) -> None:
    log, _ = small_world
    train, test = log.split(0.25, by=by, seed=3)
    assert train.n_sessions + test.n_sessions == log.n_sessions
    assert test.n_sessions == round(0.25 * log.n_sessions)
    assert not set(train.session_ids) & set(test.session_ids)
    assert train.n_impressions + test.n_impressions == log.n_impressions
    if by == "time":  # every test session starts no earlier than every training session
        start = lambda lg: lg.request_timestamp[lg.session_offsets[:-1]]  # noqa: E731
        assert start(test).min() >= start(train).max()
    again = log.split(0.25, by=by, seed=3)[1]
    assert again.session_ids.tolist() == test.session_ids.tolist()


def test_split_rejects_bad_arguments(small_world) -> None:
    log, _ = small_world
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.5"):
        log.split(1.5)
    with pytest.raises(
        ValueError, match="split by must be 'session', 'time' or 'user', got 'item'"
    ):
        log.split(0.2, by="item")


def test_stats_numbers(small_world) -> None:
    log, _ = small_world
    stats = log.stats()
    assert stats["impressions"] == log.n_impressions == int(np.diff(log.request_offsets).sum())
    assert stats["ctr"] == pytest.approx(log.click.mean(), abs=1e-5)
    assert stats["ctr_by_position"][0] == pytest.approx(log.click[log.position == 0].mean(), 1e-4)
    cfg = SyntheticWorld()
    sizes = stats["candidates_per_request"]
    assert cfg.min_list <= sizes["min"] <= sizes["mean"] <= sizes["max"] <= cfg.max_list
    assert stats["propensity_share"] == 1.0


def test_chunked_input_with_different_dictionaries_and_shuffled_rows(small_world) -> None:
    """Arrow tables in several chunks (each with its own dictionary), rows in any order."""
    import pyarrow as pa

    log, _ = small_world
    impressions, items, users = log.to_tables()
    order = np.random.default_rng(0).permutation(impressions.num_rows)
    shuffled = impressions.take(pa.array(order))
    half = shuffled.num_rows // 2
    chunks = [shuffled.slice(0, half), shuffled.slice(half)]
    rebuilt = pa.concat_tables(
        [pa.table({c: t[c].combine_chunks().cast(pa.string()).dictionary_encode()
                   if pa.types.is_dictionary(t[c].type) else t[c] for c in t.column_names})
         for t in chunks]
    )  # fmt: skip
    assert rebuilt["item_id"].num_chunks == 2
    assert_same(log, SessionLog.from_tables(rebuilt, items, users))


def test_atomic_directory_keeps_a_live_writers_temporary(tmp_path: Path) -> None:
    import os

    from rankgym.logs.atomic import atomic_directory

    target = tmp_path / "data"
    live = tmp_path / f".data.tmp-{os.getpid()}-aaaaaaaa"  # a writer still running (us)
    dead = tmp_path / ".data.tmp-999999999-bbbbbbbb"  # a killed writer's leftover
    live.mkdir()
    dead.mkdir()
    with atomic_directory(target, marker="meta.json") as tmp:
        (tmp / "meta.json").write_text("{}")
    assert live.is_dir() and not dead.exists()
    assert (target / "meta.json").is_file()
