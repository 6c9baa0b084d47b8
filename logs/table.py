"""Adapter for any long impression table (CSV or Parquet, one row per shown item).

Column names are mapped onto the canonical ones with ``columns``; 1-based positions and string
timestamps are converted. Optional item and user tables add item texts and user histories; without
an items table the catalog is the distinct shown item ids, described by an ``item_text`` column of
the impressions when mapped or present, else by the id itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rankgym.logs.candidates import CandidateOptions
from rankgym.logs.errors import DATA_ERRORS, LogValidationError, as_validation_error
from rankgym.logs.session_log import SessionLog
from rankgym.logs.source import LogSource
from rankgym.logs.validation import IMPRESSIONS_FILE, ITEMS_FILE, USERS_FILE

__all__ = ["CANONICAL_COLUMNS", "TableSource"]

REQUIRED = ["request_id", "user_id", "timestamp", "item_id", "position", "click"]
OPTIONAL = ["session_id", "query", "propensity", "prefix_propensity", "item_text"]
CANONICAL_COLUMNS = REQUIRED + OPTIONAL
_ID_COLUMNS = ["session_id", "request_id", "user_id", "item_id", "query", "item_text"]
_SUFFIXES = (".csv", ".parquet")


@dataclass
class TableSource(LogSource, CandidateOptions):
    """A generic long impressions table as a canonical :class:`SessionLog`.

    Candidate sets (:class:`~rankgym.logs.candidates.CandidateOptions`): ``logged`` by default;
    ``catalog`` or ``logged+sampled`` draw from the items file (or the items seen in the log).

    Attributes:
        name: source name stored in ``meta.json``.
        impressions: path of the impressions file (``.csv`` or ``.parquet``). Required columns:
            request_id, user_id, timestamp, item_id, position, click; optional: session_id
            (default: the request id), query (default ""), propensity (default null: the logging
            policy's probability of this item at this position), prefix_propensity (default
            null: its probability of the ranking down to this position), item_text.
        items: optional items file with ``item_id`` and ``text`` (+ feature columns kept).
        users: optional users file with ``user_id``, ``text`` and ``history`` (a list column in
            Parquet, space-separated item ids in CSV).
        columns: canonical column -> column name in the impressions file; unlisted (or null)
            required columns keep their canonical name, unlisted optional ones are absent.
            The ``item_id`` and ``user_id`` mappings also apply to the items and users files
            when those hold the mapped name.
        position_base: 1 when the file's positions are 1-based, 0 when already 0-based.
        time_format: ``strptime`` format of string timestamps (read as UTC); ``None`` when the
            timestamps are unix seconds or typed timestamps.
    """

    name: str = "table"
    impressions: str = ""
    items: str | None = None
    users: str | None = None
    columns: dict[str, str | None] = field(default_factory=dict)
    position_base: int = 0
    time_format: str | None = None

    def __post_init__(self) -> None:
        self.check_candidate_options()
        # null means "not in the file" for optional columns, "same name" for required ones
        self.columns = {k: v for k, v in dict(self.columns or {}).items() if v is not None}
        unknown = [c for c in self.columns if c not in CANONICAL_COLUMNS]
        if unknown:
            raise ValueError(
                f"columns has unknown canonical name(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(CANONICAL_COLUMNS)}"
            )
        for key in ("impressions", "items", "users"):
            value = getattr(self, key)
            if value is None and key != "impressions":
                continue
            if not value or Path(value).suffix.lower() not in _SUFFIXES:
                raise ValueError(
                    f"{key}={value!r} is not allowed; expected a path ending in "
                    f"{' or '.join(_SUFFIXES)}"
                )
        if self.position_base not in (0, 1):
            raise ValueError(f"position_base={self.position_base!r} is not allowed; allowed: 0, 1")

    def build(self) -> SessionLog:
        """Read the files, map columns, convert positions and times, validate."""
        try:
            return self._build()
        except LogValidationError:
            raise
        except DATA_ERRORS as err:  # values our checks did not foresee: still one line
            raise as_validation_error(self.impressions, err, "converting the table") from None

    def _build(self) -> SessionLog:
        raw = _read(self.impressions)
        impressions = self._impressions(raw)
        if self.items is not None:
            items = self._renamed(_read(self.items), "item_id")
        else:
            items = _items_from_impressions(impressions)
        users = None
        if self.users is not None:
            users = self._renamed(_read(self.users), "user_id")
            if "history" in users.columns and Path(self.users).suffix.lower() == ".csv":
                users["history"] = users["history"].fillna("").astype(str).str.split()
        impressions = impressions.drop(columns=["item_text"], errors="ignore")
        meta = {
            "source": "table",
            "license": "as licensed by the data owner (generic table import)",
            "params": asdict(self),
        }
        try:
            log = SessionLog.from_tables(impressions, items, users, meta=meta)
        except LogValidationError as err:
            raise self._in_source_terms(err) from None
        return self.with_candidates(log)

    def _in_source_terms(self, err: LogValidationError) -> LogValidationError:
        """Name the researcher's own file and column (rows keep their order, so they match)."""
        files = {
            IMPRESSIONS_FILE: self.impressions,
            ITEMS_FILE: self.items,
            USERS_FILE: self.users,
        }
        # a failure no single table's check caught ("tables") is reported on the impressions
        source = files.get(err.file) or (self.impressions if err.file == "tables" else None)
        if source is None:
            return err
        column = self.columns.get(err.column, err.column) if err.column else None
        reason = err.reason
        for canonical, path in files.items():
            if path is not None:
                reason = reason.replace(canonical, str(path))
        return LogValidationError(str(source), reason, row=err.row, column=column)

    # ------------------------------------------------------------------ helpers
    def _impressions(self, raw: pd.DataFrame) -> pd.DataFrame:
        f = self.impressions
        wanted = {c: self.columns.get(c, c) for c in CANONICAL_COLUMNS}
        needed = REQUIRED + [c for c in OPTIONAL if c in self.columns]
        missing = [c for c in needed if wanted[c] not in raw.columns]
        if missing:
            c = missing[0]
            raise LogValidationError(
                f,
                f"missing column {wanted[c]!r} (canonical {c!r}); the file's columns: "
                f"{', '.join(map(str, raw.columns))}",
                column=wanted[c],
            )
        out = pd.DataFrame(
            {c: raw[wanted[c]] for c in CANONICAL_COLUMNS if wanted[c] in raw.columns}
        )
        for c in _ID_COLUMNS:
            if c in out.columns:
                out[c] = _as_string(out[c])
        if "session_id" not in out.columns:
            out["session_id"] = out["request_id"]
        if "query" not in out.columns:
            out["query"] = ""
        for column in ("propensity", "prefix_propensity"):
            if column not in out.columns:
                out[column] = np.nan
        out["timestamp"] = self._seconds(out["timestamp"], wanted["timestamp"])
        if out["position"].dtype.kind in "iu":
            out["position"] = out["position"] - self.position_base
        return out

    def _seconds(self, col: pd.Series, name: str) -> pd.Series:
        """Unix seconds from numbers, typed timestamps or strings parsed with ``time_format``."""
        if pd.api.types.is_datetime64_any_dtype(col):
            parsed = pd.to_datetime(col, utc=True)
        elif col.dtype.kind in "iuf" and self.time_format is None:
            return col
        elif self.time_format is None:
            raise LogValidationError(
                self.impressions,
                f"timestamps are strings (e.g. {col.iloc[0]!r}); set time_format to their "
                "strptime format, e.g. '%Y-%m-%d %H:%M:%S'",
                column=name,
            )
        else:
            text = col.astype("string")
            parsed = pd.to_datetime(text, format=self.time_format, utc=True, errors="coerce")
            bad = (parsed.isna() & text.notna()).to_numpy()
            if bad.any():
                row = int(np.argmax(bad))
                raise LogValidationError(
                    self.impressions,
                    f"timestamp {text.iloc[row]!r} does not match time_format {self.time_format!r}",
                    row=row,
                    column=name,
                )
        naive = parsed.dt.tz_convert(None)
        seconds = naive.to_numpy().astype("datetime64[s]").astype(np.int64)
        return pd.Series(seconds, index=col.index).where(naive.notna())

    def _renamed(self, table: pd.DataFrame, key: str) -> pd.DataFrame:
        mapped = self.columns.get(key, key)
        if key not in table.columns and mapped in table.columns:
            table = table.rename(columns={mapped: key})
        if key in table.columns:
            table[key] = _as_string(table[key])
        return table


