"""Off-policy estimates of a ranking policy's clicks from the logging policy's propensities.

A simulator fitted on logs is one opinion of a policy's value; off-policy estimators are the
field's other, resting on the logging policy's probabilities instead of a click model. Every
estimator here values the expected clicks per request at the logged positions (the unit of the
simulator's ``expected_clicks``), from a logged ranking ``a`` with clicks ``r`` per position, the
logging policy's probabilities ``b`` and the evaluated policy's ``e`` of the same ranking:

=========  =====================================================================================
``ips``    whole-slate IPS: ``sum_k r_k * e(a) / b(a)``; unbiased for any click model, but a
           deterministic policy matches a whole logged slate rarely.
``iips``   independent (item-position) IPS: ``sum_k r_k * e(a_k at k) / b(a_k at k)``; unbiased
           when a click depends only on the item and its position (PBM).
``rips``   reward-interaction (cascade) IPS: ``sum_k r_k * e(a_1..a_k) / b(a_1..a_k)``; unbiased
           when a click depends on the items above it (cascade, DCM) and on nothing below.
``sn*``    the self-normalised forms (weights divided by their mean; per position for ``iips``
           and ``rips``).
``dm``     the direct method: the value under a fitted click model (the simulator's answer on
           the logged contexts).
``dr``     cascade doubly robust: ``sum_k w_1..k (r_k - Q_k(a_1..a_k)) + w_1..k-1 E_e[Q_k]``
           with ``Q_k`` a fitted click model's expected clicks from position ``k`` down;
           unbiased under the cascade assumption when either the weights or ``Q`` are right.
``idr``    independent (position-based) doubly robust: ``sum_k E_e[c_k] + w_k (r_k - c_k(a_k))``
           with ``w_k`` the ``iips`` weight and ``c_k`` a fitted model's click probability at
           position ``k``; unbiased under PBM when either part is right, and far less variable
           than ``dr`` when whole prefixes rarely match (not in OBP; tested for unbiasedness).
=========  =====================================================================================

The definitions are Open Bandit Pipeline's slate estimators (``SlateStandardIPS``,
``SlateIndependentIPS``, ``SlateRewardInteractionIPS``, ``SlateCascadeDoublyRobust`` and the
self-normalised forms), tested equal to them. Weights can be clipped. Next to every estimate: a
95% bootstrap interval over sessions, the share of requests with support (a nonzero weight) and
the effective sample size of the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rankgym.agents.evaluation import bootstrap_intervals
from rankgym.logs import SessionLog

__all__ = [
    "ESTIMATORS",
    "NEEDS_MODEL",
    "LoggedSlates",
    "OPEEstimate",
    "TargetProbs",
    "available_estimators",
    "cascade_dr_terms",
    "estimate",
    "logged_clicks",
    "off_policy_estimates",
    "round_rewards",
]

# estimator -> (the probabilities it weights by, self-normalised)
ESTIMATORS: dict[str, tuple[str, bool]] = {
    "ips": ("slate", False),
    "snips": ("slate", True),
    "iips": ("item_position", False),
    "sniips": ("item_position", True),
    "rips": ("prefix", False),
    "snrips": ("prefix", True),
    "dm": ("model", False),
    "dr": ("prefix", False),
    "idr": ("item_position", False),
}
NEEDS_MODEL = ("dm", "dr", "idr")


@dataclass(frozen=True)
class OPEEstimate:
    """An estimate of expected clicks per request at the logged positions.

    Attributes:
        value: the estimate.
        ci_low, ci_high: 95% percentile bootstrap interval (sessions resampled).
        n: requests used.
        support: share of them with a nonzero weight (1 for ``dm``).
        ess: effective sample size of the per-slot weights, ``(sum w)^2 / sum w^2``, in slots.
        resolution: the smallest value this sample tells from 0: with no click among the
            supported slots the 95% upper bound (rule of three) is ``3 * mean weight / n``.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    support: float
    ess: float
    resolution: float = float("nan")

    def to_dict(self, prefix: str) -> dict[str, float]:
        """``{prefix: value, prefix_ci_low: ..., prefix_support: ...}`` for ``metrics.json``."""
        out = {f"{prefix}_{k}": v for k, v in asdict(self).items() if k != "value"}
        return {prefix: self.value, **out}


