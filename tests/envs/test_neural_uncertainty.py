"""The neural model's epistemic uncertainty: bootstrap members, their values, the penalty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rankgym.agents.evaluation import epistemic_interval
from rankgym.agents.fidelity import apart_pairs, covered
from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.encoders.pooling import UserPooling
from rankgym.envs.click_models.base import logged_rankings, positional_click_probs
from rankgym.envs.click_models.neural import NeuralClickModel
from rankgym.envs.click_models.neural.fitting import bootstrap_weights, new_member
from rankgym.envs.click_models.neural.structure import RequestBatch
from rankgym.envs.click_models.neural.tables import Tables
from rankgym.envs.replay import ReplayConfig

SMALL = {"hidden": 8, "epochs": 1, "structure": "pbm", "calibrate": "none"}


@pytest.fixture(scope="module")
def members(small_world) -> NeuralClickModel:
    log, _ = small_world
    return NeuralClickModel(**SMALL, ensemble=3).fit(log)


def test_bootstrap_weights_are_per_session_seeded_and_of_mean_one(small_world) -> None:
    log, _ = small_world
    w = bootstrap_weights(log, seed=7)
    assert w.shape == (log.n_requests,) and (w > 0).all()
    session = log.request_session
    for s in np.unique(session)[:20]:  # one weight per session, shared by its requests
        assert np.unique(w[session == s]).size == 1
    per_session = np.array([w[session == s][0] for s in np.unique(session)])
    assert abs(per_session.mean() - 1) < 4 * per_session.std() / np.sqrt(len(per_session))
    np.testing.assert_array_equal(w, bootstrap_weights(log, seed=7))
    assert not np.array_equal(w, bootstrap_weights(log, seed=8))
    mild = bootstrap_weights(log, seed=7, variance=0.25)
    per_session = np.array([mild[session == s][0] for s in np.unique(session)])
    assert per_session.var() == pytest.approx(0.25, rel=0.3)


def test_the_likelihood_weights_each_request(small_world) -> None:
    """Weight 2 on a request counts it twice; weight 0 drops it."""
    log, _ = small_world
    settings = NeuralClickModel(**SMALL, item_stats=False).settings
    tables = Tables.of(encode_log(log, HashingEncoder(dim=16), progress=False), True)
    batch = RequestBatch(log, tables, UserPooling(), settings, torch.device("cpu"))
    module = new_member(tables, settings)
    module.eval()
    rows = torch.arange(4)
    with torch.no_grad():
        per = [float(batch.log_likelihood(module, "pbm", rows[k : k + 1])) for k in range(4)]
        sizes = batch.valid[:4].sum(1).double().numpy()
        batch.weights = torch.tensor([2.0, 0.0, 1.0, 1.0] + [1.0] * (len(batch.query) - 4))
        got = float(batch.log_likelihood(module, "pbm", rows))
    total = 2 * per[0] * sizes[0] + per[2] * sizes[2] + per[3] * sizes[3]
    assert got == pytest.approx(total / (2 * sizes[0] + sizes[2] + sizes[3]), rel=1e-5)


def test_bootstrap_members_differ_by_their_weights_not_only_their_seed(small_world) -> None:
    """Two fits from one seed: with bootstrap the member sees another reweighted log."""
    log, _ = small_world
    rankings, _ = logged_rankings(log)
    requests = np.arange(log.n_requests)
    attr = {}
    for variance in (0.0, 0.25):
        model = NeuralClickModel(**SMALL, ensemble=1, bootstrap=variance).fit(log)
        attr[variance] = model.attractiveness(model.context(log), requests, rankings)
    assert not np.allclose(attr[0.0], attr[0.25])


def test_member_click_probs_average_to_the_served_ones(small_world, members) -> None:
    log, _ = small_world
    rankings, _ = logged_rankings(log)
    requests = np.arange(log.n_requests)
    context = members.context(log)
    each = members.member_attractiveness(context, requests, rankings)
    assert each.shape == (3, *rankings.shape)
    np.testing.assert_allclose(
        each.mean(0), members.attractiveness(context, requests, rankings), rtol=1e-6, atol=1e-9
    )
    probs = members.member_click_probs(context, requests, rankings)
    for m in range(3):
        expected = positional_click_probs(each[m], rankings >= 0, members)
        np.testing.assert_allclose(probs[m], expected, rtol=1e-9)
    assert (probs[:, rankings < 0] == 0).all()
    single = NeuralClickModel(**SMALL, ensemble=1).fit(log)
    assert single.member_click_probs(single.context(log), requests, rankings) is None


def test_the_penalty_serves_the_mean_less_the_members_spread(small_world, members) -> None:
    log, _ = small_world
    rankings, _ = logged_rankings(log)
    requests = np.arange(log.n_requests)
    context = members.context(log)
    each = members.member_attractiveness(context, requests, rankings)
    penalised = NeuralClickModel(**SMALL, ensemble=3, penalty=1.5)
    members.serve_as(penalised)
    try:
        got = members.attractiveness(context, requests, rankings)
    finally:
        members.serve_as(NeuralClickModel(**SMALL, ensemble=3))
    want = np.clip(each.mean(0) - 1.5 * each.std(0, ddof=1), 0, None)
    np.testing.assert_allclose(got, np.where(rankings >= 0, want, 0), rtol=1e-5, atol=1e-7)
    assert (got <= members.attractiveness(context, requests, rankings) + 1e-12).all()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"penalty": -1.0}, "reward.penalty=-1.0; allowed: a number >= 0"),
        ({"penalty": 1.0, "ensemble": 1}, "reward.penalty=1.0; allowed: 0 with ensemble=1"),
        ({"bootstrap": "yes"}, r"reward.bootstrap='yes'; allowed: a variance in \[0, 1\]"),
        ({"bootstrap": 2}, r"reward.bootstrap=2; allowed: a variance in \[0, 1\]"),
    ],
)
def test_wrong_uncertainty_settings_name_the_key(settings, message) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        NeuralClickModel(**settings)


def test_the_penalty_is_left_out_of_the_fit_cache_key(small_world, tmp_path: Path) -> None:
    """A penalised model reuses the unpenalised fit and serves with its own penalty."""
    from rankgym.envs.setup import fit_reward_model

    log, _ = small_world
    encoded = encode_log(log, HashingEncoder(dim=16), progress=False)
    plain = fit_reward_model(
        NeuralClickModel(**SMALL, ensemble=2), log, log, encoded, ReplayConfig(), tmp_path
    )
    harsh = fit_reward_model(
        NeuralClickModel(**SMALL, ensemble=2, penalty=2.0), log, log, encoded, ReplayConfig(),
        tmp_path,
    )  # fmt: skip
    assert len(list((tmp_path / "reward_models").glob("neural-*"))) == 1
    assert (plain.settings.penalty, harsh.settings.penalty) == (0.0, 2.0)
    rankings, _ = logged_rankings(log)
    requests = np.arange(log.n_requests)
    a = plain.attractiveness(plain.context(log), requests, rankings)
    b = harsh.attractiveness(harsh.context(log), requests, rankings)
    assert (b <= a + 1e-12).all() and (b < a - 1e-6).any()


def test_the_epistemic_interval_is_a_t_prediction_interval() -> None:
    values = np.array([1.0, 1.2, 1.1, 0.9, 1.3])
    low, high = epistemic_interval(values, centre=1.05, level=0.9)
    half = 2.131847 * values.std(ddof=1) * np.sqrt(1.2)  # t(0.95, 4)
    assert (low, high) == pytest.approx((1.05 - half, 1.05 + half), rel=1e-6)
    wider = epistemic_interval(values, centre=1.05, level=0.99)
    assert wider[0] < low and wider[1] > high
    with pytest.raises(ValueError, match=">= 2 member values"):
        epistemic_interval(values[:1], 1.0)


def test_apart_pairs_count_only_separated_intervals() -> None:
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    low = np.array([0.9, 1.5, 3.2, 2.5])
    high = np.array([1.1, 2.6, 3.4, 3.3])
    n, share = apart_pairs(truth, low, high)
    # apart: (0,1), (0,2), (0,3), (1,2); (1,3) and (2,3) overlap; all four ordered as the truth
    assert (n, share) == (4, 1.0)
    n, share = apart_pairs(truth[::-1], low, high)  # the truth reversed: every apart pair wrong
    assert (n, share) == (4, 0.0)
    assert apart_pairs(truth, np.zeros(4), np.ones(4))[0] == 0
    assert covered(truth, low, high) == 0.5  # 1.0 in [0.9, 1.1], 2.0 in [1.5, 2.6]


def test_an_evaluation_under_an_ensemble_has_an_epistemic_interval(small_world, members) -> None:
    """The members' values of the policy's own slates give the interval around the ensemble's
    value; one model gives none."""
    from scipy.stats import t

    from rankgym.agents.baselines import CosinePolicy
    from rankgym.agents.evaluation import evaluate
    from rankgym.envs.click_models.fitted import PBMClickModel

    log, _ = small_world
    encoded = encode_log(log, HashingEncoder(dim=16), progress=False)
    policy = CosinePolicy().fit(log, encoded)
    result = evaluate(policy, log, encoded, members, ReplayConfig(), bootstrap=0)
    value = result.metrics["expected_clicks"]
    low, high = result.epistemic["expected_clicks"]
    assert low < value < high
    raw = members.member_click_probs(
        members.context(log), result.per_request["request"], result.per_request["slate"]
    )
    np.testing.assert_allclose(result.member_values, raw.sum(axis=2).mean(axis=1))
    half = t.ppf(0.95, 2) * result.member_values.std(ddof=1) * np.sqrt(1 + 1 / 3)
    assert (high - low) / 2 == pytest.approx(half, rel=1e-9)
    row = result.to_dict()
    assert (row["expected_clicks_epi_low"], row["expected_clicks_epi_high"]) == (low, high)
    single = evaluate(policy, log, encoded, PBMClickModel().fit(log), ReplayConfig(), bootstrap=0)
    assert single.epistemic == {} and single.member_values is None
    assert "expected_clicks_epi_low" not in single.to_dict()
