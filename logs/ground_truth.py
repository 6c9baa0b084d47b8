"""The synthetic world's ground-truth click model, saved beside the log it generated.

Because the truth is known, rankgym can compute the true value of *any* ranking, including ones the
logging policy never showed. A click at position ``k`` of a ranking is

* PBM: ``examination[k] * attractiveness(request, item)``;
* cascade: ``attractiveness(item_k) * prod_{j<k} (1 - attractiveness(item_j)) (1 - abandonment)``:
  the user scans top-down, stops at the first click, and leaves after an item they skip with
  probability ``abandonment`` (without it nearly every user clicks something, whatever the order,
  and expected clicks cannot tell rankings apart).

Attractiveness is a logistic function of the request's latent intent (category, brand, colour,
price band; ``-1`` where the query does not say) and the user's latent preferences.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from rankgym.logs.dynamics import DynamicsParams, UserDynamics, item_satisfaction
from rankgym.logs.errors import LogValidationError

TRUTH_DIR = "truth"
LATENT_DIR = "latent"  # truth/latent/: a sequential world's whole latent timeline, as a log
CLICK_MODELS = ("pbm", "cascade")


@dataclass(frozen=True)
class AttractivenessWeights:
    """Logit weights of the ground-truth attractiveness (documented so results are explainable)."""

    bias: float = -1.5
    quality: float = 0.6
    user_category: float = 0.5
    user_brand: float = 0.5
    user_price: float = 0.4
    intent_category: float = 1.6
    intent_brand: float = 1.0
    intent_colour: float = 0.8
    intent_price: float = 0.5


@dataclass(eq=False)
class GroundTruth:
    """Latent item, user and request attributes plus the click model over them.

    Item and user arrays are indexed by the codes of the log's item and user tables (which every
    split shares); request arrays are indexed by a truth row, found from request ids with
    :meth:`request_rows`, so the truth stays valid for any subset of the log.
    """

    item_ids: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    item_colour: np.ndarray
    item_price: np.ndarray
    item_quality: np.ndarray
    user_ids: np.ndarray
    user_category_pref: np.ndarray
    user_brand_affinity: np.ndarray
    user_price: np.ndarray
    request_ids: np.ndarray
    request_user: np.ndarray
    request_category: np.ndarray
    request_brand: np.ndarray
    request_colour: np.ndarray
    request_price: np.ndarray
    examination: np.ndarray
    click_model: str = "pbm"
    weights: AttractivenessWeights = AttractivenessWeights()
    abandonment: float = 0.0
    dynamics: DynamicsParams | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.abandonment < 1:
            raise ValueError(f"abandonment must be in [0, 1), got {self.abandonment}")
        if self.click_model not in CLICK_MODELS:
            raise ValueError(
                f"click_model must be one of {', '.join(CLICK_MODELS)}, got {self.click_model!r}"
            )

    def user_dynamics(self) -> UserDynamics | None:
        """The sequential world's continuation, satiation and return (``None`` in a bandit
        world): groups are item categories; satisfaction follows the hidden item quality and
        the price band."""
        if self.dynamics is None:
            return None
        satisfaction = item_satisfaction(self.item_quality, self.item_price, self.dynamics)
        return UserDynamics(self.dynamics, self.item_category, satisfaction)

    # ------------------------------------------------------------------ the click model
    def attractiveness(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Click probability given examination, for truth request rows and item codes.

        ``rows`` and ``items`` broadcast against each other (e.g. ``rows[:, None]`` and
        ``items[B, K]``).
        """
        w = self.weights
        rows, items = np.broadcast_arrays(np.asarray(rows), np.asarray(items))
        user = self.request_user[rows]
        cat, brand = self.item_category[items], self.item_brand[items]
        price = self.item_price[items]
        n_cat = self.user_category_pref.shape[1]
        pref = np.log(np.clip(self.user_category_pref[user, cat] * n_cat, 0.05, 8.0))
        logit = (
            w.bias
            + w.quality * self.item_quality[items]
            + w.user_category * pref
            + w.user_brand * self.user_brand_affinity[user, brand]
            - w.user_price * np.abs(price - self.user_price[user])
        )
        r_cat, r_brand = self.request_category[rows], self.request_brand[rows]
        r_colour, r_price = self.request_colour[rows], self.request_price[rows]
        logit += np.where(r_cat >= 0, w.intent_category * np.where(cat == r_cat, 1.0, -1.0), 0.0)
        logit += np.where(r_brand >= 0, w.intent_brand * (brand == r_brand), 0.0)
        logit += np.where(r_colour >= 0, w.intent_colour * (self.item_colour[items] == r_colour), 0)
        logit += np.where(r_price >= 0, -w.intent_price * np.abs(price - r_price), 0.0)
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float64)

    def click_probs(self, rows: np.ndarray, rankings: np.ndarray) -> np.ndarray:
        """Per-position click probabilities of rankings (``[B, L]`` item codes, ``-1`` = empty).

        Empty slots get probability 0 and, for the cascade, do not stop the scan.
        """
        rows = np.asarray(rows)
        rankings = np.atleast_2d(rankings)
        valid = rankings >= 0
        attr = np.where(valid, self.attractiveness(rows[:, None], np.where(valid, rankings, 0)), 0)
        length = rankings.shape[1]
        if length > len(self.examination):
            raise ValueError(
                f"ranking length {length} exceeds the {len(self.examination)} positions the "
                "ground truth models"
            )
        if self.click_model == "pbm":
            return attr * self.examination[:length]
        survive = np.cumprod((1.0 - attr) * (1.0 - self.abandonment), axis=1)
        before = np.concatenate([np.ones_like(survive[:, :1]), survive[:, :-1]], axis=1)
        return attr * before

    def true_click_probs(self, request: int, ranking: np.ndarray) -> np.ndarray:
        """Click probability at each position of ``ranking`` (item codes) for one truth row."""
        return self.click_probs(np.array([request]), np.asarray(ranking)[None, :])[0]

    def request_rows(self, request_ids: np.ndarray) -> np.ndarray:
        """Truth rows of the given request ids; raises if one is unknown (a mismatched log)."""
        index = {rid: i for i, rid in enumerate(self.request_ids)}
        try:
            return np.array([index[r] for r in request_ids], dtype=np.int64)
        except KeyError as err:
            raise LogValidationError(
                TRUTH_DIR, f"request id {err.args[0]!r} is not in the ground truth of this world"
            ) from None

    def check_log(self, item_ids: np.ndarray, user_ids: np.ndarray) -> None:
        """Raise when a log's item or user table is not the one this truth was generated with."""
        for name, mine, theirs in (
            ("item", self.item_ids, item_ids),
            ("user", self.user_ids, user_ids),
        ):
            if len(mine) != len(theirs) or not np.array_equal(mine, theirs):
                raise LogValidationError(
                    TRUTH_DIR,
                    f"the log's {name} table ({len(theirs)} ids) does not match the ground "
                    f"truth's ({len(mine)} ids): the log and truth come from different worlds",
                )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write ``directory/truth/`` (``.npy`` arrays plus ``truth.json``); deterministic bytes."""
        out = Path(directory) / TRUTH_DIR
        out.mkdir(parents=True, exist_ok=True)
        scalars = {
            "click_model": self.click_model,
            "weights": asdict(self.weights),
            "abandonment": self.abandonment,
        }
        if self.dynamics is not None:  # a bandit world's truth.json stays as it was
            scalars["dynamics"] = asdict(self.dynamics)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                array = value.astype(str) if value.dtype == object else value
                np.save(out / f"{f.name}.npy", array, allow_pickle=False)
        (out / "truth.json").write_text(json.dumps(scalars, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> GroundTruth:
        """Load the truth saved with a synthetic dataset directory (never unpickles)."""
        src = Path(directory) / TRUTH_DIR
        if not (src / "truth.json").is_file():
            raise FileNotFoundError(
                f"{src}: no ground truth here; only datasets written by the synthetic world "
                "(dataset=synthetic) have one: for other logs use a fitted reward model, "
                "reward=neural (the best measured; docs/trusting-the-simulator.md)"
            )
        scalars = json.loads((src / "truth.json").read_text())
        arrays = {}
        for f in fields(cls):
            path = src / f"{f.name}.npy"
            if path.is_file():
                value = np.load(path, allow_pickle=False)
                arrays[f.name] = value.astype(object) if value.dtype.kind == "U" else value
        return cls(
            **arrays,
            click_model=scalars["click_model"],
            weights=AttractivenessWeights(**scalars["weights"]),
            abandonment=float(scalars.get("abandonment", 0.0)),
            dynamics=DynamicsParams(**scalars["dynamics"]) if "dynamics" in scalars else None,
        )