@dataclass
class LoggedSlates:
    """The logged side of an estimate: ``[n, K]`` matrices for the evaluated requests.

    Attributes:
        items: logged item code at each position (``-1`` where nothing was logged).
        clicks: logged click at each position.
        valid: a logged impression at this position.
        item_position: logging probability of the item at its position (NaN: unknown).
        prefix: logging probability of the ranking from the top to this position.
        session: session code of each request (the bootstrap resamples sessions).
        requests: request codes (rows of the source log).
    """

    items: np.ndarray
    clicks: np.ndarray
    valid: np.ndarray
    item_position: np.ndarray
    prefix: np.ndarray
    session: np.ndarray
    requests: np.ndarray

    @classmethod
    def from_log(cls, log: SessionLog, requests: np.ndarray, width: int) -> LoggedSlates:
        """The logged rankings of ``requests`` cut to the first ``width`` positions."""
        requests = np.asarray(requests, dtype=np.int64)
        n = len(requests)
        row_of = np.full(log.n_requests, -1, dtype=np.int64)
        row_of[requests] = np.arange(n)
        row = row_of[log.impression_request]
        keep = np.flatnonzero((row >= 0) & (log.position < width))
        r, k = row[keep], log.position[keep].astype(np.int64)
        shape = (n, width)
        items = np.full(shape, -1, dtype=np.int64)
        clicks, valid = np.zeros(shape), np.zeros(shape, dtype=bool)
        item_position, prefix = np.full(shape, np.nan), np.full(shape, np.nan)
        items[r, k], clicks[r, k], valid[r, k] = log.item[keep], log.click[keep], True
        item_position[r, k], prefix[r, k] = log.propensity[keep], log.prefix_propensity[keep]
        session = np.asarray(log.request_session, dtype=np.int64)[requests]
        return cls(items, clicks, valid, item_position, prefix, session, requests)

    @property
    def slate(self) -> np.ndarray:
        """``[n, K]``: the logged slate's probability (the prefix at its last position)."""
        return _at_last(self.prefix, self.valid)


@dataclass
class TargetProbs:
    """The evaluated policy's side: its probabilities of the logged rankings, ``[n, K]``.

    Attributes:
        item_position: probability that it puts the logged item at its logged position.
        prefix: probability that it ranks the logged items from the top down to this position
            as logged.
        q_logged: a click model's expected clicks from this position down, given the logged
            items down to here (``Q_k(a_1..a_k)``; for ``dr``).
        q_expected: the same expected under the policy's choice at this position, given the
            logged items above (``E_e[Q_k(a_1..a_k-1, .)]``; for ``dm`` and ``dr``).
        slot_logged: a click model's click probability of the logged item at this position of
            the logged ranking (``c_k(a_k)``; for ``idr``).
        slot_expected: its click probability at this position expected under the policy
            (``E_e[c_k]``; for ``idr``).
    """

    item_position: np.ndarray
    prefix: np.ndarray
    q_logged: np.ndarray | None = None
    q_expected: np.ndarray | None = None
    slot_logged: np.ndarray | None = None
    slot_expected: np.ndarray | None = None

    @classmethod
    def deterministic(
        cls,
        logged: LoggedSlates,
        slates: np.ndarray,
        click_probs: np.ndarray | None = None,
        logged_click_probs: np.ndarray | None = None,
    ) -> TargetProbs:
        """The probabilities (0 or 1) of a policy that shows ``slates`` (``int64[n, S]``).

        Args:
            logged: the logged side (same requests, same order).
            slates: the item code the policy puts at each position (``-1``: none).
            click_probs: ``float64[n, S]`` a click model's click probability at each position
                of the policy's own slates; with it, ``dm`` and ``dr`` are available. Where
                the policy's prefix is the logged one (the only rows ``dr`` weights), ``Q_k``
                is the expected clicks of the policy's slate from ``k`` down.
            logged_click_probs: ``float64[n, K]`` the same model's click probabilities of the
                logged rankings (``logged.items``); with both, ``idr`` is available.
        """
        width = logged.items.shape[1]
        placed = _fit_width(np.asarray(slates, dtype=np.int64), width, -1)
        match = (placed == logged.items) & logged.valid
        item_position = match.astype(np.float64)
        prefix = np.cumprod(match | ~logged.valid, axis=1) * logged.valid
        q = None
        if click_probs is not None:
            probs = _fit_width(np.asarray(click_probs, dtype=np.float64), width, 0.0)
            probs = np.where((placed >= 0) & logged.valid, probs, 0.0)  # the logged positions
            q = np.cumsum(probs[:, ::-1], axis=1)[:, ::-1]  # expected clicks from k down
        target = cls(item_position, prefix.astype(np.float64), q, q)
        if click_probs is not None and logged_click_probs is not None:
            target.slot_expected = probs
            own = _fit_width(np.asarray(logged_click_probs, dtype=np.float64), width, 0.0)
            target.slot_logged = np.where(logged.valid, own, 0.0)
        return target


