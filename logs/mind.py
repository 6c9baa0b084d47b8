"""Adapter for MIND, the Microsoft News recommendation dataset (Wu et al., ACL 2020).

A MIND split directory holds two headerless tab-separated files::

    behaviors.tsv  impression_id, user_id, time, history, impressions
    news.tsv       news_id, category, subcategory, title, abstract, url, title_entities,
                   abstract_entities

``time`` reads like ``11/15/2019 8:55:22 AM`` (no time zone given; read as UTC), ``history`` is
the space-separated news the user clicked before the log period, ``impressions`` the shown list
``N123-1 N456-0`` with click labels. One behaviors row becomes one request; a session is a user's
requests on one calendar day. MIND records no logging propensities (``propensity`` and
``prefix_propensity`` stay null), so off-policy estimators do not apply to it; its policies are
valued by the fitted simulator only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from rankgym.logs.candidates import CandidateOptions
from rankgym.logs.errors import LogValidationError
from rankgym.logs.session_log import SessionLog
from rankgym.logs.source import LogSource

__all__ = ["BEHAVIOR_COLUMNS", "NEWS_COLUMNS", "TIME_FORMAT", "MINDSource"]

BEHAVIORS_FILE = "behaviors.tsv"
NEWS_FILE = "news.tsv"
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
NEWS_COLUMNS = [
    "news_id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
LICENSE = (
    "MIND, Microsoft Research License Terms (non-commercial research use); "
    "https://msnews.github.io - cite Wu et al., ACL 2020"
)
_TOKEN = r"^(?P<item>[^\s-]+)-(?P<label>[01])$"


@dataclass
class MINDSource(LogSource, CandidateOptions):
    """MIND impression logs as a canonical :class:`SessionLog`.

    Candidate sets (:class:`~rankgym.logs.candidates.CandidateOptions`): ``logged`` by default (an
    impression lists the news shown); ``catalog`` or ``logged+sampled`` draw from all news.

    Attributes:
        name: source name stored in ``meta.json``.
        path: a MIND split directory holding ``behaviors.tsv`` and ``news.tsv``.
        max_impressions: read only the first this many behaviors rows (impression logs), for
            quick experiments; ``None`` reads all.
    """

    name: str = "mind"
    path: str = ""
    max_impressions: int | None = None

    def __post_init__(self) -> None:
        self.check_candidate_options()
        root = Path(self.path).expanduser()
        if not self.path or not root.is_dir():
            raise ValueError(
                f"path={self.path!r} is not a directory; expected a MIND split directory "
                f"holding {BEHAVIORS_FILE} and {NEWS_FILE}"
            )
        if self.max_impressions is not None and (
            isinstance(self.max_impressions, bool)
            or not isinstance(self.max_impressions, int)
            or self.max_impressions < 1
        ):
            raise ValueError(
                f"max_impressions={self.max_impressions!r} is not allowed; "
                "allowed: a positive integer or None"
            )

    def build(self) -> SessionLog:
        """Read ``news.tsv`` and ``behaviors.tsv`` and return the validated canonical log."""
        root = Path(self.path).expanduser()
        news = _read_tsv(root / NEWS_FILE, NEWS_FILE, NEWS_COLUMNS)
        behaviors = _read_tsv(
            root / BEHAVIORS_FILE, BEHAVIORS_FILE, BEHAVIOR_COLUMNS, self.max_impressions
        )
        items = _items(news)
        known = pd.Index(items["item_id"])
        impressions = _impressions(behaviors, known)
        users, dropped = _users(behaviors, known)
        meta = {
            "source": "mind",
            "license": LICENSE,
            "params": asdict(self),
            "history_items_dropped": dropped,
        }
        return self.with_candidates(SessionLog.from_tables(impressions, items, users, meta=meta))


def _read_tsv(
    path: Path, file: str, columns: list[str], max_rows: int | None = None
) -> pd.DataFrame:
    """Split a headerless TSV into ``columns`` (all strings), naming the first malformed row."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; a MIND directory holds {BEHAVIORS_FILE} and {NEWS_FILE}"
        )
    with open(path, encoding="utf-8", newline="") as handle:
        rows = tqdm(islice(handle, max_rows), desc=f"reading {file}", unit=" rows", disable=None)
        lines = pd.Series(list(rows), dtype=object).str.rstrip("\r\n")
    if lines.empty:
        raise LogValidationError(file, "the file is empty")
    n_fields = lines.str.count("\t").to_numpy() + 1
    bad = n_fields != len(columns)
    if bad.any():
        row = int(np.argmax(bad))
        raise LogValidationError(
            file,
            f"{n_fields[row]} tab-separated fields, expected {len(columns)} ({', '.join(columns)})",
            row=row,
        )
    table = lines.str.split("\t", expand=True, regex=False)
    table.columns = columns
    return table


