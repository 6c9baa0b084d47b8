"""Generic long-table adapter: column mapping, 1-based positions, string times, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rankgym.logs.errors import LogValidationError
from rankgym.logs.session_log import SessionLog
from rankgym.logs.table import TableSource

MAPPING = {
    "request_id": "qid",
    "user_id": "uid",
    "timestamp": "ts",
    "item_id": "doc",
    "position": "rank",
    "click": "clicked",
    "query": "q",
    "item_text": "title",
}


def _raw() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "qid": [10, 10, 10, 11, 11, 12],
            "uid": ["a", "a", "a", "a", "a", "b"],
            "ts": ["2024-01-02 10:00:00"] * 3
            + ["2024-01-02 10:05:00"] * 2
            + ["2024-01-03 08:00:00"],
            "doc": [7, 8, 9, 8, 7, 9],
            "rank": [1, 2, 3, 1, 2, 1],
            "clicked": [0, 1, 0, 0, 0, 1],
            "q": ["red shoes"] * 3 + ["shoes"] * 2 + ["hat"],
            "title": ["Shoe A", "Shoe B", "Hat C", "Shoe B", "Shoe A", "Hat C"],
        }
    )


@pytest.fixture
def csv_path(tmp_path: Path) -> str:
    path = tmp_path / "log.csv"
    _raw().to_csv(path, index=False)
    return str(path)


def _source(path: str, **kw: object) -> TableSource:
    return TableSource(
        impressions=path, columns=MAPPING, position_base=1, time_format="%Y-%m-%d %H:%M:%S", **kw
    )


def test_csv_mapping_positions_times(csv_path: str) -> None:
    log = _source(csv_path).build()
    assert (log.n_requests, log.n_impressions, log.n_items, log.n_users) == (3, 6, 3, 2)
    assert list(log.position) == [0, 1, 2, 0, 1, 0]
    assert list(log.request_ids) == ["10", "11", "12"]
    assert list(log.item_ids[log.item]) == ["7", "8", "9", "8", "7", "9"]
    assert int(log.click.sum()) == 2
    assert log.request_timestamp[0] == int(
        pd.Timestamp("2024-01-02 10:00:00", tz="UTC").timestamp()
    )
    assert sorted(log.query_texts) == ["hat", "red shoes", "shoes"]
    assert dict(zip(log.item_ids, log.item_texts, strict=True)) == {
        "7": "Shoe A",
        "8": "Shoe B",
        "9": "Hat C",
    }
    assert np.isnan(log.propensity).all()
    assert log.n_sessions == 3  # no session column: one session per request


def test_parquet_with_items_users_and_round_trip(tmp_path: Path) -> None:
    raw = _raw().rename(columns={"qid": "request_id", "uid": "user_id", "doc": "item_id"})
    raw["ts"] = pd.to_datetime(raw["ts"])
    raw["session_id"] = raw["user_id"]
    raw["propensity"] = 0.5
    raw.drop(columns=["title"]).to_parquet(tmp_path / "log.parquet")
    pd.DataFrame(
        {"item_id": ["7", "8", "9"], "text": ["x", "y", "z"], "price": [1.0, 2.0, 3.0]}
    ).to_parquet(tmp_path / "items.parquet")
    pd.DataFrame({"user_id": ["a", "b"], "text": ["", "new"], "history": ["9 7", ""]}).to_csv(
        tmp_path / "users.csv", index=False
    )
    src = TableSource(
        impressions=str(tmp_path / "log.parquet"),
        items=str(tmp_path / "items.parquet"),
        users=str(tmp_path / "users.csv"),
        columns={"timestamp": "ts", "position": "rank", "click": "clicked", "query": "q"},
        position_base=1,
    )
    log = src.build()
    assert log.n_sessions == 2 and list(np.diff(log.session_offsets)) == [2, 1]
    np.testing.assert_allclose(log.propensity, 0.5)
    assert list(log.item_features["price"]) == [1.0, 2.0, 3.0]
    a = list(log.user_ids).index("a")
    assert list(log.item_ids[log.user_history(a)]) == ["9", "7"]
    log.write(tmp_path / "out")
    back = SessionLog.read(tmp_path / "out")
    for name in (
        "item",
        "position",
        "click",
        "propensity",
        "request_offsets",
        "request_timestamp",
        "user_history_items",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(log, name))


def test_missing_mapped_column_names_file_and_columns(csv_path: str) -> None:
    src = TableSource(impressions=csv_path, columns={**MAPPING, "click": "clk"}, time_format="%Y")
    with pytest.raises(LogValidationError, match=r"log.csv, column 'clk'.*columns: qid, uid, ts"):
        src.build()


def test_bad_time_row_named(tmp_path: Path) -> None:
    raw = _raw()
    raw.loc[4, "ts"] = "02/01/2024 10:05"
    raw.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(LogValidationError, match="row 4, column 'ts'.*'02/01/2024 10:05'"):
        _source(str(tmp_path / "log.csv")).build()


def test_string_times_need_format(csv_path: str) -> None:
    with pytest.raises(LogValidationError, match="set time_format"):
        TableSource(impressions=csv_path, columns=MAPPING, position_base=1).build()


def test_zero_based_default_rejects_nothing_but_keeps_positions(csv_path: str) -> None:
    log = _source(csv_path, name="t").build()
    log0 = TableSource(
        impressions=csv_path, columns=MAPPING, time_format="%Y-%m-%d %H:%M:%S"
    ).build()
    np.testing.assert_array_equal(log0.position, log.position + 1)


def test_bad_arguments(csv_path: str) -> None:
    with pytest.raises(ValueError, match="unknown canonical name.*'score'.*allowed: request_id"):
        TableSource(impressions=csv_path, columns={"score": "s"})
    with pytest.raises(ValueError, match="position_base=2"):
        TableSource(impressions=csv_path, position_base=2)
    with pytest.raises(ValueError, match="impressions='log.json'"):
        TableSource(impressions="log.json")
