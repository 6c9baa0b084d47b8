"""Bad logged data is rejected with the file, first offending row and column in the message."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rankgym.logs import LogValidationError, SessionLog


def good_impressions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": ["s1", "s1", "s1", "s2", "s2"],
            "request_id": ["r1", "r1", "r2", "r3", "r3"],
            "user_id": ["u1", "u1", "u1", "u2", "u2"],
            "timestamp": np.array([10, 10, 20, 5, 5], dtype=np.int64),
            "query": ["boots", "boots", "", "lamp", "lamp"],
            "item_id": ["a", "b", "c", "a", "c"],
            "position": [0, 1, 0, 0, 1],
            "click": [1, 0, 0, 0, 1],
            "propensity": [0.5, 0.25, None, 0.3, 0.2],
        }
    )


def good_items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": ["a", "b", "c"], "text": ["red boots", "blue boots", "lamp"]})


def good_users() -> pd.DataFrame:
    return pd.DataFrame(
        {"user_id": ["u1", "u2"], "text": ["likes boots", ""], "history": [["a"], []]}
    )


def write_dataset(root: Path, imp: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> Path:
    root.mkdir()
    imp.to_parquet(root / "impressions.parquet", index=False)
    items.to_parquet(root / "items.parquet", index=False)
    users.to_parquet(root / "users.parquet", index=False)
    (root / "meta.json").write_text(json.dumps({"schema_version": 1, "source": "test"}))
    return root


def set_value(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.astype({column: object}) if value is None or isinstance(value, str) else df
        df.loc[row, column] = value
        return df

    return mutate


# (case id, table to mutate, mutation, expected message regex)
BAD_INPUTS = [
    (
        "missing column",
        "impressions",
        lambda df: df.drop(columns=["click"]),
        r"impressions\.parquet, column 'click': missing column\(s\) 'click'; required: .*found:",
    ),
    (
        "wrong dtype",
        "impressions",
        lambda df: df.assign(position=df.position.astype(str)),
        r"impressions\.parquet, column 'position': wrong dtype (large_)?string; expected integer",
    ),
    (
        "NaN click",
        "impressions",
        lambda df: df.assign(click=[1.0, 0.0, np.nan, 0.0, 1.0]),
        r"impressions\.parquet, row 2, column 'click': click is NaN or null; allowed values: 0, 1",
    ),
    (
        "non-binary click",
        "impressions",
        set_value("click", 3, 2),
        r"impressions\.parquet, row 3, column 'click': click value 2 is not binary; "
        r"allowed values: 0, 1",
    ),
    (
        "duplicate position",
        "impressions",
        set_value("position", 4, 0),
        r"impressions\.parquet, row 4, column 'position': duplicate position 0 in request 'r3' "
        r"\(also at row 3\)",
    ),
    (
        "negative position",
        "impressions",
        set_value("position", 2, -1),
        r"impressions\.parquet, row 2, column 'position': position -1 is negative",
    ),
    (
        "unknown item",
        "impressions",
        set_value("item_id", 1, "zz"),
        r"impressions\.parquet, row 1, column 'item_id': item_id 'zz' is not in items\.parquet",
    ),
    (
        "request with no impressions",
        "impressions",
        set_value("item_id", 2, None),
        r"impressions\.parquet, row 2, column 'item_id': request 'r2' has no impressions",
    ),
    (
        "propensity zero",
        "impressions",
        set_value("propensity", 1, 0.0),
        r"impressions\.parquet, row 1, column 'propensity': propensity 0\.0 is outside \(0, 1\]",
    ),
    (
        "propensity above one",
        "impressions",
        set_value("propensity", 4, 1.5),
        r"impressions\.parquet, row 4, column 'propensity': propensity 1\.5 is outside \(0, 1\]",
    ),
    (
        "prefix propensity above one",
        "impressions",
        lambda df: df.assign(prefix_propensity=0.5).pipe(set_value("prefix_propensity", 2, 2.0)),
        r"impressions\.parquet, row 2, column 'prefix_propensity': prefix_propensity 2\.0 is "
        r"outside \(0, 1\]",
    ),
    (
        "empty dataset",
        "impressions",
        lambda df: df.iloc[:0],
        r"impressions\.parquet: the dataset is empty \(0 impressions\)",
    ),
    (
        "request split across users",
        "impressions",
        set_value("user_id", 1, "u2"),
        r"impressions\.parquet, row 1, column 'user_id': request 'r1' has rows with different "
        r"user_id values",
    ),
    (
        "null session",
        "impressions",
        set_value("session_id", 3, None),
        r"impressions\.parquet, row 3, column 'session_id': session_id is null",
    ),
    (
        "duplicate item id",
        "items",
        lambda df: pd.concat([df, df.iloc[[1]]], ignore_index=True),
        r"items\.parquet, row 3, column 'item_id': duplicate item_id 'b' \(first at row 1\)",
    ),
    (
        "unknown history item",
        "users",
        lambda df: df.assign(history=[["a"], ["c", "nope"]]),
        r"users\.parquet, row 1, column 'history': history item 'nope' is not in items\.parquet",
    ),
    (
        "unknown user",
        "users",
        lambda df: df.iloc[:1],
        r"impressions\.parquet, row 3, column 'user_id': user_id 'u2' is not in users\.parquet",
    ),
]


@pytest.mark.parametrize(
    ("table", "mutate", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_rejected_with_file_row_column(
    tmp_path: Path, table: str, mutate: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    frames = {"impressions": good_impressions(), "items": good_items(), "users": good_users()}
    frames[table] = mutate(frames[table])
    root = write_dataset(tmp_path / "ds", frames["impressions"], frames["items"], frames["users"])
    with pytest.raises(LogValidationError, match=message):
        SessionLog.read(root)
    # the same tables in memory fail the same way, and nothing is written
    out = tmp_path / "out"
    with pytest.raises(LogValidationError, match=message):
        SessionLog.from_tables(frames["impressions"], frames["items"], frames["users"]).write(out)
    assert not out.exists()


def test_unknown_schema_version(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", good_impressions(), good_items(), good_users())
    (root / "meta.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(
        LogValidationError, match=r"meta\.json: key 'schema_version': unknown version 99; "
    ):
        SessionLog.read(root)


def test_missing_file_is_named(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", good_impressions(), good_items(), good_users())
    (root / "items.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"items\.parquet: missing"):
        SessionLog.read(root)


def test_good_input_passes_and_errors_carry_fields() -> None:
    log = SessionLog.from_tables(good_impressions(), good_items(), good_users())
    assert log.n_impressions == 5
    bad = good_impressions()
    bad.loc[3, "click"] = 7
    with pytest.raises(LogValidationError) as info:
        SessionLog.from_tables(bad, good_items())
    assert (info.value.file, info.value.row, info.value.column) == (
        "impressions.parquet",
        3,
        "click",
    )