def cascade_dr_terms(
    q_hat: np.ndarray, action_dist: np.ndarray, actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(q_logged, q_expected)`` of :class:`TargetProbs` for a stochastic policy.

    Args:
        q_hat: ``float64[n, K, A]`` estimated expected clicks from position ``k`` down when
            action ``a`` is placed at ``k`` below the logged items ``a_1..a_k-1``.
        action_dist: ``float64[n, K, A]`` the policy's probability of each action at ``k``
            given the logged items above.
        actions: ``int64[n, K]`` the logged action at each position.
    """
    q_logged = np.take_along_axis(q_hat, actions[:, :, None], axis=2)[:, :, 0]
    return q_logged, (q_hat * action_dist).sum(axis=2)


def available_estimators(logged: LoggedSlates, target: TargetProbs) -> list[str]:
    """The estimators the inputs allow: ``iips`` and ``idr`` need item-position propensities,
    ``ips``, ``rips`` and ``dr`` prefix propensities, ``dm``, ``dr`` and ``idr`` a click model
    (``idr`` also its click probabilities of the logged rankings)."""
    have = {
        "item_position": not np.isnan(logged.item_position[logged.valid]).any(),
        "prefix": not np.isnan(logged.prefix[logged.valid]).any(),
        "model": target.q_expected is not None,
    }
    have["slate"] = have["prefix"]
    out = [name for name, (needs, _) in ESTIMATORS.items() if have[needs]]
    out = [name for name in out if name not in NEEDS_MODEL or have["model"]]
    return [name for name in out if name != "idr" or target.slot_logged is not None]


def round_rewards(
    estimator: str, logged: LoggedSlates, target: TargetProbs, clip: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-slot estimated clicks ``[n, K]`` and the weights they used.

    The estimate is their sum over slots, averaged over requests (Open Bandit Pipeline's
    ``_estimate_round_rewards``, summed per slate).

    Raises:
        ValueError: for an unknown estimator, a missing propensity or a missing click model.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip={clip}; allowed: > 0 or None")
    kind, normalise = ESTIMATORS[estimator]
    valid = logged.valid
    if estimator in NEEDS_MODEL and target.q_expected is None:
        raise ValueError(f"estimator {estimator!r} needs a click model's values (q_expected)")
    if estimator == "idr" and target.slot_logged is None:
        raise ValueError(
            "estimator 'idr' needs a click model's click probabilities of the logged rankings"
        )
    if kind == "model":
        out = np.zeros_like(logged.clicks)
        out[:, 0] = target.q_expected[:, 0]  # E_e[Q_1]: the policy's value under the model
        return out, np.where(valid, 1.0, 0.0)
    behaviour, evaluation = {
        "slate": (logged.slate, _at_last(target.prefix, valid)),
        "item_position": (logged.item_position, target.item_position),
        "prefix": (logged.prefix, target.prefix),
    }[kind]
    missing = valid & np.isnan(behaviour)
    if missing.any():
        column = "propensity" if kind == "item_position" else "prefix_propensity"
        row, k = np.argwhere(missing)[0]
        raise ValueError(
            f"estimator {estimator!r} needs the log's {column} at every evaluated position; "
            f"request code {logged.requests[row]} has none at position {k}"
        )
    weight = np.where(valid, evaluation / np.where(valid, behaviour, 1.0), 0.0)
    if clip is not None:
        weight = np.minimum(weight, clip)
    if normalise:
        weight = _self_normalise(weight, valid, per_position=kind != "slate")
    if estimator == "idr":
        out = target.slot_expected + weight * (logged.clicks - target.slot_logged)
        return np.where(valid, out, 0.0), weight
    if estimator != "dr":
        return np.where(valid, logged.clicks * weight, 0.0), weight
    above = np.concatenate([np.ones((len(weight), 1)), weight[:, :-1]], axis=1)
    q_logged = np.nan_to_num(target.q_logged)
    out = weight * (logged.clicks - q_logged) + above * target.q_expected
    return np.where(valid, out, 0.0), weight


def estimate(
    estimator: str,
    logged: LoggedSlates,
    target: TargetProbs,
    clip: float | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> OPEEstimate:
    """One estimator's value of the target policy, with interval, support and ESS."""
    contribution, weight = round_rewards(estimator, logged, target, clip)
    per_request = contribution.sum(axis=1)
    n = len(per_request)
    (low, high) = bootstrap_intervals({"v": per_request}, logged.session, bootstrap, seed)["v"]
    w = weight[logged.valid]
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w != 0).any() else 0.0
    support = float(((weight != 0) & logged.valid).any(axis=1).mean()) if n else 0.0
    typical = float(w[w != 0].mean()) if (w != 0).any() else float("nan")
    value = float(per_request.mean()) if n else float("nan")
    return OPEEstimate(value, low, high, n, support, ess, 3.0 * typical / max(n, 1))


