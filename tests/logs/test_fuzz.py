"""Fuzzing the data layer: corrupted logs are accepted or refused with LogValidationError, never
another exception, through every entry point (tables, CSV and Parquet files, dataset dirs)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankgym.logs import LogValidationError, SessionLog
from rankgym.logs.table import TableSource

COLUMNS = ["session_id", "request_id", "user_id", "timestamp", "query", "item_id", "position",
           "click", "propensity"]  # fmt: skip
ODD_VALUES = [None, "", "x", -1, 2**63, 10**31, "1" * 31, 1.5, float("nan"), float("inf"), True,
              "\ud800", "é", [1, 2], 2**31]  # fmt: skip


def valid_log(n_requests: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A small valid long table, its items and users."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_requests):
        shown = rng.choice(8, size=int(rng.integers(1, 4)), replace=False)
        for pos, item in enumerate(shown):
            rows.append({"session_id": f"s{r // 2}", "request_id": f"r{r}",
                         "user_id": f"u{r % 3}", "timestamp": 1_700_000_000 + 10 * r,
                         "query": "red shoes" if r % 2 else "", "item_id": f"i{item}",
                         "position": pos, "click": int(rng.random() < 0.3),
                         "propensity": 0.5})  # fmt: skip
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(8)],
                          "text": [f"item {k}" for k in range(8)]})  # fmt: skip
    users = pd.DataFrame({"user_id": ["u0", "u1", "u2"], "text": ["", "likes red", ""],
                          "history": [["i1"], [], ["i2", "i3"]]})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS), items, users


corruption = st.one_of(
    st.tuples(st.just("cell"), st.sampled_from(COLUMNS), st.integers(0, 50),
              st.sampled_from(ODD_VALUES)),
    st.tuples(st.just("drop"), st.sampled_from(COLUMNS)),
    st.tuples(st.just("duplicate"), st.integers(0, 50)),
    st.tuples(st.just("empty"),),
    st.tuples(st.just("item_cell"), st.sampled_from(["item_id", "text"]), st.integers(0, 7),
              st.sampled_from(ODD_VALUES)),
    st.tuples(st.just("user_text_null"),),
)  # fmt: skip


def corrupt(tables: tuple[pd.DataFrame, ...], how: tuple) -> tuple[pd.DataFrame, ...]:
    imp, items, users = (t.copy() for t in tables)
    kind = how[0]
    if kind == "cell":
        _, column, row, value = how
        imp[column] = imp[column].astype(object)
        imp.at[row % len(imp), column] = value
    elif kind == "drop":
        imp = imp.drop(columns=[how[1]])
    elif kind == "duplicate":
        imp = pd.concat([imp, imp.iloc[[how[1] % len(imp)]]], ignore_index=True)
    elif kind == "empty":
        imp = imp.iloc[:0]
    elif kind == "item_cell":
        _, column, row, value = how
        items[column] = items[column].astype(object)
        items.at[row, column] = value
    else:
        users["text"] = None
    return imp, items, users


def accepted_or_refused(build) -> None:
    with contextlib.suppress(LogValidationError):
        build()


FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@FAST
@given(seed=st.integers(0, 3), how=corruption)
def test_from_tables(seed: int, how: tuple) -> None:
    imp, items, users = corrupt(valid_log(6, seed), how)
    accepted_or_refused(lambda: SessionLog.from_tables(imp, items, users))


@FAST
@given(seed=st.integers(0, 3), how=corruption, fmt=st.sampled_from(["csv", "parquet"]))
def test_table_adapter_files(seed: int, how: tuple, fmt: str) -> None:
    imp, _, _ = corrupt(valid_log(6, seed), how)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"log.{fmt}"
        try:
            if fmt == "csv":
                path.write_bytes(imp.to_csv(index=False).encode("utf-8", "surrogatepass"))
            else:
                imp.to_parquet(path)
        except Exception:  # the writer cannot store this table: nothing to read back
            return
        columns = {"session_id": "session_id", "query": "query", "propensity": "propensity"}
        columns = {k: v for k, v in columns.items() if v in imp.columns}
        accepted_or_refused(lambda: TableSource(impressions=str(path), columns=columns).build())


@FAST
@given(
    target=st.sampled_from(["impressions.parquet", "items.parquet", "users.parquet", "meta.json"]),
    mode=st.sampled_from(["truncate", "overwrite", "empty", "garbage"]),
    where=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_read_a_damaged_dataset_directory(dataset: Path, target: str, mode: str, where: float,
                                          seed: int) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "data"
        shutil.copytree(dataset, copy)
        file = copy / target
        data = bytearray(file.read_bytes())
        at = int(where * max(len(data) - 1, 0))
        rng = np.random.default_rng(seed)
        if mode == "truncate":
            data = data[:at]
        elif mode == "overwrite":
            chunk = rng.integers(0, 256, min(64, len(data) - at)).astype(np.uint8).tobytes()
            data[at : at + len(chunk)] = chunk
        elif mode == "empty":
            data = bytearray()
        else:
            data = bytearray(rng.integers(0, 256, 200).astype(np.uint8).tobytes())
        file.write_bytes(bytes(data))
        accepted_or_refused(lambda: SessionLog.read(copy))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    imp, items, users = valid_log(12, 0)
    out = tmp_path_factory.mktemp("fuzz") / "data"
    SessionLog.from_tables(imp, items, users, meta={"source": "fuzz"}).write(out)
    json.loads((out / "meta.json").read_text())
    return out


def test_the_reported_cases_are_one_line_errors(tmp_path: Path) -> None:
    """The reported broken files (header-only, empty, not UTF-8, a ragged row, a huge
    position), each through the file that caused it."""
    imp, items, users = valid_log(6, 0)
    cases = {
        "header-only.csv": imp.iloc[:0].to_csv(index=False).encode(),
        "zero-bytes.csv": b"",
        "latin1.csv": imp.to_csv(index=False).encode() + b"\xff\xfe",
        "extra-field.csv": imp.to_csv(index=False).encode() + b"a,b,c,d,e,f,g,h,i,j,k\n",
    }
    big = imp.copy()
    big["position"] = big["position"].astype(object)
    big.at[0, "position"] = "1" * 31
    cases["huge-position.csv"] = big.to_csv(index=False).encode()
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(LogValidationError) as err:
            TableSource(impressions=str(path)).build()
        assert str(err.value).startswith(str(path)), (name, str(err.value))
        assert "\n" not in str(err.value)
    top = imp.copy()
    top["position"] = top["position"].astype("uint64")
    top.at[0, "position"] = 2**63
    with pytest.raises(LogValidationError, match=r"position 9223372036854775808 is too large"):
        SessionLog.from_tables(top, items, users)
