"""Adapter for the Open Bandit Dataset (ZOZOTOWN fashion recommendation, Saito et al. 2021).

The raw layout (full dataset and the sample shipped in the ``obp`` sdist alike) is::

    {behavior_policy}/{campaign}/{campaign}.csv       one row per shown item
    {behavior_policy}/{campaign}/item_context.csv     item features

A row holds ``timestamp, item_id, position (1-based), click, propensity_score``, four hashed
user features and one user-item affinity per catalog item (``user-item_affinity_k`` for item
``k``). ``obp`` itself is not imported (its loader breaks on pandas 3); the CSVs are read
directly, from a directory or straight out of the sdist tarball.

How rows become a ranking problem (OBD as OBD is):

* **Request.** At each impression ZOZOTOWN's logging policy (uniform ``random`` or Bernoulli
  Thompson sampling ``bts``) chose items for 3 positions out of the campaign's catalog (34 items
  for ``men``, 80 for ``all``). There are no request ids, so a request is the rows sharing
  (timestamp, user features); the k-th repeat of a position starts another request.
* **Candidates.** ``candidates: catalog`` (the default here): every item of the campaign's
  ``item_context.csv`` is a candidate, so a policy ranks the catalog into 3 slots
  (``conf/experiment/obd.yaml``: ``env.slate_size=3``, ``env.max_candidates`` the catalog).
* **Propensity.** Each row's ``propensity_score`` (the logging policy's ``action_prob``) is the
  probability that it showed this item at this position: an item-position propensity, so the
  item-position estimators (``iips``, ``sniips``, ``idr``) apply. The probability of the items
  above it (``prefix_propensity``) is not recorded, so the whole-slate and prefix estimators
  (``ips``, ``rips``, ``dr``) do not; the uniform logger's could be derived, Bernoulli TS's
  cannot from the files. ``bernoulli_ts_marginals`` recomputes BTS's item-position
  probabilities from its starting prior (``bernoulli_ts_prior``) for off-policy evaluation.
* **User.** A user is a hash of the four user features, which are kept as categorical user
  feature columns; the user's history is the items with a positive affinity in the user's first
  logged row (least affinity first). A session is a user's requests on one UTC calendar day.
* **Items** carry their four features (price and three hashed categories) as feature columns;
  item and user texts are empty: features are not turned into sentences.

What this loses: the sample (and, per row, the full data) keeps one row per shown item, and in
the 10,000-row samples nearly every row has its own timestamp, so a request holds one shown item
at its logged position and the two others are unknown (``stats()``: 1.0 shown, 3 positions).
Click evidence exists for that one (item, position) per request: a simulator fitted on it and
IPS estimates both work from single-slot feedback. Affinities change between a user's rows; only
the first row's are kept, as history.
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

from rankgym.logs.candidates import CandidateOptions
from rankgym.logs.errors import LogValidationError
from rankgym.logs.session_log import SessionLog
from rankgym.logs.source import LogSource

__all__ = ["OBP_VERSION", "OBDSource"]

OBP_VERSION = "0.5.7"
BEHAVIOR_POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = [f"user_feature_{i}" for i in range(4)]
ITEM_FEATURES = [f"item_feature_{i}" for i in range(4)]
LOG_COLUMNS = ["timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES]
AFFINITY_PREFIX = "user-item_affinity_"
LICENSE = (
    "Open Bandit Dataset, CC BY 4.0 (ZOZO, Inc.); "
    "https://research.zozo.com/data.html - cite Saito et al., NeurIPS Datasets 2021"
)
_SAMPLE_ROOT = f"obp-{OBP_VERSION}/obp/dataset/obd"


@dataclass
class OBDSource(LogSource, CandidateOptions):
    """Open Bandit Dataset logs as a canonical :class:`SessionLog` (see the module docstring).

    Candidate sets (:class:`~rankgym.logs.candidates.CandidateOptions`): ``catalog`` by default,
    the campaign's items; ``logged`` keeps the shown item only.

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
    candidates: str = "catalog"

    def __post_init__(self) -> None:
        self.check_candidate_options()
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
        impressions, users = _impressions(raw, log_name, item_context["item_id"].to_numpy())
        meta = {
            "source": "obd",
            "license": LICENSE,
            "params": asdict(self),
            "origin": origin,
        }
        log = SessionLog.from_tables(impressions, _items(item_context), users, meta=meta)
        return self.with_candidates(log)


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