def off_policy_estimates(
    log: SessionLog,
    requests: np.ndarray,
    slates: np.ndarray,
    click_probs: np.ndarray | None = None,
    estimators: list[str] | None = None,
    clip: float | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    logged_click_probs: np.ndarray | None = None,
) -> dict[str, OPEEstimate]:
    """Every available (or every listed) estimator's value of a policy that showed ``slates``.

    Args:
        log: the logged sessions (``requests`` are its request codes).
        requests: ``int64[n]`` the requests the policy ranked.
        slates: ``int64[n, S]`` the item code it put at each position (``-1``: none).
        click_probs: ``float64[n, S]`` a fitted click model's click probabilities of those
            slates (enables ``dm`` and ``dr``).
        logged_click_probs: ``float64[n, S]`` the same model's click probabilities of the
            logged rankings (with ``click_probs``, enables ``idr``).
        estimators: names from :data:`ESTIMATORS`; ``None``: all the inputs allow.
        clip: clip every importance weight at this value.
        bootstrap, seed: resamples of sessions for the intervals, and their seed.
    """
    logged = LoggedSlates.from_log(log, requests, np.shape(slates)[1])
    target = TargetProbs.deterministic(logged, slates, click_probs, logged_click_probs)
    names = available_estimators(logged, target) if estimators is None else estimators
    return {name: estimate(name, logged, target, clip, bootstrap, seed) for name in names}


def logged_clicks(
    log: SessionLog, requests: np.ndarray, width: int, bootstrap: int = 1000, seed: int = 0
) -> OPEEstimate:
    """The log's own clicks per request at its first ``width`` positions: the logging policy's
    on-policy value, in the unit of the estimates."""
    logged = LoggedSlates.from_log(log, requests, width)
    per_request = logged.clicks.sum(axis=1)
    n = len(per_request)
    low, high = bootstrap_intervals({"v": per_request}, logged.session, bootstrap, seed)["v"]
    slots = int(logged.valid.sum())
    return OPEEstimate(float(per_request.mean()), low, high, n, 1.0, float(slots), 3.0 / n)


# ---------------------------------------------------------------------- helpers
def _at_last(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each row's value at its last valid position, broadcast over the row (NaN: none)."""
    last = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    out = values[np.arange(len(values)), last]
    out = np.where(valid.any(axis=1), out, np.nan)
    return np.repeat(out[:, None], valid.shape[1], axis=1)


def _fit_width(matrix: np.ndarray, width: int, fill: float) -> np.ndarray:
    """``matrix`` cut or padded with ``fill`` to ``width`` columns."""
    if matrix.shape[1] >= width:
        return matrix[:, :width]
    pad = np.full((len(matrix), width - matrix.shape[1]), fill, dtype=matrix.dtype)
    return np.concatenate([matrix, pad], axis=1)


def _self_normalise(weight: np.ndarray, valid: np.ndarray, per_position: bool) -> np.ndarray:
    """Weights divided by their mean over the valid slots (of each position, or of all)."""
    if per_position:
        count = valid.sum(axis=0)
        mean = np.where(count > 0, (weight * valid).sum(axis=0) / np.maximum(count, 1), 1.0)
        return weight / np.where(mean > 0, mean, 1.0)
    mean = weight[valid].mean() if valid.any() else 1.0
    return weight / (mean if mean > 0 else 1.0)
