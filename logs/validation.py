"""Validation and integer encoding of the canonical tables, vectorised (no loop per row).

Every check reports the *first* offending row (0-based, in file order) and the column, through
:class:`~rankgym.logs.errors.LogValidationError`. ``encode_tables`` returns the keyword arguments of
:class:`~rankgym.logs.session_log.SessionLog`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankgym.logs.errors import LogValidationError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
CANDIDATES_FILE = "candidates.parquet"  # optional: unshown candidates (rankgym.logs.candidates)
IMPRESSIONS_FILE = "impressions.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
META_FILE = "meta.json"

# column -> kind; kinds are checked by _check_kind
IMPRESSION_COLUMNS = {
    "session_id": "string",
    "request_id": "string",
    "user_id": "string",
    "timestamp": "time",
    "query": "string",
    "item_id": "string",
    "position": "integer",
    "click": "binary",
}
# optional logging-policy probabilities: of this item at this position (item-position), and of
# the whole ranking from the top down to this position (prefix; the slate's at the last one)
PROPENSITY_COLUMNS = ("propensity", "prefix_propensity")
_KIND_HELP = {
    "string": "string",
    "integer": "integer",
    "binary": "integer, boolean or float holding 0/1",
    "time": "integer unix seconds or timestamp",
    "float": "float",
}
_SECONDS_PER_UNIT = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def check_meta(meta: Any) -> None:
    """Reject a ``meta.json`` that is not an object or has an unknown ``schema_version``."""
    if not isinstance(meta, dict):
        raise LogValidationError(META_FILE, f"expected a JSON object, got {type(meta).__name__}")
    version = meta.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise LogValidationError(
            META_FILE,
            f"key 'schema_version': unknown version {version!r}; "
            f"supported: {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}",
        )


def encode_tables(impressions: pa.Table, items: pa.Table, users: pa.Table | None) -> dict[str, Any]:
    """Validate the canonical tables and return integer-coded arrays (``SessionLog`` fields)."""
    item_ids, item_texts, item_features = _encode_items(items)
    item_lookup = pa.array(item_ids, pa.string())
    if users is not None:
        user_ids, user_texts, hist_offsets, hist_items, user_features = _encode_users(
            users, item_lookup
        )
    _require_columns(impressions, IMPRESSIONS_FILE, IMPRESSION_COLUMNS)
    if impressions.num_rows == 0:
        raise LogValidationError(IMPRESSIONS_FILE, "the dataset is empty (0 impressions)")
    for column, kind in IMPRESSION_COLUMNS.items():
        _check_kind(impressions, IMPRESSIONS_FILE, column, kind)
    for column in PROPENSITY_COLUMNS:
        if column in impressions.column_names:
            _check_kind(impressions, IMPRESSIONS_FILE, column, "float")
    f = IMPRESSIONS_FILE

    for column in ("session_id", "request_id", "user_id", "timestamp", "position"):
        _reject_nulls(impressions, f, column)
    req, req_values = _codes(impressions["request_id"])
    sess, sess_values = _codes(impressions["session_id"])
    query, query_values = _codes(impressions["query"], null_as="")
    item_raw, item_values = _codes(impressions["item_id"])
    timestamp = _seconds(impressions["timestamp"])
    raw_position = _numpy(impressions["position"])
    if raw_position.dtype.kind == "u" and (raw_position > np.iinfo(np.int32).max).any():
        row = int(np.argmax(raw_position > np.iinfo(np.int32).max))
        raise LogValidationError(
            f, f"position {raw_position[row]} is too large", row=row, column="position"
        )
    position = raw_position.astype(np.int64)
    click = _numpy(impressions["click"])  # float with NaN where null
    propensity, prefix_propensity = (
        _numpy(impressions[c]).astype(np.float64)
        if c in impressions.column_names
        else np.full(impressions.num_rows, np.nan)
        for c in PROPENSITY_COLUMNS
    )

    # items: every impression shows a known item; a request whose rows all lack one is empty
    missing_item = item_raw < 0
    if missing_item.any():
        n_rows = np.bincount(req, minlength=len(req_values))
        n_missing = np.bincount(req, weights=missing_item, minlength=len(req_values))
        empty = (n_rows == n_missing)[req] & missing_item
        row = int(np.argmax(missing_item))
        if empty.any():
            row = int(np.argmax(empty))
            raise LogValidationError(
                f, f"request {req_values[req[row]]!r} has no impressions", row=row, column="item_id"
            )
        raise LogValidationError(f, "item_id is null", row=row, column="item_id")
    to_item = _lookup(item_values, item_lookup)
    item = to_item[item_raw]
    if (item < 0).any():
        row = int(np.argmax(item < 0))
        raise LogValidationError(
            f,
            f"item_id {item_values[item_raw[row]]!r} is not in {ITEMS_FILE}",
            row=row,
            column="item_id",
        )

    # users: known ids when a users table is given, else the distinct ids of the impressions
    user_raw, user_values = _codes(impressions["user_id"])
    if users is not None:
        user = _lookup(user_values, pa.array(user_ids, pa.string()))[user_raw]
        if (user < 0).any():
            row = int(np.argmax(user < 0))
            raise LogValidationError(
                f,
                f"user_id {user_values[user_raw[row]]!r} is not in {USERS_FILE}",
                row=row,
                column="user_id",
            )
    else:
        user, user_ids = user_raw, user_values  # renumbered by first use below

    _check_values(f, click, position)
    for column, values in zip(PROPENSITY_COLUMNS, (propensity, prefix_propensity), strict=True):
        _check_probability(f, column, values)

    # request-level columns must agree across a request's rows
    req, req_values = _densify(req, req_values)
    n_req = len(req_values)
    # files written by SessionLog.write are already in canonical order: skip the O(N log N) sorts
    by_req = np.arange(len(req)) if _nondecreasing(req) else np.argsort(req, kind="stable")
    sizes = np.bincount(req, minlength=n_req)
    first_row = by_req[np.concatenate([[0], np.cumsum(sizes)[:-1]])]
    for column, values in (
        ("session_id", sess),
        ("user_id", user),
        ("timestamp", timestamp),
        ("query", query),
    ):
        bad = values != values[first_row][req]
        if bad.any():
            row = int(np.argmax(bad))
            raise LogValidationError(
                f,
                f"request {req_values[req[row]]!r} has rows with different {column} values "
                f"(row {first_row[req[row]]} differs); a request has one {column}",
                row=row,
                column=column,
            )

    # order: sessions by start time, requests by time within a session, impressions by position
    sess, sess_values = _densify(sess, sess_values)
    r_sess = sess[first_row]
    r_time = timestamp[first_row]
    s_start = np.full(len(sess_values), np.iinfo(np.int64).max)
    np.minimum.at(s_start, r_sess, r_time)
    s_order = np.lexsort((_string_rank(sess_values, s_start), s_start))
    s_rank = np.empty_like(s_order)
    s_rank[s_order] = np.arange(len(s_order))
    r_order = np.lexsort((_string_rank(req_values, r_time, s_rank[r_sess]), r_time, s_rank[r_sess]))
    r_rank = np.empty_like(r_order)
    r_rank[r_order] = np.arange(n_req)
    row_req = r_rank[req]
    step = np.diff(row_req)
    in_order = ((step > 0) | ((step == 0) & (np.diff(position) > 0))).all()
    rows = np.arange(len(req)) if in_order else np.lexsort((position, row_req))

    sorted_req, sorted_pos = row_req[rows], position[rows]
    dup = (sorted_req[1:] == sorted_req[:-1]) & (sorted_pos[1:] == sorted_pos[:-1])
    if dup.any():
        pairs = np.stack([rows[:-1][dup], rows[1:][dup]], axis=1)
        later = pairs.max(axis=1)
        k = int(np.argmin(later))
        row, other = int(later[k]), int(pairs[k].min())
        raise LogValidationError(
            f,
            f"duplicate position {position[row]} in request {req_values[req[row]]!r} "
            f"(also at row {other})",
            row=row,
            column="position",
        )

    query_code, query_texts = _by_first_use(query[first_row][r_order], query_values)
    if users is None:  # number users by first use too, so codes never depend on row order
        r_user, user_ids = _by_first_use(user[first_row][r_order], user_ids)
        user_texts = np.full(len(user_ids), "", dtype=object)
        hist_offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        hist_items = np.zeros(0, dtype=np.int32)
        user_features = {}
    else:
        r_user = user[first_row][r_order]
    return {
        "item_ids": item_ids,
        "item_texts": item_texts,
        "user_ids": user_ids,
        "user_texts": user_texts,
        "user_history_offsets": hist_offsets,
        "user_history_items": hist_items,
        "query_texts": query_texts,
        "session_ids": sess_values[s_order],
        "session_offsets": _offsets(np.bincount(s_rank[r_sess], minlength=len(sess_values))),
        "request_ids": req_values[r_order],
        "request_user": r_user.astype(np.int32),
        "request_query": query_code.astype(np.int32),
        "request_timestamp": r_time[r_order].astype(np.int64),
        "request_offsets": _offsets(sizes[r_order]),
        "item": item[rows].astype(np.int32),
        "position": position[rows].astype(np.int32),
        "click": click[rows].astype(np.int8),
        "propensity": propensity[rows],
        "prefix_propensity": prefix_propensity[rows],
        "item_features": item_features,
        "user_features": user_features,
    }


# ---------------------------------------------------------------------- items and users tables
def _encode_items(items: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    f = ITEMS_FILE
    _require_columns(items, f, {"item_id": "string", "text": "string"})
    if items.num_rows == 0:
        raise LogValidationError(f, "the items table is empty (0 items)")
    for column in ("item_id", "text"):
        _check_kind(items, f, column, "string")
        _reject_nulls(items, f, column)
    ids = _strings(items["item_id"])
    _reject_duplicates(f, "item_id", ids)
    features = {c: items[c].to_numpy() for c in items.column_names if c not in ("item_id", "text")}
    return ids, _strings(items["text"]), features


def _encode_users(
    users: pa.Table, item_lookup: pa.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    f = USERS_FILE
    _require_columns(users, f, {"user_id": "string"})
    _check_kind(users, f, "user_id", "string")
    _reject_nulls(users, f, "user_id")
    ids = _strings(users["user_id"])
    _reject_duplicates(f, "user_id", ids)
    if "text" in users.column_names:
        _check_kind(users, f, "text", "string")
        texts = _strings(pc.fill_null(users["text"], ""))
    else:
        texts = np.full(len(ids), "", dtype=object)
    features = {
        c: users[c].to_numpy()
        for c in users.column_names
        if c not in ("user_id", "text", "history")
    }
    if "history" not in users.column_names:
        empty = np.zeros(0, dtype=np.int32)
        return ids, texts, np.zeros(len(ids) + 1, dtype=np.int64), empty, features
    history = users["history"].combine_chunks()
    if not (pa.types.is_list(history.type) or pa.types.is_large_list(history.type)):
        raise LogValidationError(
            f, f"wrong dtype {history.type}; expected a list of item ids", column="history"
        )
    history = pc.fill_null(history, pa.scalar([], history.type))
    flat = pc.list_flatten(history)
    codes = _lookup(_strings(flat), item_lookup) if len(flat) else np.zeros(0, np.int64)
    if (codes < 0).any():
        k = int(np.argmax(codes < 0))
        row = int(pc.list_parent_indices(history)[k].as_py())
        raise LogValidationError(
            f, f"history item {flat[k].as_py()!r} is not in {ITEMS_FILE}", row=row, column="history"
        )
    offsets = _offsets(_numpy(pc.list_value_length(history)).astype(np.int64))
    return ids, texts, offsets, codes.astype(np.int32), features


# ---------------------------------------------------------------------- value checks
def _check_values(f: str, click: np.ndarray, position: np.ndarray) -> None:
    if click.dtype.kind == "f" and np.isnan(click).any():
        row = int(np.argmax(np.isnan(click)))
        raise LogValidationError(
            f, "click is NaN or null; allowed values: 0, 1", row=row, column="click"
        )
    bad = (click != 0) & (click != 1)
    if bad.any():
        row = int(np.argmax(bad))
        raise LogValidationError(
            f,
            f"click value {click[row].item()!r} is not binary; allowed values: 0, 1",
            row=row,
            column="click",
        )
    if (position < 0).any():
        row = int(np.argmax(position < 0))
        raise LogValidationError(
            f,
            f"position {position[row]} is negative; positions are 0-based ranks",
            row=row,
            column="position",
        )
    if (position > np.iinfo(np.int32).max).any():
        row = int(np.argmax(position > np.iinfo(np.int32).max))
        raise LogValidationError(
            f, f"position {position[row]} is too large", row=row, column="position"
        )


def _check_probability(f: str, column: str, values: np.ndarray) -> None:
    bad = ~np.isnan(values) & ((values <= 0) | (values > 1))
    if bad.any():
        row = int(np.argmax(bad))
        raise LogValidationError(
            f,
            f"{column} {values[row].item()!r} is outside (0, 1]; use null when unknown",
            row=row,
            column=column,
        )


def _require_columns(table: pa.Table, file: str, columns: dict[str, str]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise LogValidationError(
            file,
            f"missing column(s) {', '.join(map(repr, missing))}; required: "
            f"{', '.join(columns)}; found: {', '.join(table.column_names)}",
            column=missing[0],
        )


def _check_kind(table: pa.Table, file: str, column: str, kind: str) -> None:
    t = table.schema.field(column).type
    if pa.types.is_dictionary(t):
        t = t.value_type
    ok = {
        "string": pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t),
        "integer": pa.types.is_integer(t),
        "binary": pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t),
        "time": pa.types.is_integer(t) or pa.types.is_timestamp(t),
        "float": pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t),
    }[kind]
    if not ok:
        raise LogValidationError(
            file, f"wrong dtype {t}; expected {_KIND_HELP[kind]}", column=column
        )


def _reject_nulls(table: pa.Table, file: str, column: str) -> None:
    col = table[column]
    if col.null_count:
        row = int(np.argmax(_numpy(pc.is_null(col))))
        raise LogValidationError(file, f"{column} is null", row=row, column=column)


def _reject_duplicates(file: str, column: str, values: np.ndarray) -> None:
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    if (counts > 1).any():
        seen = np.zeros(len(values), dtype=bool)
        seen[first] = True
        row = int(np.argmax(~seen))
        original = int(np.argmax(values == values[row]))
        raise LogValidationError(
            file,
            f"duplicate {column} {values[row]!r} (first at row {original})",
            row=row,
            column=column,
        )


# ---------------------------------------------------------------------- arrow -> numpy helpers
def _numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    return col.to_numpy(zero_copy_only=False)


def _strings(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_null(col.type):
        col = col.cast(pa.string())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def _codes(col: pa.ChunkedArray, null_as: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (``-1`` for null, or the code of ``null_as``) and the distinct values."""
    arr = col.combine_chunks()
    if pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    values = _strings(arr.dictionary)
    codes = _numpy(pc.fill_null(arr.indices, -1)).astype(np.int64)
    if null_as is not None and (codes < 0).any():
        hit = np.flatnonzero(values == null_as)
        if len(hit):
            fill = int(hit[0])
        else:
            fill = len(values)
            values = np.append(values, np.array([null_as], dtype=object))
        codes[codes < 0] = fill
    return codes, values


