"""IPS per slot: exact values on a hand-made log, and unbiasedness under uniform logging."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agents.ope import item_position_ips, logged_ctr
from envs.logs import SessionLog


def _log(items, positions, clicks, propensity, n_items: int) -> SessionLog:
    n = len(items)
    impressions = pd.DataFrame(
        {
            "session_id": [f"s{i}" for i in range(n)],
            "request_id": [f"r{i}" for i in range(n)],
            "user_id": "u",
            "timestamp": np.arange(n),
            "query": "",
            "item_id": [str(i) for i in items],
            "position": positions,
            "click": clicks,
            "propensity": propensity,
        }
    )
    catalog = pd.DataFrame({"item_id": [str(i) for i in range(n_items)], "text": ""})
    return SessionLog.from_tables(impressions, catalog)


def test_exact_values_on_a_hand_made_log() -> None:
    log = _log([0, 1, 0, 1], [0, 1, 1, 0], [1, 0, 1, 1], [0.5] * 4, n_items=2)
    order = np.argsort(log.request_ids.astype(str))  # codes of r0..r3
    # the policy's 2-slot slates: it shows item 0 first, item 1 second, for every request
    slates = np.tile([0, 1], (4, 1))
    est = item_position_ips(log, order, slates, bootstrap=0)
    # r0 (item 0 at 0) and r1 (item 1 at 1) match; weights 2, 2, 0, 0; clicks 1, 0
    assert est.value == pytest.approx((2 * 1 + 2 * 0) / 4)
    assert (est.support, est.ess, est.n) == (0.5, 2.0, 4)
    assert est.resolution == 3 * 2 / 4  # rule of three over the matched weights
    assert item_position_ips(log, order, slates, clip=1.5, bootstrap=0).value == 1.5 / 4
    snips = item_position_ips(log, order, slates, self_normalized=True, bootstrap=0)
    assert snips.value == pytest.approx(0.5 / 1.0)  # mean weight 1
    assert logged_ctr(log, bootstrap=0).value == 0.75
    # a subset of requests estimates on their impressions only
    assert item_position_ips(log, order[:2], slates[:2], bootstrap=0).value == 1.0


def test_unbiased_under_uniform_logging() -> None:
    """Uniform logging of 5 items over 2 positions; the IPS value of a fixed ranking falls
    within its interval of the true click rate per slot."""
    rng = np.random.default_rng(0)
    n, n_items = 40_000, 5
    attract = np.array([0.30, 0.20, 0.10, 0.05, 0.02])
    exam = np.array([1.0, 0.5])
    pos = rng.integers(0, 2, n)
    item = rng.integers(0, n_items, n)
    click = (rng.random(n) < attract[item] * exam[pos]).astype(int)
    log = _log(item, pos, click, np.full(n, 1 / n_items), n_items)
    ranking = np.array([2, 0])  # item 2 on top, item 0 second
    slates = np.tile(ranking, (log.n_requests, 1))
    est = item_position_ips(log, np.arange(log.n_requests), slates, bootstrap=200)
    truth = (attract[ranking] * exam).mean()  # clicks per slot, averaged over the 2 positions
    assert est.ci_low <= truth <= est.ci_high
    assert est.value == pytest.approx(truth, rel=0.15)
    assert est.support == pytest.approx(1 / n_items, rel=0.05)


def test_missing_propensity_is_named() -> None:
    log = _log([0, 1], [0, 0], [1, 0], [0.5, None], n_items=2)
    with pytest.raises(ValueError, match="impression 1 .*request 'r1'.* has none"):
        item_position_ips(log, np.arange(2), np.zeros((2, 1), dtype=np.int64), bootstrap=0)