def _read(path: str) -> pd.DataFrame:
    """Read a CSV (id-like columns kept as written) or Parquet file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        if p.suffix.lower() == ".parquet":
            return pq.read_table(p).to_pandas()
        return pd.read_csv(p, keep_default_na=False, na_values=[""], encoding="utf-8")
    except DATA_ERRORS as err:  # empty, truncated, not UTF-8, ragged rows...
        kind = "Parquet" if p.suffix.lower() == ".parquet" else "CSV"
        raise as_validation_error(str(p), err, f"reading {kind}") from None


def _as_string(col: pd.Series) -> pd.Series:
    """Ids as strings, nulls kept null (ints written without a trailing '.0')."""
    if col.dtype.kind == "f" and (col.dropna() % 1 == 0).all():
        col = col.astype("Int64")
    return col.astype("string").astype(object).where(col.notna(), None)


def _items_from_impressions(impressions: pd.DataFrame) -> pa.Table:
    """Catalog of the shown item ids; text from ``item_text`` (first seen) or the id."""
    first = impressions[impressions["item_id"].notna()].drop_duplicates("item_id")
    ids = first["item_id"]
    text = first["item_text"].fillna(ids) if "item_text" in first.columns else ids
    return pa.table(
        {
            "item_id": pa.array(ids.to_numpy(), pa.string()),
            "text": pa.array(text.to_numpy(), pa.string()),
        }
    )
