"""Off-policy estimates from logged propensities: what a policy's clicks would have been.

A simulator fitted on logs is one opinion of a policy's value; inverse propensity scoring (IPS)
is the other, with no model: a logged impression of item ``a`` at position ``p`` counts for the
evaluated policy when the policy puts ``a`` at ``p`` too, weighted by ``1 / propensity`` (the
logging policy's probability of that item at that position). The estimate is the click rate per
logged impression (per slot), comparable with the log's own CTR; under uniform logging it is
unbiased for any policy (Open Bandit Pipeline's ``InverseProbabilityWeighting`` with
``len_list`` positions and item-position propensities).

Alongside every estimate: a 95% bootstrap interval over sessions, the share of logged
impressions the policy matches (``support``: the evidence it rests on), and the effective
sample size of the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from agents.evaluation import bootstrap_intervals
from envs.logs import SessionLog

__all__ = ["IPSEstimate", "item_position_ips", "logged_ctr"]


@dataclass(frozen=True)
class IPSEstimate:
    """An estimated click rate per logged impression (slot).

    Attributes:
        value: the estimate.
        ci_low, ci_high: 95% percentile bootstrap interval (sessions resampled).
        n: logged impressions used.
        support: share of them the evaluated policy matches (item at the same position).
        ess: effective sample size of the weights, ``(sum w)^2 / sum w^2``.
        resolution: the smallest value this sample can tell from 0: with no click among the
            matched impressions, the 95% upper bound (rule of three) is ``3 * mean weight / n``
            (the bootstrap interval then collapses to [0, 0] and says nothing).
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


def item_position_ips(
    log: SessionLog,
    requests: np.ndarray,
    slates: np.ndarray,
    clip: float | None = None,
    self_normalized: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
) -> IPSEstimate:
    """IPS estimate of the click rate per slot of the policy that showed ``slates``.

    Args:
        log: the logged sessions (every impression needs a propensity).
        requests: ``int64[n]`` request codes of ``log`` the policy ranked.
        slates: ``int64[n, S]`` the item code it put at each position (``-1``: none).
        clip: weights above this are clipped (biased, lower variance); ``None``: no clipping.
        self_normalized: divide by the mean weight instead of 1 (SNIPS).
        bootstrap: resamples of sessions for the interval.
        seed: seeds the bootstrap.

    Only the impressions of ``requests`` are used (an evaluation of a subset of sessions
    estimates on that subset).

    Raises:
        ValueError: when a used impression has no propensity.
    """
    width = slates.shape[1]
    slate_of = np.full((log.n_requests, width), -1, dtype=np.int64)
    slate_of[np.asarray(requests, dtype=np.int64)] = slates
    used = np.flatnonzero(slate_of[log.impression_request, 0] >= 0)
    prop = log.propensity[used]
    if np.isnan(prop).any():
        row = int(used[np.argmax(np.isnan(prop))])
        raise ValueError(
            f"IPS needs the logging propensity of every impression; impression {row} "
            f"(request {log.request_ids[log.impression_request[row]]!r}) has none"
        )
    req, pos = log.impression_request[used], log.position[used].astype(np.int64)
    placed = np.where(pos < width, slate_of[req, np.minimum(pos, width - 1)], -1)
    match = placed == log.item[used]
    weight = match / prop
    if clip is not None:
        weight = np.minimum(weight, clip)
    click = log.click[used].astype(np.float64)
    session = log.request_session[req]
    norm = weight if self_normalized else None
    total = weight.sum() if self_normalized else len(used)
    value = float((weight * click).sum() / total) if total > 0 else 0.0
    low, high = bootstrap_intervals({"v": weight * click}, session, bootstrap, seed, norm)["v"]
    ess = float(weight.sum() ** 2 / (weight**2).sum()) if weight.any() else 0.0
    typical = weight[match].mean() if match.any() else float((1.0 / prop).mean())
    resolution = 3.0 * float(typical) / len(used)
    return IPSEstimate(value, low, high, len(used), float(match.mean()), ess, resolution)


def logged_ctr(log: SessionLog, bootstrap: int = 1000, seed: int = 0) -> IPSEstimate:
    """The log's own click rate per impression: the logging policy's on-policy value."""
    click = log.click.astype(np.float64)
    session = log.request_session[log.impression_request]
    low, high = bootstrap_intervals({"v": click}, session, bootstrap, seed)["v"]
    n = log.n_impressions
    return IPSEstimate(float(click.mean()), low, high, n, 1.0, float(n), 3.0 / n)