def bernoulli_ts_prior(campaign: str, cache_dir: str | Path = "~/.cache/rankgym") -> np.ndarray:
    """The Bernoulli Thompson sampling policy's Beta parameters ``float64[n_items, 2]`` (alpha,
    beta per item id ``0..n-1``) at the start of ZOZOTOWN's data collection, as shipped in the
    ``obp`` sdist (``obp/policy/conf/prior_bts.yaml``, its ``is_zozotown_prior``).

    Raises:
        ValueError: for an unknown campaign, or a file whose lists differ in length.
    """
    import yaml

    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign={campaign!r} is not allowed; allowed: {', '.join(CAMPAIGNS)}")
    archive = fetch_sdist(Path(cache_dir).expanduser())
    name = f"obp-{OBP_VERSION}/obp/policy/conf/prior_bts.yaml"
    with tarfile.open(archive) as tar:
        prior = yaml.safe_load(_member(tar, name))[campaign]
    alpha, beta = (np.asarray(prior[k], dtype=np.float64) for k in ("alpha", "beta"))
    if alpha.shape != beta.shape:
        raise ValueError(f"{name}: {campaign!r} has {len(alpha)} alphas but {len(beta)} betas")
    return np.stack([alpha, beta], axis=1)


def bernoulli_ts_marginals(
    prior: np.ndarray, slots: int = 3, draws: int = 100_000, seed: int = 0
) -> np.ndarray:
    """``P(item i at position k)`` of Bernoulli Thompson sampling, ``float64[n_items, slots]``.

    Each draw samples every item's click rate from its Beta and shows the ``slots`` highest
    (OBP's ``BernoulliTS.select_action``); the frequencies of ``draws`` draws estimate the
    probabilities with standard error ``sqrt(p (1 - p) / draws)`` (0.0016 at most for 100k).
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(prior), slots))
    step = 10_000
    for start in range(0, draws, step):
        m = min(step, draws - start)
        sample = rng.beta(prior[:, 0], prior[:, 1], size=(m, len(prior)))
        top = np.argsort(-sample, axis=1)[:, :slots]
        np.add.at(counts, (top, np.broadcast_to(np.arange(slots), top.shape)), 1.0)
    return counts / draws


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
    source: Path | IO[bytes], file: str, columns: list[str], dtypes: dict, prefix: str = ""
) -> pd.DataFrame:
    """Read ``columns`` of an OBD CSV (first column is an unnamed index), naming missing ones;
    with ``prefix``, also every column whose name starts with it."""
    header = pd.read_csv(source, nrows=0).columns
    if prefix:
        extra = [c for c in header if c.startswith(prefix)]
        columns = columns + extra
        dtypes = {**dtypes, **dict.fromkeys(extra, "float64")}
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
    return _read_csv(source, file, LOG_COLUMNS, dtypes, prefix=AFFINITY_PREFIX)


def _read_items(source: Path | IO[bytes], file: str) -> pd.DataFrame:
    dtypes = {
        "item_id": "int64",
        "item_feature_0": "float64",
        **dict.fromkeys(ITEM_FEATURES[1:], str),
    }
    return _read_csv(source, file, ["item_id", *ITEM_FEATURES], dtypes)


# ---------------------------------------------------------------------- mapping
def _impressions(
    raw: pd.DataFrame, file: str, catalog: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical impressions and users tables from the raw log rows (``catalog``: item ids)."""
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
    users = pd.DataFrame(
        {
            "user_id": user_values,
            "text": "",
            "history": _histories(raw, user_code, len(user_values), catalog, micros, file),
            **{c: distinct.get_level_values(i).to_numpy() for i, c in enumerate(USER_FEATURES)},
        }
    )
    return impressions, users


def _histories(
    raw: pd.DataFrame,
    user_code: np.ndarray,
    n_users: int,
    catalog: np.ndarray,
    micros: np.ndarray,
    file: str,
) -> list[list[str]]:
    """Each user's history: items with a positive affinity in the user's first row, least first."""
    columns = [c for c in raw.columns if c.startswith(AFFINITY_PREFIX)]
    known = {int(i) for i in catalog}
    for c in columns:
        suffix = c.removeprefix(AFFINITY_PREFIX)
        if not suffix.isdigit() or int(suffix) not in known:
            raise LogValidationError(
                file,
                f"affinity column {c!r} names no item of item_context.csv "
                f"(expected {AFFINITY_PREFIX}<item_id>)",
                column=c,
            )
    if not columns:
        return [[] for _ in range(n_users)]
    items = np.array([c.removeprefix(AFFINITY_PREFIX) for c in columns], dtype=object)
    first = np.lexsort((np.arange(len(raw)), micros, user_code))
    first = first[np.concatenate([[True], np.diff(user_code[first]) != 0])]
    affinity = np.nan_to_num(raw[columns].to_numpy(dtype=np.float64)[first])
    histories: list[list[str]] = [[] for _ in range(n_users)]
    for user, row in zip(user_code[first], affinity, strict=True):
        liked = np.flatnonzero(row > 0)
        order = liked[np.lexsort((liked, row[liked]))]
        histories[int(user)] = list(items[order])
    return histories


def _items(raw: pd.DataFrame) -> pd.DataFrame:
    """Items with an empty text and the four item features kept as feature columns."""
    ids = raw["item_id"].astype(str)
    return pd.DataFrame({"item_id": ids, "text": "", **{c: raw[c] for c in ITEM_FEATURES}})
