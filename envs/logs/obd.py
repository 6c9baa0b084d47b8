"""Adapter for the Open Bandit Dataset (ZOZOTOWN fashion recommendation, Saito et al. 2021).

The raw layout (full dataset and the sample shipped in the ``obp`` sdist alike) is::

    {behavior_policy}/{campaign}/{campaign}.csv       one row per shown item
    {behavior_policy}/{campaign}/item_context.csv     item features

A row holds ``timestamp, item_id, position (1-based), click, propensity_score``, four hashed
user features and 80 user-item affinities. There are no user or request ids, so a request is the
rows sharing (timestamp, user features), a user is a hash of the four user features and a session
is a user's requests on one UTC calendar day. ``obp`` itself is not imported (its loader breaks on
pandas 3); the CSVs are read directly, from a directory or straight out of the sdist tarball.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from envs.logs.errors import LogValidationError
from envs.logs.session_log import SessionLog
from envs.logs.source import LogSource

__all__ = ["OBP_VERSION", "OBDSource"]

OBP_VERSION = "0.5.7"
BEHAVIOR_POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = [f"user_feature_{i}" for i in range(4)]
ITEM_FEATURES = [f"item_feature_{i}" for i in range(4)]
LOG_COLUMNS = ["timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES]
LICENSE = (
    "Open Bandit Dataset, CC BY 4.0 (ZOZO, Inc.); "
    "https://research.zozo.com/data.html - cite Saito et al., NeurIPS Datasets 2021"
)
_SAMPLE_ROOT = f"obp-{OBP_VERSION}/obp/dataset/obd"


@dataclass
class OBDSource(LogSource):
    """Open Bandit Dataset logs as a canonical :class:`SessionLog`.

    Attributes:
        name: source name stored in ``meta.json``.
        path: directory with the ``{behavior_policy}/{campaign}/`` layout (full dataset or
            sample); takes precedence over ``archive``.
        archive: path to the ``obp-0.5.7.tar.gz`` sdist, whose bundled 10,000-row sample is read
            without extraction.
        behavior_policy: logging policy, ``random`` (uniform, propensities known exactly) or
            ``bts`` (Bernoulli Thompson sampling).
        campaign: ``all``, ``men`` or ``women``.
        cache_dir: where the sdist is downloaded with pip when neither path nor archive is given.
    """

    name: str = "obd"
    path: str | None = None
    archive: str | None = None
    behavior_policy: str = "random"
    campaign: str = "all"
    cache_dir: str = "~/.cache/rankgym"

    def __post_init__(self) -> None:
        if self.behavior_policy not in BEHAVIOR_POLICIES:
            raise ValueError(
                f"behavior_policy={self.behavior_policy!r} is not allowed; "
                f"allowed: {', '.join(BEHAVIOR_POLICIES)}"
            )
        if self.campaign not in CAMPAIGNS:
            raise ValueError(
                f"campaign={self.campaign!r} is not allowed; allowed: {', '.join(CAMPAIGNS)}"
            )
        if self.path is not None and not Path(self.path).expanduser().is_dir():
            raise ValueError(f"path={self.path!r} is not a directory; expected the OBD root")
        if self.archive is not None and not Path(self.archive).expanduser().is_file():
            raise ValueError(f"archive={self.archive!r} is not a file; expected obp sdist .tar.gz")

    def build(self) -> SessionLog:
        """Read the campaign's log and item context and return the validated canonical log."""
        rel = f"{self.behavior_policy}/{self.campaign}"
        log_name, items_name = f"{self.campaign}.csv", "item_context.csv"
        if self.path is not None:
            root = Path(self.path).expanduser() / rel
            for name in (log_name, items_name):
                if not (root / name).is_file():
                    raise FileNotFoundError(
                        f"{root / name}: missing; expected the OBD layout "
                        "{behavior_policy}/{campaign}/{campaign}.csv"
                    )
            raw = _read_log(root / log_name, log_name)
            item_context = _read_items(root / items_name, items_name)
            origin = str(root)
        else:
            archive = (
                Path(self.archive).expanduser()
                if self.archive
                else fetch_sdist(Path(self.cache_dir).expanduser())
            )
            with tarfile.open(archive) as tar:
                raw = _read_log(_member(tar, f"{_SAMPLE_ROOT}/{rel}/{log_name}"), log_name)
                item_context = _read_items(
                    _member(tar, f"{_SAMPLE_ROOT}/{rel}/{items_name}"), items_name
                )
            origin = str(archive)
        impressions, users = _impressions(raw, log_name)
        meta = {
            "source": "obd",
            "license": LICENSE,
            "params": asdict(self),
            "origin": origin,
        }
        return SessionLog.from_tables(impressions, _items(item_context), users, meta=meta)


