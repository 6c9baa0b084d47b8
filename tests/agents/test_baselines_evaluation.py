"""Baseline policies and the evaluation protocol, on the small synthetic world.

Measured on this world (split 0.5, seed 0: 150 test sessions, 444 requests; truth model, PBM):
expected clicks per request random 0.881 (20 seeds: mean 0.882, sd 0.008, max 0.897), logged
0.901, popularity 0.923, cosine 1.137, oracle 1.354. The logged ranker is a temperature-1
Plackett-Luce sampler, so its edge over random is small (~+0.02, about 5 sd of the mean of 5
random seeds): the ordering tests compare with the mean over 5 random seeds. Cosine and oracle
lead by > 0.25 and > 0.2 (over 15 bootstrap-CI widths' worth of paired noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rankgym.agents.baselines import (
    CosinePolicy,
    LoggedPolicy,
    OraclePolicy,
    PopularityPolicy,
    RandomPolicy,
    SB3Policy,
    masked_argmax,
)
from rankgym.agents.evaluation import EvaluationResult, evaluate
from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.base import ClickModel
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.metrics import expected_reciprocal_rank
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.vector import BatchedReplayEnv

CONFIG = ReplayConfig(obs_mode="ids")
CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def world(small_world):
    log, truth = small_world
    train, test = log.split(0.5, seed=0)
    encoded = encode_log(log, HashingEncoder(dim=64), progress=False)
    return train, test, encoded, truth


@pytest.fixture(scope="module")
def tables(world):
    encoded = world[2]
    return {"items": encoded.items, "queries": encoded.queries}


def run(world, policy, **kwargs) -> EvaluationResult:
    _, test, encoded, truth = world
    kwargs.setdefault("bootstrap", 200)
    return evaluate(policy, test, encoded, TruthClickModel(truth=truth), CONFIG, truth=truth,
                    **kwargs)  # fmt: skip


BASELINES = ("random", "logged", "popularity", "cosine", "oracle")


def baseline(name: str, world, *overrides: str):
    """The baseline ``conf/agent/<name>.yaml`` describes, fitted on the training sessions."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"agent={name}", *overrides])
    return instantiate(cfg.agent).fit(world[0], world[2])


@pytest.fixture(scope="module")
def results(world) -> dict[str, EvaluationResult]:
    return {name: run(world, baseline(name, world)) for name in BASELINES}


# ---------------------------------------------------------------------- coverage and validity
def test_every_test_session_is_evaluated_once(world, results) -> None:
    test = world[1]
    for name, r in results.items():
        assert r.policy == name
        assert r.n_sessions == test.n_sessions and r.n_requests == test.n_requests
        req = r.per_request["request"]
        assert np.array_equal(np.sort(req), np.arange(test.n_requests))  # each request once


def test_slates_hold_distinct_valid_candidates(world, results) -> None:
    test = world[1]
    k, width = CONFIG.max_candidates, CONFIG.slate_size
    for r in results.values():
        assert r.invalid_actions == 0
        for request, slate in zip(r.per_request["request"], r.per_request["slate"], strict=True):
            shown = test.item[test.request_offsets[request] : test.request_offsets[request + 1]]
            length = min(len(shown), width, k)
            items = slate[slate >= 0]
            assert len(items) == length and np.all(slate[length:] == -1)
            assert len(set(items.tolist())) == length
            assert set(items.tolist()) <= set(shown[:k].tolist())


