"""The canonical logged-session format: Parquet on disk, integer-coded numpy arrays in memory.

On disk a dataset is a directory::

    impressions.parquet  session_id, request_id, user_id, timestamp, query, item_id, position,
                         click, propensity (one row per shown item)
    items.parquet        item_id, text (+ optional feature columns)
    users.parquet        user_id, text, history (list of item ids clicked before the log)
                         (+ optional feature columns)
    candidates.parquet   request_id, item_id: items a request could have shown but did not
                         (optional; absent when the candidates are the shown items)
    meta.json            schema_version, source, license, params, counts

In memory every string is replaced by an integer code into a string table, and impressions are
sorted by (session, request time, position), so a request is a contiguous slice given by
``request_offsets`` and a session a contiguous range of requests given by ``session_offsets``.
Taking a batch of sessions is array indexing. The item, user and query tables are never subset,
so embedding tables built from them stay aligned with the codes of every split.

A request's *candidates* are its shown items (in logged order) followed by its *unshown*
candidates, the items the system chose from but did not show (``unshown_offsets`` /
``unshown_items``, see :mod:`rankgym.logs.candidates`). Click evidence exists for shown items only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rankgym.logs.atomic import atomic_directory
from rankgym.logs.errors import DATA_ERRORS, LogValidationError, as_validation_error
from rankgym.logs.validation import (
    CANDIDATES_FILE,
    IMPRESSIONS_FILE,
    ITEMS_FILE,
    META_FILE,
    SCHEMA_VERSION,
    USERS_FILE,
    _lookup,
    _offsets,
    _reject_nulls,
    _strings,
    check_meta,
    encode_tables,
)

__all__ = ["SCHEMA_VERSION", "SessionLog", "encode_candidates"]

_STRING_COLUMNS = ["session_id", "request_id", "user_id", "query", "item_id"]


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + n)`` for every (s, n) pair without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    steps = np.ones(total, dtype=np.int64)
    nonzero = lengths > 0
    first = (ends - lengths)[nonzero]
    starts = np.asarray(starts, dtype=np.int64)[nonzero]
    prev_last = np.concatenate([[starts[0] - 1], (starts + lengths[nonzero] - 1)[:-1]])
    steps[first] = starts - prev_last
    steps[0] = starts[0]
    return np.cumsum(steps)


@dataclass(eq=False)
class SessionLog:
    """Logged search / recommendation sessions as integer-coded contiguous arrays.

    Build one with :meth:`read`, :meth:`from_tables` or an adapter (``rankgym.logs.synthetic``,
    ``rankgym.logs.obd``, ``rankgym.logs.mind``, ``rankgym.logs.table``). Sizes: ``I`` items, ``U``
    users, ``Q`` distinct queries, ``S`` sessions, ``R`` requests, ``N`` impressions, ``H`` history
    items.

    Attributes:
        item_ids: ``object[I]`` item id strings; an item's code is its index here.
        item_texts: ``object[I]`` item texts.
        user_ids: ``object[U]`` user id strings.
        user_texts: ``object[U]`` user profile texts ("" when unknown).
        user_history_offsets: ``int64[U+1]`` offsets into ``user_history_items``.
        user_history_items: ``int32[H]`` item codes each user clicked before the log, oldest first.
        query_texts: ``object[Q]`` distinct query strings ("" for recommendation requests).
        session_ids: ``object[S]`` session id strings.
        session_offsets: ``int64[S+1]`` offsets of each session's requests.
        request_ids: ``object[R]`` request id strings.
        request_user: ``int32[R]`` user code of each request.
        request_query: ``int32[R]`` query code of each request.
        request_timestamp: ``int64[R]`` unix seconds.
        request_offsets: ``int64[R+1]`` offsets of each request's impressions.
        item: ``int32[N]`` item code of each impression.
        position: ``int32[N]`` 0-based rank at which the item was shown.
        click: ``int8[N]`` 0/1.
        propensity: ``float64[N]`` probability that the logging policy showed this item at this
            position; NaN where unknown.
        prefix_propensity: ``float64[N]`` probability that the logging policy showed the
            request's logged items at positions ``0..position`` exactly as logged (the whole
            slate's probability at the last position); NaN where unknown.
        item_features: extra item columns, each an array of length ``I``.
        user_features: extra user columns, each an array of length ``U``.
        unshown_offsets: ``int64[R+1]`` offsets of each request's unshown candidates.
        unshown_items: ``int32[E]`` item codes of the unshown candidates (never a shown item
            of the same request); empty when the candidates are the shown items.
        meta: source, license and generator parameters (written to ``meta.json``).
    """

    item_ids: np.ndarray
    item_texts: np.ndarray
    user_ids: np.ndarray
    user_texts: np.ndarray
    user_history_offsets: np.ndarray
    user_history_items: np.ndarray
    query_texts: np.ndarray
    session_ids: np.ndarray
    session_offsets: np.ndarray
    request_ids: np.ndarray
    request_user: np.ndarray
    request_query: np.ndarray
    request_timestamp: np.ndarray
    request_offsets: np.ndarray
    item: np.ndarray
    position: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    prefix_propensity: np.ndarray | None = None
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    unshown_offsets: np.ndarray | None = None
    unshown_items: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prefix_propensity is None:
            self.prefix_propensity = np.full(len(self.item), np.nan)
        if self.unshown_offsets is None:  # candidates = the shown items
            self.unshown_offsets = np.zeros(len(self.request_ids) + 1, dtype=np.int64)
            self.unshown_items = np.zeros(0, dtype=np.int32)

    # ------------------------------------------------------------------ sizes and derived views
    @property
    def n_items(self) -> int:
        """Number of items in the catalog (``I``)."""
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        """Number of users (``U``)."""
        return len(self.user_ids)

    @property
    def n_sessions(self) -> int:
        """Number of sessions (``S``)."""
        return len(self.session_ids)

    @property
    def n_requests(self) -> int:
        """Number of requests (``R``)."""
        return len(self.request_ids)

    @property
    def n_impressions(self) -> int:
        """Number of impressions (``N``)."""
        return len(self.item)

    @property
    def request_sizes(self) -> np.ndarray:
        """``int64[R]`` number of shown items per request."""
        return np.diff(self.request_offsets)

    @property
    def candidate_sizes(self) -> np.ndarray:
        """``int64[R]`` candidates per request: shown plus unshown."""
        return self.request_sizes + np.diff(self.unshown_offsets)

    @property
    def has_unshown(self) -> bool:
        """Whether some request has candidates that were not shown (no logged click)."""
        return len(self.unshown_items) > 0

    def candidate_matrix(self, k: int) -> np.ndarray:
        """``int64[R, k]`` each request's candidates, ``-1`` padded.

        A request of shown items only lists them in logged order; one with more than ``k``
        keeps its first ``k`` (the logging ranker's top, whose click evidence matters most).
        A request with unshown candidates keeps its shown items and as many unshown ones as
        fit, listed by item code: the order must not tell a policy which items were logged
        (a policy that sees the logged action cannot be evaluated off-policy).
        """
        out = np.full((self.n_requests, k), -1, dtype=np.int64)
        for offsets, items, start in (
            (self.request_offsets, self.item, np.zeros(self.n_requests, dtype=np.int64)),
            (self.unshown_offsets, self.unshown_items, self.request_sizes),
        ):
            sizes = np.diff(offsets)
            req = np.repeat(np.arange(self.n_requests), sizes)
            slot = np.arange(len(items)) - np.repeat(offsets[:-1], sizes) + start[req]
            keep = slot < k
            out[req[keep], slot[keep]] = items[keep]
        mixed = np.flatnonzero(np.diff(self.unshown_offsets) > 0)
        if len(mixed):
            rows = np.sort(np.where(out[mixed] < 0, np.iinfo(np.int64).max, out[mixed]), axis=1)
            out[mixed] = np.where(rows == np.iinfo(np.int64).max, -1, rows)
        return out

    @property
    def request_session(self) -> np.ndarray:
        """``int32[R]`` session code of each request."""
        counts = np.diff(self.session_offsets)
        return np.repeat(np.arange(self.n_sessions, dtype=np.int32), counts)

    @property
    def impression_request(self) -> np.ndarray:
        """``int32[N]`` request code of each impression."""
        return np.repeat(np.arange(self.n_requests, dtype=np.int32), self.request_sizes)

    def user_history(self, user: int) -> np.ndarray:
        """Item codes in ``user``'s pre-log history, oldest first."""
        start, end = self.user_history_offsets[user], self.user_history_offsets[user + 1]
        return self.user_history_items[start:end]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tables(
        cls,
        impressions: pa.Table | Any,
        items: pa.Table | Any,
        users: pa.Table | Any | None = None,
        meta: dict[str, Any] | None = None,
        candidates: pa.Table | Any | None = None,
    ) -> SessionLog:
        """Validate canonical tables and encode them.

        Args:
            impressions: the impressions table (``pyarrow.Table`` or ``pandas.DataFrame``).
            items: the items table.
            users: the optional users table.
            meta: source, license and parameters to keep with the data.
            candidates: the optional unshown-candidates table (``request_id, item_id``).

        Raises:
            LogValidationError: naming the table file, first offending row and column.
        """
        try:
            encoded = encode_tables(_as_arrow(impressions), _as_arrow(items), _as_arrow(users))
            log = cls(**encoded, meta=dict(meta or {}))
            if candidates is not None:
                log.unshown_offsets, log.unshown_items = encode_candidates(
                    _as_arrow(candidates), log
                )
        except DATA_ERRORS as err:
            raise as_validation_error("tables", err, "validating the tables") from None
        return log

    @classmethod
    def read(cls, path: str | Path) -> SessionLog:
        """Read and validate a canonical dataset directory.

        Raises:
            FileNotFoundError: when the directory or a required file is missing.
            LogValidationError: when a file breaks the format (names file, row and column).
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such dataset directory")
        for name in (META_FILE, IMPRESSIONS_FILE, ITEMS_FILE):
            if not (root / name).is_file():
                raise FileNotFoundError(
                    f"{root / name}: missing; a dataset directory holds "
                    f"{IMPRESSIONS_FILE}, {ITEMS_FILE}, {META_FILE}"
                )
        try:
            meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
        except DATA_ERRORS as err:
            raise as_validation_error(str(root / META_FILE), err, "reading JSON") from None
        check_meta(meta)
        impressions = _read_parquet(root / IMPRESSIONS_FILE, _STRING_COLUMNS)
        items = _read_parquet(root / ITEMS_FILE, [])
        users = _read_parquet(root / USERS_FILE, []) if (root / USERS_FILE).is_file() else None
        unshown = root / CANDIDATES_FILE
        candidates = (
            _read_parquet(unshown, ["request_id", "item_id"]) if unshown.is_file() else None
        )
        try:
            log = cls(**encode_tables(impressions, items, users), meta=meta)
            if candidates is not None:
                log.unshown_offsets, log.unshown_items = encode_candidates(candidates, log)
        except DATA_ERRORS as err:  # a file that parses but holds broken data
            raise as_validation_error(str(root), err, "validating the dataset") from None
        return log

    # ------------------------------------------------------------------ output
    def to_tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        """The canonical (impressions, items, users) Arrow tables, strings dictionary-encoded."""
        req = self.impression_request
        sess = self.request_session[req]
        impressions = pa.table(
            {
                "session_id": dict_column(sess, self.session_ids),
                "request_id": dict_column(req, self.request_ids),
                "user_id": dict_column(self.request_user[req], self.user_ids),
                "timestamp": pa.array(self.request_timestamp[req], pa.int64()),
                "query": dict_column(self.request_query[req], self.query_texts),
                "item_id": dict_column(self.item, self.item_ids),
                "position": pa.array(self.position, pa.int32()),
                "click": pa.array(self.click, pa.int8()),
                "propensity": pa.array(
                    self.propensity, pa.float64(), mask=np.isnan(self.propensity)
                ),
            }
        )
        if not np.isnan(self.prefix_propensity).all():  # written only where a source has it
            prefix = self.prefix_propensity
            impressions = impressions.append_column(
                "prefix_propensity", pa.array(prefix, pa.float64(), mask=np.isnan(prefix))
            )
        item_columns = {
            "item_id": pa.array(self.item_ids, pa.string()),
            "text": pa.array(self.item_texts, pa.string()),
        }
        item_columns.update({k: pa.array(v) for k, v in self.item_features.items()})
        items = pa.table(item_columns)
        history = pa.ListArray.from_arrays(
            pa.array(self.user_history_offsets.astype(np.int32)),
            pa.array(self.item_ids[self.user_history_items], pa.string()),
        )
        users = pa.table(
            {
                "user_id": pa.array(self.user_ids, pa.string()),
                "text": pa.array(self.user_texts, pa.string()),
                "history": history,
                **{k: pa.array(v) for k, v in self.user_features.items()},
            }
        )
        return impressions, items, users

    def candidates_table(self) -> pa.Table | None:
        """The unshown candidates as a ``request_id, item_id`` table (``None`` when none)."""
        if not self.has_unshown:
            return None
        req = np.repeat(np.arange(self.n_requests), np.diff(self.unshown_offsets))
        return pa.table(
            {
                "request_id": dict_column(req, self.request_ids),
                "item_id": dict_column(self.unshown_items, self.item_ids),
            }
        )

    def write(self, path: str | Path) -> Path:
        """Write the canonical directory atomically (temporary directory renamed into place).

        Byte-identical output for identical contents: no wall-clock time is stored.
        """
        with atomic_directory(path, marker="meta.json") as tmp:
            self.write_into(tmp)
        return Path(path)

    def write_into(self, directory: Path) -> None:
        """Write the files into an existing directory (used inside an atomic write)."""
        impressions, items, users = self.to_tables()
        pq.write_table(impressions, directory / IMPRESSIONS_FILE, compression="zstd")
        pq.write_table(items, directory / ITEMS_FILE, compression="zstd")
        pq.write_table(users, directory / USERS_FILE, compression="zstd")
        candidates = self.candidates_table()
        if candidates is not None:
            pq.write_table(candidates, directory / CANDIDATES_FILE, compression="zstd")
        meta = {"schema_version": SCHEMA_VERSION, **self.meta, "counts": self.counts()}
        meta["schema_version"] = SCHEMA_VERSION
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ slicing and splitting
    def select_sessions(self, sessions: np.ndarray) -> SessionLog:
        """A log holding only the given sessions (codes, in the given order).

        Item, user and query tables are shared, so codes stay valid across subsets.
        """
        sessions = np.asarray(sessions, dtype=np.int64)
        s_start = self.session_offsets[sessions]
        s_len = self.session_offsets[sessions + 1] - s_start
        return self._take(sessions, ranges(s_start, s_len), s_len)

    def select_requests(self, keep: np.ndarray) -> SessionLog:
        """A log holding only the requests where ``keep`` (``bool[R]``) is true, in order;
        sessions left with none are dropped (e.g. the requests a sequential world's users
        reached, out of its whole latent timeline). Tables are shared, as in
        :meth:`select_sessions`."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n_requests,):
            raise ValueError(f"keep has shape {keep.shape}; expected ({self.n_requests},)")
        per_session = np.bincount(self.request_session, keep, self.n_sessions).astype(np.int64)
        sessions = np.flatnonzero(per_session > 0)
        return self._take(sessions, np.flatnonzero(keep), per_session[sessions])

    def _take(self, sessions: np.ndarray, requests: np.ndarray, s_len: np.ndarray) -> SessionLog:
        """The log of ``requests`` (grouped, in order, into ``sessions`` of ``s_len``)."""
        r_start = self.request_offsets[requests]
        r_len = self.request_offsets[requests + 1] - r_start
        rows = ranges(r_start, r_len)
        u_start = self.unshown_offsets[requests]
        u_len = self.unshown_offsets[requests + 1] - u_start
        return replace(
            self,
            session_ids=self.session_ids[sessions],
            session_offsets=np.concatenate([[0], np.cumsum(s_len)]).astype(np.int64),
            request_ids=self.request_ids[requests],
            request_user=self.request_user[requests],
            request_query=self.request_query[requests],
            request_timestamp=self.request_timestamp[requests],
            request_offsets=np.concatenate([[0], np.cumsum(r_len)]).astype(np.int64),
            item=self.item[rows],
            position=self.position[rows],
            click=self.click[rows],
            propensity=self.propensity[rows],
            prefix_propensity=self.prefix_propensity[rows],
            unshown_offsets=np.concatenate([[0], np.cumsum(u_len)]).astype(np.int64),
            unshown_items=self.unshown_items[ranges(u_start, u_len)],
            meta=dict(self.meta),
        )

    def split(
        self,
        test_fraction: float = 0.2,
        *,
        by: Literal["session", "time", "user"] = "session",
        seed: int = 0,
    ) -> tuple[SessionLog, SessionLog]:
        """Split into (train, test) by whole sessions.

        Args:
            test_fraction: share of sessions in the test part, in (0, 1) (``user``: of the
                users with sessions).
            by: ``session`` draws test sessions at random with ``seed``; ``time`` puts the
                sessions that start last into the test part (no future leaks into training);
                ``user`` draws test users at random and keeps each user's sessions together
                (what episodes of a user's sessions, ``env.episode=user``, need).
            seed: random seed for ``by="session"`` and ``by="user"``.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if self.n_sessions < 2:
            raise ValueError(f"cannot split a log with {self.n_sessions} session(s)")
        n_test = min(max(1, round(self.n_sessions * test_fraction)), self.n_sessions - 1)
        if by == "user":
            session_user = self.request_user[self.session_offsets[:-1]]
            users = np.unique(session_user)
            if len(users) < 2:
                raise ValueError(f"cannot split a log with {len(users)} user(s) by user")
            n_users = min(max(1, round(len(users) * test_fraction)), len(users) - 1)
            chosen = np.random.default_rng(seed).permutation(users)[-n_users:]
            held = np.isin(session_user, chosen)
            return self.select_sessions(np.flatnonzero(~held)), self.select_sessions(
                np.flatnonzero(held)
            )
        if by == "session":
            order = np.random.default_rng(seed).permutation(self.n_sessions)
        elif by == "time":
            start = self.request_timestamp[self.session_offsets[:-1]]
            order = np.argsort(start, kind="stable")
        else:
            raise ValueError(f"split by must be 'session', 'time' or 'user', got {by!r}")
        train, test = np.sort(order[: self.n_sessions - n_test]), np.sort(order[-n_test:])
        return self.select_sessions(train), self.select_sessions(test)

    # ------------------------------------------------------------------ statistics
    def counts(self) -> dict[str, int]:
        """Table sizes, stored in ``meta.json``."""
        return {
            "sessions": self.n_sessions,
            "requests": self.n_requests,
            "impressions": self.n_impressions,
            "items": self.n_items,
            "users": self.n_users,
            "queries": len(self.query_texts),
            "unshown_candidates": len(self.unshown_items),
        }

    def stats(self, max_position: int = 10) -> dict[str, Any]:
        """Summary numbers a researcher checks first.

        Returns:
            sessions, requests, impressions, items, users, queries, ``ctr``, ``ctr_by_position``
            (positions ``0..max_position-1``), ``positions`` (distinct logged positions),
            candidates and shown items per request (mean, min, max), share of requests with an
            empty query, share with propensities.
        """
        spread = lambda x: {  # noqa: E731
            "mean": round(float(x.mean()), 3),
            "min": int(x.min()),
            "max": int(x.max()),
        }
        by_pos = []
        for p in range(max_position):
            shown = self.position == p
            if not shown.any():
                break
            by_pos.append(round(float(self.click[shown].mean()), 5))
        empty_query = self.query_texts[self.request_query] == ""
        return {
            **self.counts(),
            "ctr": round(float(self.click.mean()), 5),
            "ctr_by_position": by_pos,
            "positions": len(np.unique(self.position)),
            "candidates_per_request": spread(self.candidate_sizes),
            "shown_per_request": spread(self.request_sizes),
            "requests_per_session": round(self.n_requests / max(self.n_sessions, 1), 3),
            "empty_query_share": round(float(empty_query.mean()), 4),
            "propensity_share": round(float((~np.isnan(self.propensity)).mean()), 4),
            "prefix_propensity_share": round(float((~np.isnan(self.prefix_propensity)).mean()), 4),
        }


def _as_arrow(table: Any) -> pa.Table | None:
    """Accept a pyarrow Table, a pandas DataFrame or None."""
    if table is None or isinstance(table, pa.Table):
        return table
    return pa.Table.from_pandas(table, preserve_index=False)


def _read_parquet(path: Path, dictionary_columns: list[str]) -> pa.Table:
    """Read a Parquet file, string id columns as dictionaries (no per-row Python strings)."""
    try:
        names = pq.read_schema(path).names
        wanted = [c for c in dictionary_columns if c in names]
        table = pq.read_table(path, read_dictionary=wanted or None)
        table.validate(full=True)  # decompression and encoding errors surface here, not later
        return table
    except DATA_ERRORS as err:
        raise as_validation_error(str(path), err, "reading Parquet") from None


def dict_column(codes: np.ndarray, values: np.ndarray) -> pa.DictionaryArray:
    """Dictionary-encoded string column from codes and their string table (no per-row strings)."""
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, pa.int32()), pa.array(values, pa.string())
    )


def encode_candidates(table: pa.Table, log: SessionLog) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``request_id, item_id`` table against ``log``; ``(offsets, items)`` by request.

    Rows of a request keep their file order. Raises :class:`LogValidationError` naming the file,
    row and column for a missing column, null, unknown request or item, a duplicate, or an item
    the request showed.
    """
    f = CANDIDATES_FILE
    for column in ("request_id", "item_id"):
        if column not in table.column_names:
            raise LogValidationError(
                f, f"missing column {column!r}; required: request_id, item_id", column=column
            )
        _reject_nulls(table, f, column)
    codes = {}
    for column, known in (("request_id", log.request_ids), ("item_id", log.item_ids)):
        values = _strings(table[column])
        code = _lookup(values, pa.array(known, pa.string()))
        if (code < 0).any():
            row = int(np.argmax(code < 0))
            raise LogValidationError(
                f, f"{column} {values[row]!r} is not in the log", row=row, column=column
            )
        codes[column] = code
    req, item = codes["request_id"], codes["item_id"]
    pair = req * log.n_items + item
    _, first = np.unique(pair, return_index=True)
    if len(first) < len(pair):
        seen = np.zeros(len(pair), dtype=bool)
        seen[first] = True
        row = int(np.argmax(~seen))
        raise LogValidationError(
            f, "duplicate (request_id, item_id) pair", row=row, column="item_id"
        )
    shown = np.isin(pair, log.impression_request.astype(np.int64) * log.n_items + log.item)
    if shown.any():
        row = int(np.argmax(shown))
        raise LogValidationError(
            f,
            "item_id was shown in this request; list only candidates that were not shown",
            row=row,
            column="item_id",
        )
    order = np.argsort(req, kind="stable")
    return _offsets(np.bincount(req, minlength=log.n_requests)), item[order].astype(np.int32)