def _items(news: pd.DataFrame) -> pd.DataFrame:
    """Item table: text = title + abstract, category and subcategory kept as feature columns."""
    title = news["title"].str.strip()
    abstract = news["abstract"].str.strip()
    ends = title.str.contains(r"[.!?]$", regex=True)
    sep = np.where(ends, " ", ". ")
    text = np.where(abstract == "", title, title + sep + abstract)
    return pd.DataFrame(
        {
            "item_id": news["news_id"].to_numpy(),
            "text": text,
            "category": news["category"].to_numpy(),
            "subcategory": news["subcategory"].to_numpy(),
        }
    )


def _impressions(behaviors: pd.DataFrame, known: pd.Index) -> pd.DataFrame:
    """One row per shown news item; positions are indices in the impression list."""
    f = BEHAVIORS_FILE
    _reject_empty(behaviors, "impression_id")
    _reject_empty(behaviors, "user_id")
    time = pd.to_datetime(behaviors["time"], format=TIME_FORMAT, errors="coerce", utc=True)
    if time.isna().any():
        row = int(np.argmax(time.isna().to_numpy()))
        raise LogValidationError(
            f,
            f"time {behaviors['time'].iloc[row]!r} does not match {TIME_FORMAT!r} "
            "(e.g. '11/15/2019 8:55:22 AM')",
            row=row,
            column="time",
        )
    naive = time.dt.tz_convert(None).to_numpy()
    seconds = naive.astype("datetime64[s]").astype(np.int64)
    day = pd.Series(naive.astype("datetime64[D]").astype(str))

    tokens = behaviors["impressions"].str.split(" ", regex=False).explode()
    row_of = tokens.index.to_numpy()
    parts = tokens.str.extract(_TOKEN)
    bad = parts["label"].isna().to_numpy()
    if bad.any():
        k = int(np.argmax(bad))
        raise LogValidationError(
            f,
            f"impression token {tokens.iloc[k]!r} is not NEWSID-LABEL with label 0 or 1 "
            "(unlabelled test-split impressions are not supported)",
            row=int(row_of[k]),
            column="impressions",
        )
    item = parts["item"].to_numpy()
    unknown = known.get_indexer(item) < 0
    if unknown.any():
        k = int(np.argmax(unknown))
        raise LogValidationError(
            f,
            f"news id {item[k]!r} is not in {NEWS_FILE}",
            row=int(row_of[k]),
            column="impressions",
        )
    user = behaviors["user_id"].to_numpy()[row_of]
    return pd.DataFrame(
        {
            "session_id": (behaviors["user_id"] + "-" + day).to_numpy()[row_of],
            "request_id": behaviors["impression_id"].to_numpy()[row_of],
            "user_id": user,
            "timestamp": seconds[row_of],
            "query": "",
            "item_id": item,
            "position": tokens.groupby(level=0, sort=False).cumcount().to_numpy(),
            "click": parts["label"].astype(np.int8).to_numpy(),
            "propensity": np.full(len(item), np.nan),
        }
    )


def _users(behaviors: pd.DataFrame, known: pd.Index) -> tuple[pa.Table, int]:
    """Users with the history of their latest behaviors row; ids missing from news are dropped."""
    time = pd.to_datetime(behaviors["time"], format=TIME_FORMAT, utc=True)
    order = np.lexsort((np.arange(len(behaviors)), time.to_numpy()))
    latest = behaviors.iloc[order].drop_duplicates("user_id", keep="last")
    latest = latest.sort_values("user_id", kind="stable")
    history = latest["history"].str.split(" ", regex=False).explode()
    history = history[history.notna() & (history != "")]
    keep = known.get_indexer(history.to_numpy()) >= 0
    dropped = int((~keep).sum())
    history = history[keep]
    sizes = history.groupby(level=0, sort=False).size().reindex(latest.index, fill_value=0)
    offsets = np.concatenate([[0], np.cumsum(sizes.to_numpy())]).astype(np.int32)
    users = pa.table(
        {
            "user_id": pa.array(latest["user_id"].to_numpy(), pa.string()),
            "text": pa.array(np.full(len(latest), "", dtype=object), pa.string()),
            "history": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(history.to_numpy(), pa.string())
            ),
        }
    )
    return users, dropped


def _reject_empty(behaviors: pd.DataFrame, column: str) -> None:
    empty = (behaviors[column].str.strip() == "").to_numpy()
    if empty.any():
        row = int(np.argmax(empty))
        raise LogValidationError(BEHAVIORS_FILE, f"{column} is empty", row=row, column=column)