def test_masked_argmax_never_picks_masked_and_breaks_ties_low() -> None:
    scores = np.array([[1.0, 5.0, 5.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    mask = np.array([[1, 0, 1, 1], [0, 1, 1, 1]], dtype=np.float32)
    assert masked_argmax(scores, mask).tolist() == [2, 1]


# ---------------------------------------------------------------------- orderings
def test_baseline_ordering_under_the_truth(world, results) -> None:
    ec = {name: r.metrics["expected_clicks"] for name, r in results.items()}
    random_mean = np.mean(
        [run(world, RandomPolicy(seed=s), bootstrap=0).metrics["expected_clicks"] for s in range(5)]
    )
    for name in ("random", "logged", "popularity", "cosine"):
        assert ec["oracle"] > ec[name] + 0.1, ec
    assert ec["cosine"] > random_mean + 0.15, (ec, random_mean)
    assert ec["popularity"] > random_mean + 0.02, (ec, random_mean)
    assert ec["logged"] > random_mean + 0.01, (ec, random_mean)
    assert results["oracle"].metrics[f"ndcg@{CONFIG.slate_size}"] == pytest.approx(1.0)


def test_true_expected_clicks_equal_expected_clicks_under_the_truth(results) -> None:
    for r in results.values():
        per = r.per_request
        np.testing.assert_allclose(per["true_expected_clicks"], per["expected_clicks"], atol=1e-9)
        assert r.metrics["true_expected_clicks"] == pytest.approx(r.metrics["expected_clicks"])


# ---------------------------------------------------------------------- intervals, determinism
def test_intervals_contain_the_mean_and_narrow_with_more_sessions(world, results) -> None:
    for r in results.values():
        for key, value in r.metrics.items():
            low, high = r.intervals[key]
            assert low <= value + 1e-12 and value <= high + 1e-12, (key, low, value, high)
    few = run(world, LoggedPolicy(), max_sessions=20)
    assert few.n_sessions == 20
    full = results["logged"]
    width = lambda r: np.diff(r.intervals["expected_clicks"])[0]  # noqa: E731
    assert width(full) < 0.75 * width(few)


def test_same_seed_gives_identical_results(world, tables) -> None:
    for policy in (RandomPolicy(seed=3), CosinePolicy(tables)):
        a = run(world, policy, seed=7, max_sessions=60).to_dict()
        b = run(world, policy, seed=7, max_sessions=60).to_dict()
        assert a == b
    random_a = run(world, RandomPolicy(seed=3), seed=7, max_sessions=60).to_dict()
    # another evaluation seed draws another subset of sessions
    random_c = run(world, RandomPolicy(seed=3), seed=8, max_sessions=60).to_dict()
    assert random_c["expected_clicks"] != random_a["expected_clicks"]
    # another policy seed ranks the same sessions differently
    random_d = run(world, RandomPolicy(seed=4), seed=7, max_sessions=60).to_dict()
    assert random_d["expected_clicks"] != random_a["expected_clicks"]


USER_STATE_OPTIONS = [
    {"pooling": "last_k", "last_k": 2},
    {"pooling": "decay", "decay": 0.3},
    {"history_len": 3},
]


@pytest.mark.parametrize("options", USER_STATE_OPTIONS)
def test_cosine_follows_the_env_user_state_settings(world, tables, options) -> None:
    """Every user-state option changes what cosine ranks by (it reads the env's pooling)."""
    _, test, encoded, truth = world

    def value(config: ReplayConfig) -> float:
        r = evaluate(CosinePolicy(tables), test, encoded, TruthClickModel(truth=truth), config,
                     bootstrap=0)  # fmt: skip
        return r.metrics["expected_clicks"]

    assert value(ReplayConfig(obs_mode="ids", **options)) != value(CONFIG)


def test_to_dict_is_flat(results) -> None:
    d = results["logged"].to_dict()
    assert d["policy"] == "logged" and isinstance(d["n_sessions"], int)
    for key in ("expected_clicks", "ctr@1", "ndcg@10", "mrr", "true_expected_clicks"):
        assert d[f"{key}_ci_low"] <= d[key] <= d[f"{key}_ci_high"]
    assert all(isinstance(v, int | float | str) for v in d.values())


# ---------------------------------------------------------------------- metrics by hand
def test_mrr_by_hand() -> None:
    p = np.array([[0.5, 0.2, 0.0], [0.0, 0.4, 0.5]])
    # independent positions: P(first at i) = p_i prod_{j<i} (1 - p_j)
    expected = [0.5 + 0.5 * 0.2 / 2, 0.4 / 2 + 0.6 * 0.5 / 3]
    np.testing.assert_allclose(expected_reciprocal_rank(p, "pbm"), expected)
    # cascade: click probabilities are already first-click probabilities
    np.testing.assert_allclose(expected_reciprocal_rank(p, "cascade"), [0.6, 0.2 + 0.5 / 3])


def test_dcm_mrr_reads_the_first_click_not_independent_positions() -> None:
    """DCM with continuation 0 is the cascade: the same first-click probabilities and MRR."""
    attr = np.array([[0.5, 0.4, 0.3]])
    cascade = attr * np.array([[1.0, 0.5, 0.3]])  # a_i prod_{j<i} (1 - a_j)
    want = 0.5 + 0.2 / 2 + 0.09 / 3
    np.testing.assert_allclose(expected_reciprocal_rank(cascade, "cascade"), [want])
    np.testing.assert_allclose(expected_reciprocal_rank(cascade, "dcm", attr), [want])
    # with continuation 1 a DCM user clicks each item independently of those above (p = a),
    # but the first click is still a_i prod_{j<i} (1 - a_j)
    np.testing.assert_allclose(expected_reciprocal_rank(attr, "dcm", attr), [want])
    with pytest.raises(ValueError, match="dcm need the attractiveness"):
        expected_reciprocal_rank(attr, "dcm")


class _FixedModel(ClickModel):
    """Attractiveness 0.5 for every candidate, examination 1 then 0.5: easy to compute."""

    name = "fixed"

    def __init__(self) -> None:
        super().__init__()
        self.examination[1:] = 0.5

    def attractiveness(self, context, requests, items, history=None):
        return np.where(np.asarray(items) >= 0, 0.5, 0.0)


def test_metrics_by_hand_with_a_fixed_model(world) -> None:
    _, test, encoded, _ = world
    config = ReplayConfig(obs_mode="ids", slate_size=2, max_candidates=4)
    r = evaluate(LoggedPolicy(), test, encoded, _FixedModel(), config, bootstrap=0)
    # every request has >= 2 candidates: click probs 0.5, 0.25
    assert r.metrics["expected_clicks"] == pytest.approx(0.75)
    assert r.metrics["ctr@1"] == pytest.approx(0.5)
    assert r.metrics["mrr"] == pytest.approx(0.5 + 0.5 * 0.25 / 2)
    assert np.isnan(r.intervals["mrr"][0])


# ---------------------------------------------------------------------- policies
def test_policy_scores(world, tables) -> None:
    train, test, encoded, truth = world
    env = BatchedReplayEnv(test, encoded, TruthClickModel(truth=truth), CONFIG, num_envs=8,
                           device="cpu")  # fmt: skip
    obs = env.reset()
    assert np.array_equal(LoggedPolicy().act(obs, env), np.zeros(8))
    np.testing.assert_array_equal(OraclePolicy().scores(obs, env), env.current_attractiveness())
    pop = PopularityPolicy(prior=10.0).fit(train)
    unseen = np.setdiff1d(np.arange(train.n_items), train.item)
    if len(unseen):
        assert pop.ctr[unseen[0]] == pytest.approx(pop.global_ctr)
    item = int(train.item[0])
    shown = train.item == item
    want = (train.click[shown].sum() + 10.0 * pop.global_ctr) / (shown.sum() + 10.0)
    assert pop.ctr[item] == pytest.approx(want)
    cos = CosinePolicy(tables).scores(obs, env)
    assert cos.shape == (8, CONFIG.max_candidates) and np.isfinite(cos).all()
    empty = {**obs, "user": np.full_like(obs["user"], -1)}  # empty history: cosine 0, no NaN
    zeros = CosinePolicy({**tables, "items": tables["items"] * 0}).scores(empty, env)
    assert np.array_equal(zeros, np.zeros_like(zeros))
    for policy in (RandomPolicy(), LoggedPolicy(), pop, CosinePolicy(tables), OraclePolicy()):
        assert policy.obs_mode == "ids"
        a = policy.act(obs, env)
        assert a.dtype == np.int64 and a.shape == (8,)
        assert np.all(obs["mask"][np.arange(8), a] == 1)


def test_baseline_configs_carry_their_settings(world) -> None:
    assert baseline("random", world, "seed=4").seed == 4
    assert baseline("popularity", world, "agent.prior=0.0").prior == 0.0
    assert baseline("cosine", world, "agent.name=cos2").name == "cos2"
    with pytest.raises(Exception, match=r"agent\.prior=-1\.0; allowed: >= 0"):
        baseline("popularity", world, "agent.prior=-1.0")


def test_sb3_policy_evaluates_an_untrained_ppo(world) -> None:
    from stable_baselines3 import PPO

    _, test, encoded, truth = world
    env = BatchedReplayEnv(test, encoded, TruthClickModel(truth=truth), CONFIG, num_envs=4,
                           device="cpu")  # fmt: skip
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=32, seed=0, device="cpu")
    policy = SB3Policy(model, "ids", "ppo")
    r = run(world, policy, num_envs=32, max_sessions=40, bootstrap=50)
    assert r.policy == "ppo" and r.n_sessions == 40
    # its actions may be masked: the env falls back and counts them; slates stay valid
    assert 0 <= r.invalid_actions <= r.n_requests * CONFIG.slate_size
    assert np.isfinite(r.metrics["expected_clicks"])
    slates = r.per_request["slate"]
    for slate in slates:
        items = slate[slate >= 0].tolist()
        assert len(set(items)) == len(items)
