"""Off-policy estimators: exact values on a hand-made log, and unbiasedness where theory says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rankgym.agents.ope import (
    ESTIMATORS,
    LoggedSlates,
    TargetProbs,
    estimate,
    logged_clicks,
    off_policy_estimates,
)
from rankgym.logs import SessionLog
from rankgym.logs.plackett_luce import position_marginals, prefix_probabilities


def _log(requests, items, positions, clicks, propensity, prefix=None, n_items=2) -> SessionLog:
    impressions = pd.DataFrame(
        {
            "session_id": [f"s{r}" for r in requests],
            "request_id": [f"r{r:05d}" for r in requests],
            "user_id": "u",
            "timestamp": np.asarray(requests),
            "query": "",
            "item_id": [str(i) for i in items],
            "position": positions,
            "click": clicks,
            "propensity": propensity,
        }
    )
    if prefix is not None:
        impressions["prefix_propensity"] = prefix
    catalog = pd.DataFrame({"item_id": [str(i) for i in range(n_items)], "text": ""})
    return SessionLog.from_tables(impressions, catalog)


def test_exact_values_on_a_hand_made_log() -> None:
    # two requests, each logging items 0 and 1; r0 as [0, 1] (click at the top), r1 as [1, 0]
    log = _log(
        [0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1],
        propensity=[0.5, 0.5, 0.5, 0.5], prefix=[0.5, 0.5, 0.5, 0.5],
    )  # fmt: skip
    slates = np.array([[0, 1], [0, 1]])  # the policy shows [0, 1] to both
    est = off_policy_estimates(log, np.arange(2), slates, bootstrap=0)
    assert set(est) == {"ips", "snips", "iips", "sniips", "rips", "snrips"}  # no model: no dm/dr
    # r0 matches entirely (weight 2 everywhere), r1 nowhere: clicks 1 at weight 2, over 2 requests
    for name in ("ips", "iips", "rips"):
        assert est[name].value == pytest.approx(1.0), name
        assert est[name].support == 0.5 and est[name].n == 2
    assert est["iips"].ess == pytest.approx(2.0)  # two slots of weight 2
    assert est["snips"].value == pytest.approx(1.0)  # mean weight 1: unchanged
    # a model's click probabilities of the policy's slates: 0.4 then 0.1 (dm 0.5 per request)
    probs = np.array([[0.4, 0.1], [0.4, 0.1]])
    est = off_policy_estimates(log, np.arange(2), slates, probs, ["dm", "dr"], bootstrap=0)
    assert est["dm"].value == pytest.approx(0.5)
    # dr: r0 = 0.5 + 2 (1 - 0.5) + 2 (0 - 0.1) - 2 * 0.1 ... per OBP's cascade-DR:
    # k=0: w1 (r - Q1) + Q1 = 2 (1 - 0.5) + 0.5; k=1: w2 (r - Q2) + w1 Q2 = 2 (0 - 0.1) + 2 * 0.1
    # r1: k=0: 0 + 0.5; k=1: 0.  Mean: (1.5 + 0.5) / 2
    assert est["dr"].value == pytest.approx(1.0)
    # idr: sum_k c_k(policy) + w_k (r_k - c_k(logged item)); the model's probabilities of the
    # logged rankings: r0 [0.4, 0.1] (as the policy's), r1 [0.3, 0.2]
    own = np.array([[0.4, 0.1], [0.3, 0.2]])
    idr = off_policy_estimates(log, np.arange(2), slates, probs, ["idr"], None, 0, 0, own)["idr"]
    # r0: 0.5 + 2 (1 - 0.4) + 2 (0 - 0.1) = 1.5; r1: 0.5 + 0 = 0.5 (no item matches)
    assert idr.value == pytest.approx(1.0)
    assert off_policy_estimates(log, np.arange(2), slates, bootstrap=0, clip=1.0)[
        "iips"
    ].value == pytest.approx(0.5)
    assert logged_clicks(log, np.arange(2), width=2, bootstrap=0).value == 1.0


def _plackett_luce_world(
    structure: str, n: int, seed: int
) -> tuple[SessionLog, np.ndarray, np.ndarray]:
    """``n`` requests ranking the same 5 items with a PL logger; PBM or cascade clicks."""
    rng = np.random.default_rng(seed)
    attract = np.array([0.5, 0.35, 0.2, 0.1, 0.05])
    exam = np.array([1.0, 0.6, 0.4, 0.3, 0.2])
    logits = np.tile([0.0, -0.3, 0.4, 0.2, -0.1], (n, 1))
    order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)
    prefix = prefix_probabilities(logits, order)
    marg = position_marginals(logits[:1], np.array([5]))[0]  # [item, position]
    shown = attract[order]
    u = rng.random(order.shape)
    if structure == "pbm":
        click = u < shown * exam
    else:  # the first attractive item is clicked, nothing after it
        hit = u < shown
        first = np.where(hit.any(axis=1), np.argmax(hit, axis=1), 5)
        click = np.arange(5)[None, :] == first[:, None]
    req = np.repeat(np.arange(n), 5)
    pos = np.tile(np.arange(5), n)
    log = _log(
        req, order.reshape(-1), pos, click.reshape(-1).astype(int),
        marg[order, np.arange(5)[None, :]].reshape(-1), prefix.reshape(-1), n_items=5,
    )  # fmt: skip
    return log, attract, exam


def _true_value(structure: str, ranking: np.ndarray, attract: np.ndarray, exam: np.ndarray):
    a = attract[ranking]
    if structure == "pbm":
        return float((a * exam[: len(a)]).sum())
    return float((a * np.concatenate([[1.0], np.cumprod(1 - a)[:-1]])).sum())


@pytest.mark.slow  # statistical: 30,000 logged requests per world
@pytest.mark.parametrize(
    ("structure", "unbiased"), [("pbm", ["iips", "rips", "ips"]), ("cascade", ["rips", "ips"])]
)
def test_estimators_are_unbiased_where_their_assumption_holds(structure, unbiased) -> None:
    log, attract, exam = _plackett_luce_world(structure, n=30_000, seed=1)
    ranking = np.array([0, 1, 2])  # the best three, best first: far from the logger's order
    truth = _true_value(structure, ranking, attract, exam)
    slates = np.tile(ranking, (log.n_requests, 1))
    est = off_policy_estimates(log, np.arange(log.n_requests), slates, bootstrap=300)
    for name in unbiased:
        e = est[name]
        assert e.ci_low <= truth <= e.ci_high, (name, e, truth)
        assert e.value == pytest.approx(truth, rel=0.1), name
    if structure == "cascade":  # iips assumes independent positions: off on a cascade
        assert abs(est["iips"].value - truth) > 0.1 * truth
    # the more a weight asks to match, the fewer requests support it
    assert est["iips"].support > est["rips"].support > est["ips"].support > 0


@pytest.mark.slow  # statistical: 30,000 logged requests
def test_doubly_robust_is_right_with_either_part_right() -> None:
    log, attract, exam = _plackett_luce_world("cascade", n=30_000, seed=2)
    ranking = np.array([0, 1, 2])
    truth = _true_value("cascade", ranking, attract, exam)
    slates = np.tile(ranking, (log.n_requests, 1))
    a = attract[ranking]
    right = a * np.concatenate([[1.0], np.cumprod(1 - a)[:-1]])
    wrong = np.full(3, 0.3)  # a click model that knows nothing
    logged = LoggedSlates.from_log(log, np.arange(log.n_requests), 3)
    n = log.n_requests
    good = estimate("dr", logged, TargetProbs.deterministic(logged, slates, np.tile(right, (n, 1))))
    bad = estimate("dr", logged, TargetProbs.deterministic(logged, slates, np.tile(wrong, (n, 1))))
    dm_bad = estimate(
        "dm", logged, TargetProbs.deterministic(logged, slates, np.tile(wrong, (n, 1)))
    )
    rips = estimate("rips", logged, TargetProbs.deterministic(logged, slates))
    assert good.value == pytest.approx(truth, rel=0.03)
    assert bad.ci_low <= truth <= bad.ci_high  # the weights rescue a wrong model
    assert dm_bad.value == pytest.approx(0.9) and abs(dm_bad.value - truth) > 0.15
    # a right model removes the part of the weights' variance it explains (the clicks' own
    # noise, times the weights, stays)
    assert good.ci_high - good.ci_low < 0.9 * (rips.ci_high - rips.ci_low)


@pytest.mark.slow  # statistical: 30,000 logged requests
def test_independent_doubly_robust_under_pbm() -> None:
    log, attract, exam = _plackett_luce_world("pbm", n=30_000, seed=3)
    ranking = np.array([0, 1, 2])
    truth = _true_value("pbm", ranking, attract, exam)
    n = log.n_requests
    slates = np.tile(ranking, (n, 1))
    logged = LoggedSlates.from_log(log, np.arange(n), 3)

    def model(attr: np.ndarray) -> TargetProbs:  # a PBM click model with these attractions
        own = attr[np.maximum(logged.items, 0)] * exam[:3]
        policy = np.tile(attr[ranking] * exam[:3], (n, 1))
        return TargetProbs.deterministic(logged, slates, policy, own)

    good = estimate("idr", logged, model(attract))
    bad = estimate("idr", logged, model(np.full(5, 0.3)))
    iips = estimate("iips", logged, model(attract))
    assert good.value == pytest.approx(truth, rel=0.03)
    assert bad.ci_low <= truth <= bad.ci_high  # the weights rescue a wrong model
    assert good.ci_high - good.ci_low < 0.9 * (iips.ci_high - iips.ci_low)  # and it pays


def test_missing_propensities_are_named() -> None:
    log = _log([0, 1], [0, 1], [0, 0], [1, 0], [0.5, None])  # no prefix propensities at all
    slates = np.array([[0], [1]])
    with pytest.raises(ValueError, match="'iips' needs the log's propensity .* request code 1"):
        off_policy_estimates(log, np.arange(2), slates, estimators=["iips"], bootstrap=0)
    with pytest.raises(ValueError, match="'rips' needs the log's prefix_propensity"):
        off_policy_estimates(log, np.arange(2), slates, estimators=["rips"], bootstrap=0)
    with pytest.raises(ValueError, match="'dr' needs a click model"):
        off_policy_estimates(log, np.arange(2), slates, estimators=["dr"], bootstrap=0)
    with pytest.raises(ValueError, match="estimator='x'; allowed: " + ", ".join(ESTIMATORS)):
        off_policy_estimates(log, np.arange(2), slates, estimators=["x"], bootstrap=0)