def _densify(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unused values, keeping their order; codes renumbered to ``0..n_used-1``."""
    used = np.bincount(codes, minlength=len(values)) > 0
    if used.all():
        return codes, values
    remap = np.cumsum(used) - 1
    return remap[codes], values[used]


def _lookup(values: np.ndarray, table: pa.Array) -> np.ndarray:
    """Index of each value in ``table`` (``-1`` where absent)."""
    found = pc.index_in(pa.array(values, pa.string()), value_set=table)
    return _numpy(pc.fill_null(found, -1)).astype(np.int64)


def _seconds(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(col.type):
        per = _SECONDS_PER_UNIT[col.type.unit]
        return _numpy(col.cast(pa.int64())) // per
    return _numpy(col).astype(np.int64)


def _by_first_use(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber codes by order of first use, dropping unused values (row-order independent)."""
    used, first = np.unique(codes, return_index=True)
    order = used[np.argsort(first)]
    remap = np.full(len(values), -1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[codes], values[order]


def _string_rank(values: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Tie-breaker by id string, computed only when the numeric keys tie (rare; strings are slow).

    Without ties any tie-breaker gives the same order, so zeros are returned.
    """
    order = np.lexsort(keys[::-1]) if keys else np.arange(len(values))
    sorted_keys = [k[order] for k in keys]
    ties = np.ones(len(values) - 1, dtype=bool) if len(values) > 1 else np.zeros(0, bool)
    for k in sorted_keys:
        ties &= k[1:] == k[:-1]
    if not ties.any():
        return np.zeros(len(values), dtype=np.int64)
    rank = np.empty(len(values), dtype=np.int64)
    rank[np.argsort(values.astype(str), kind="stable")] = np.arange(len(values))
    return rank


def _nondecreasing(values: np.ndarray) -> bool:
    return bool((values[1:] >= values[:-1]).all())


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