def fetch_sdist(cache_dir: Path) -> Path:
    """Return the ``obp`` sdist under ``cache_dir/obp``, downloading it with pip when absent.

    Raises:
        RuntimeError: when pip cannot fetch it, saying how to pass ``archive=`` or ``path=``.
    """
    target = cache_dir / "obp"
    archive = target / f"obp-{OBP_VERSION}.tar.gz"
    if archive.is_file():
        return archive
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--ignore-requires-python",
        f"obp=={OBP_VERSION}",
        "-d",
        str(target),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        detail = (done.stderr or done.stdout).strip()[-500:]
        ok = done.returncode == 0
    except OSError as err:
        ok, detail = False, str(err)
    if not ok or not archive.is_file():
        raise RuntimeError(
            f"could not download the Open Bandit Dataset sample (obp=={OBP_VERSION} sdist) "
            f"with `{' '.join(cmd)}`: {detail or 'no archive written'}. Download "
            f"obp-{OBP_VERSION}.tar.gz from PyPI yourself and pass archive=PATH, or pass "
            "path=DIR pointing at an extracted Open Bandit Dataset."
        )
    return archive


# ---------------------------------------------------------------------- reading
def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    try:
        handle = tar.extractfile(name)
    except KeyError:
        handle = None
    if handle is None:
        raise FileNotFoundError(f"{tar.name}: no member {name}; is this the obp sdist?")
    return handle


def _read_csv(
    source: Path | IO[bytes], file: str, columns: list[str], dtypes: dict
) -> pd.DataFrame:
    """Read ``columns`` of an OBD CSV (first column is an unnamed index), naming missing ones."""
    header = pd.read_csv(source, nrows=0).columns
    missing = [c for c in columns if c not in header]
    if missing:
        raise LogValidationError(
            file,
            f"missing column(s) {', '.join(missing)}; found: {', '.join(header)}",
            column=missing[0],
        )
    if not isinstance(source, Path):
        source.seek(0)
    return pd.read_csv(source, usecols=columns, dtype=dtypes)[columns]


def _read_log(source: Path | IO[bytes], file: str) -> pd.DataFrame:
    dtypes = {
        "item_id": "int64",
        "position": "int64",
        "click": "int64",
        "propensity_score": "float64",
        "timestamp": str,
        **dict.fromkeys(USER_FEATURES, str),
    }
    return _read_csv(source, file, LOG_COLUMNS, dtypes)


def _read_items(source: Path | IO[bytes], file: str) -> pd.DataFrame:
    dtypes = {
        "item_id": "int64",
        "item_feature_0": "float64",
        **dict.fromkeys(ITEM_FEATURES[1:], str),
    }
    return _read_csv(source, file, ["item_id", *ITEM_FEATURES], dtypes)


# ---------------------------------------------------------------------- mapping
def _impressions(raw: pd.DataFrame, file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical impressions and users tables from the raw log rows."""
    time = pd.to_datetime(raw["timestamp"], format="ISO8601", utc=True, errors="coerce")
    if time.isna().any():
        row = int(np.argmax(time.isna().to_numpy()))
        raise LogValidationError(
            file,
            f"timestamp {raw['timestamp'].iloc[row]!r} is not an ISO 8601 time",
            row=row,
            column="timestamp",
        )
    naive = time.dt.tz_convert(None).to_numpy()
    micros = naive.astype("datetime64[us]").astype(np.int64)
    seconds = naive.astype("datetime64[s]").astype(np.int64)
    day = naive.astype("datetime64[D]").astype(str)

    # user id: a short stable hash of the four hashed user features (one hash per distinct user)
    user_code, distinct = pd.MultiIndex.from_frame(raw[USER_FEATURES]).factorize()
    keys = ["\t".join(t) for t in distinct]
    user_values = np.array(
        ["u" + hashlib.sha1(k.encode()).hexdigest()[:12] for k in keys], dtype=object
    )
    user_id = user_values[user_code]

    # a request = rows sharing (time, user); the k-th repeat of a position starts another request
    key = pd.DataFrame({"t": micros, "u": user_code, "p": raw["position"].to_numpy()})
    repeat = key.groupby(["t", "u", "p"], sort=False).cumcount().to_numpy()
    request_id = pd.Series(user_id).str.cat(
        [pd.Series(micros.astype(str)), pd.Series(repeat.astype(str))], sep="-"
    )
    impressions = pd.DataFrame(
        {
            "session_id": pd.Series(user_id).str.cat(pd.Series(day), sep="-"),
            "request_id": request_id,
            "user_id": user_id,
            "timestamp": seconds,
            "query": "",
            "item_id": raw["item_id"].astype(str).to_numpy(),
            "position": raw["position"].to_numpy() - 1,
            "click": raw["click"].to_numpy(),
            "propensity": raw["propensity_score"].to_numpy(dtype=np.float64),
        }
    )
    short = [pd.Series(distinct.get_level_values(i)).str[:8] for i in range(4)]
    text = "user"
    for i, s in enumerate(short):
        text = text + f" feature{i} " + s
    users = pd.DataFrame(
        {"user_id": user_values, "text": text, "history": [[] for _ in range(len(user_values))]}
    )
    return impressions, users


def _items(raw: pd.DataFrame) -> pd.DataFrame:
    """Items with a readable deterministic text and the four item features kept as columns."""
    ids = raw["item_id"].astype(str)
    text = "item " + ids + " price " + raw["item_feature_0"].map("{:.2f}".format)
    for i in (1, 2, 3):
        text = text + f" feature{i} " + raw[f"item_feature_{i}"].str[:8]
    return pd.DataFrame({"item_id": ids, "text": text, **{c: raw[c] for c in ITEM_FEATURES}})
