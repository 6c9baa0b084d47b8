"""MIND adapter: the committed fixture in the real behaviors.tsv / news.tsv layout."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from rankgym.logs.errors import LogValidationError
from rankgym.logs.mind import MINDSource
from rankgym.logs.session_log import SessionLog

FIXTURE = Path(__file__).parent.parent / "fixtures" / "mind"


@pytest.fixture
def log() -> SessionLog:
    return MINDSource(path=str(FIXTURE)).build()


def _copy_with(tmp_path: Path, behaviors: str) -> str:
    shutil.copy(FIXTURE / "news.tsv", tmp_path / "news.tsv")
    (tmp_path / "behaviors.tsv").write_text(behaviors)
    return str(tmp_path)


def test_counts_and_labels(log: SessionLog) -> None:
    assert (log.n_requests, log.n_impressions, log.n_items, log.n_users) == (4, 11, 6, 2)
    assert int(log.click.sum()) == 4
    assert np.isnan(log.propensity).all()
    assert list(log.query_texts) == [""]
    # requests ordered by session start then time: U1 on 11/11 (rows 1, 3), U2, U1 on 11/13
    assert list(log.request_ids) == ["1", "3", "2", "4"]
    assert list(log.session_ids) == ["U1-2019-11-11", "U2-2019-11-12", "U1-2019-11-13"]
    assert list(np.diff(log.session_offsets)) == [2, 1, 1]
    assert list(log.request_sizes) == [3, 2, 2, 4]
    assert list(log.position) == [0, 1, 2, 0, 1, 0, 1, 0, 1, 2, 3]
    shown = log.item_ids[log.item]
    assert list(shown[:3]) == ["N3", "N4", "N5"]
    assert list(log.click[:3]) == [0, 1, 0]
    assert list(shown[-4:]) == ["N6", "N3", "N4", "N5"]
    assert list(log.click[-4:]) == [0, 0, 0, 1]


def test_times_parsed_with_am_pm(log: SessionLog) -> None:
    expect = [
        datetime(2019, 11, 11, 9, 5, 58, tzinfo=UTC),
        datetime(2019, 11, 11, 15, 20, 1, tzinfo=UTC),
        datetime(2019, 11, 12, 18, 11, 30, tzinfo=UTC),
        datetime(2019, 11, 13, 0, 1, 0, tzinfo=UTC),  # 12:01:00 AM is past midnight
    ]
    assert list(log.request_timestamp) == [int(t.timestamp()) for t in expect]


def test_item_text_and_features(log: SessionLog) -> None:
    text = dict(zip(log.item_ids, log.item_texts, strict=True))
    assert (
        text["N1"] == "Bills beat the Jets in overtime. Buffalo won 24-21 after a late field goal."
    )
    assert text["N2"] == "What is next for the city budget? The council meets on Monday."
    assert text["N3"] == "The royal family at Christmas"  # no abstract: title only
    assert list(log.item_features["category"][:2]) == ["sports", "news"]


def test_history_latest_row_unknown_ids_dropped(log: SessionLog) -> None:
    u1, u2 = list(log.user_ids).index("U1"), list(log.user_ids).index("U2")
    # U1's latest row (11/13) lists "N1 N7 N2"; N7 is not in news.tsv and is dropped
    assert list(log.item_ids[log.user_history(u1)]) == ["N1", "N2"]
    assert len(log.user_history(u2)) == 0  # empty history field
    assert log.meta["history_items_dropped"] == 1
    assert log.meta["source"] == "mind"
    assert log.meta["params"]["max_impressions"] is None


def test_max_impressions_reads_first_rows() -> None:
    log = MINDSource(path=str(FIXTURE), max_impressions=2).build()
    assert (log.n_requests, log.n_impressions) == (2, 5)
    assert sorted(log.request_ids) == ["1", "2"]
    assert log.meta["history_items_dropped"] == 0


def test_write_read_round_trip(log: SessionLog, tmp_path: Path) -> None:
    log.write(tmp_path / "mind")
    back = SessionLog.read(tmp_path / "mind")
    for name in (
        "item",
        "position",
        "click",
        "request_offsets",
        "session_offsets",
        "request_timestamp",
        "user_history_items",
        "user_history_offsets",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(log, name))
    np.testing.assert_array_equal(back.item_texts, log.item_texts)
    assert back.meta["history_items_dropped"] == 1


@pytest.mark.parametrize(
    ("line", "row", "column", "match"),
    [
        ("9\tU3\t11/14/2019 1:00:00 PM\t\tN1-1 N2-x\n", 1, "impressions", "'N2-x'"),
        ("9\tU3\t11/14/2019 1:00:00 PM\t\tN1 N2\n", 1, "impressions", "'N1'"),
        ("9\tU3\t2019-11-14 13:00:00\t\tN1-1\n", 1, "time", "'2019-11-14 13:00:00'"),
        ("9\tU3\t11/14/2019 1:00:00 PM\tN1-1\n", 1, None, "4 tab-separated fields"),
        ("9\tU3\t11/14/2019 1:00:00 PM\t\tN42-1\n", 1, "impressions", "'N42' is not in news"),
    ],
)
def test_malformed_rows_named(
    tmp_path: Path, line: str, row: int, column: str | None, match: str
) -> None:
    good = "1\tU1\t11/11/2019 9:05:58 AM\tN1\tN3-0 N4-1\n"
    path = _copy_with(tmp_path, good + line + good.replace("1\tU1", "2\tU2", 1))
    with pytest.raises(LogValidationError, match=match) as info:
        MINDSource(path=path).build()
    assert (info.value.file, info.value.row, info.value.column) == ("behaviors.tsv", row, column)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_impressions=0"):
        MINDSource(path=str(FIXTURE), max_impressions=0)
    with pytest.raises(ValueError, match="path='/nonexistent'"):
        MINDSource(path="/nonexistent")
