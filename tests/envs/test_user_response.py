"""The user-response model fitted from logs: it recovers the truth's dynamics from the logging
policy's sessions, refuses logs that cannot identify a dynamic, predicts held-out sessions, and
composes with a fitted click model in a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from rankgym.agents.baselines import LoggedPolicy, RandomPolicy
from rankgym.agents.evaluation import evaluate
from rankgym.agents.fidelity import DiversityPolicy, SatisfactionPolicy, TruthOraclePolicy
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.fitted import PBMClickModel
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.click_models.user_response import (
    FittedUserDynamics,
    check_identifiable,
    fit_user_dynamics,
    response_fidelity,
    session_outcomes,
)
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.setup import Split, setup_run
from rankgym.envs.vector import BatchedReplayEnv
from rankgym.logs.dynamics import DynamicsParams, UserDynamics, play_sessions
from rankgym.logs.session_log import SessionLog
from rankgym.logs.synthetic import SyntheticWorld


@pytest.fixture(scope="module")
def world() -> tuple[SessionLog, SessionLog, np.ndarray, TruthClickModel]:
    """The default-sized sequential world (3,500 latent sessions): its log, latent timeline,
    the reached mask and the truth."""
    log, latent, truth = SyntheticWorld(dynamics={}, propensity_samples=10).generate_latent()
    reached = np.isin(latent.request_ids, log.request_ids)
    return log, latent, reached, TruthClickModel(truth=truth)


def test_the_fit_recovers_the_truths_dynamics(world) -> None:
    _, latent, reached, truth = world
    fitted = fit_user_dynamics(latent, truth, reached)
    p, true = fitted.params, DynamicsParams()
    # with the truth's own clicks, satiation is identified exactly on the grid and in weight
    assert (p.satiation_decay, p.satiation_half_life_days) == (0.8, 3.0)
    assert abs(p.satiation_weight - true.satiation_weight) < 0.05
    assert abs(fitted.shift) < 0.1
    assert abs(p.continue_base - true.continue_base) < 0.05
    assert abs(p.return_base - true.return_base) < 0.1
    assert abs(p.gap_days - true.gap_days) < 0.5
    # satisfaction is seen through the price band and the logger's exposure, not the hidden
    # quality: correlated with the truth's, not equal
    corr = np.corrcoef(fitted.item_satisfaction, truth.user_dynamics().item_satisfaction)[0, 1]
    assert corr > 0.9  # through the appeal over one sample of requests (0.79 over impressions)
    assert fitted.report["appeal_requests"] == 256
    assert fitted.report["continuation_at_risk"] < reached.sum()  # last requests can't go on
    assert 0 < fitted.report["return_rate"] < 1


def test_held_out_sessions_are_predicted(world) -> None:
    log, latent, reached, truth = world
    fitted = fit_user_dynamics(latent, truth, reached)
    observed = session_outcomes(latent, reached, latent.request_timestamp)
    # the outcomes of the reached requests are the log's own sessions
    np.testing.assert_array_equal(np.sort(observed["session_length"]),
                                  np.sort(np.diff(log.session_offsets)))  # fmt: skip
    model = TruthClickModel(truth=truth.truth)
    model.response = fitted
    for m in (truth, model):
        r = response_fidelity(m, latent, reached, draws=4)
        assert abs(r["session_length_rel_error"]) < 0.06
        assert abs(r["gap_days_rel_error"]) < 0.08
        assert 0 <= r["session_length_ks"] < 0.06
    with pytest.raises(ValueError, match="no user-response model"):
        response_fidelity(PBMClickModel().fit(log), latent, reached)


@pytest.mark.slow
def test_fitted_users_value_what_selects_on_quality(world) -> None:
    """Held-out users: the fitted users value the policies that select on the quality the
    log does not show (the truth's oracle and the lookahead) as the truth does. An item's
    appeal averaged over the logger's own impressions, which mixes it with where the logger
    showed it, undervalued them by 13% and 20% here."""
    log, latent, _, truth = world
    train, test = latent.split(0.2, by="user", seed=0)
    fitted = TruthClickModel(truth=truth.truth)
    fitted.response = fit_user_dynamics(train, truth, np.isin(train.request_ids, log.request_ids))
    from rankgym.encoders.encoded_log import encode_log

    encoded = encode_log(test, HashingEncoder(dim=8), progress=False)
    cfg = ReplayConfig(obs_mode="ids", episode="user", user_choices="expected")
    sat = truth.user_dynamics().item_satisfaction
    policies = [RandomPolicy(seed=0), TruthOraclePolicy(truth),
                SatisfactionPolicy(truth, sat, 10.0, "lookahead-10")]  # fmt: skip
    values = {}
    for policy in policies:
        policy.fit(train, encoded)
        for name, model in (("truth", truth), ("fitted", fitted)):
            result = evaluate(policy, test, encoded, model, cfg, bootstrap=0)
            values[name, policy.name] = result.metrics["long_term_value"]
    for policy in policies:
        true, simulated = values["truth", policy.name], values["fitted", policy.name]
        assert abs(simulated / true - 1) < 0.1, (policy.name, simulated, true)
    order = [values["truth", p.name] for p in policies]
    assert order == sorted(order)  # random < oracle < lookahead, in the truth
    assert [values["fitted", p.name] for p in policies] == sorted(
        values["fitted", p.name] for p in policies
    )


def test_play_sessions_follows_the_dynamics() -> None:
    # two users, two sessions of three requests each, one item per slate
    dyn = UserDynamics(DynamicsParams(continue_base=1.0, return_base=0.0, return_slope=0.0),
                       np.zeros(2, dtype=np.int64), np.ones(2))  # fmt: skip
    ranking = np.zeros((12, 1), dtype=np.int64)
    offsets = np.arange(0, 13, 3)
    args = (lambda rows, items: np.full(items.shape, 0.5), np.ones(1), ranking, offsets,
            np.array([0, 0, 1, 1]), np.array([0, 10, 0, 10]))  # fmt: skip
    reached, click, time = play_sessions(dyn, *args, np.random.default_rng(0))
    # continuation capped at 0.95: most requests of the first sessions, and no return
    assert reached[[0, 6]].all() and not reached[[3, 4, 5, 9, 10, 11]].any()
    assert (np.diff(time.reshape(4, 3), axis=1) > 0).all()  # requests in order
    assert set(np.unique(click)) <= {0, 1} and click[~reached].sum() == 0


def test_logs_that_cannot_identify_a_dynamic_are_refused(world) -> None:
    log = world[0]
    check_identifiable(log)
    firsts = np.zeros(log.n_requests, dtype=bool)
    firsts[log.session_offsets[:-1]] = True
    cases = {
        "every session has one request: continuation": log.select_requests(firsts),
        "no timestamps": dataclasses.replace(log, request_timestamp=np.zeros_like(
            log.request_timestamp)),
        "no item column 'category' for satiation groups": dataclasses.replace(
            log, item_features={}),
    }  # fmt: skip
    session_user = log.request_user[log.session_offsets[:-1]]
    _, first_session = np.unique(session_user, return_index=True)
    cases["no user has two sessions: return"] = log.select_sessions(np.sort(first_session))
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=f"^synthetic: cannot fit a user-response model: "
                                             f"{message}") as caught:  # fmt: skip
            check_identifiable(bad)
        assert "\n" not in str(caught.value)  # one line


def test_a_fitted_simulator_runs_a_sequential_world(tmp_path: Path) -> None:
    world = SyntheticWorld(n_items=400, n_users=150, n_sessions=500, propensity_samples=10,
                           dynamics={})  # fmt: skip
    out = tmp_path / "world"
    cfg = ReplayConfig(obs_mode="ids", episode="user")
    run = setup_run(world, out, HashingEncoder(dim=8), PBMClickModel(), cfg, Split(by="user"))
    model = run.reward
    assert isinstance(model.user_dynamics(), FittedUserDynamics)
    # the click model saw only what the logging policy's users reached
    assert model.dataset is not None and run.observed is not None
    values = {}
    for policy in (RandomPolicy(seed=1), LoggedPolicy()):
        policy.fit(run.train, run.encoded)
        result = evaluate(policy, run.test, run.encoded, model, cfg, truth=run.truth, bootstrap=50)
        m = result.metrics
        # valued in the simulator, and again under the truth's own dynamics
        assert m["long_term_value"] > 0 and m["true_long_term_value"] > 0
        assert m["long_term_value"] != m["true_long_term_value"]
        low, high = result.intervals["true_long_term_value"]
        assert low <= m["true_long_term_value"] <= high
        values[policy.name] = m
    assert values["random"]["session_length"] >= 1


def test_the_diversity_re_ranker_spreads_a_slate_over_groups(world) -> None:
    _, latent, _, truth = world
    rows = latent.select_sessions(np.arange(40))
    from rankgym.encoders.encoded_log import encode_log

    encoded = encode_log(rows, HashingEncoder(dim=8), progress=False)
    cfg = ReplayConfig(obs_mode="ids", user_choices="expected")
    groups = np.unique(np.asarray(rows.item_features["category"]).astype(str),
                       return_inverse=True)[1]  # fmt: skip
    distinct = {}
    for penalty in (0.0, 100.0):
        policy = DiversityPolicy(TruthOraclePolicy(truth), penalty, "d").fit(rows, encoded)
        result = evaluate(policy, rows, encoded, truth, cfg, bootstrap=0)
        slates = result.per_request["slate"]
        top = np.where(slates[:, :3] >= 0, groups[np.maximum(slates[:, :3], 0)], -1)
        distinct[penalty] = np.mean([len(set(t[t >= 0])) for t in top])
    assert distinct[100.0] > distinct[0.0]
    with pytest.raises(ValueError, match="penalty=-1"):
        DiversityPolicy(TruthOraclePolicy(truth), -1, "d")
    env = BatchedReplayEnv(rows, encoded, truth, cfg, num_envs=2)
    assert env.data.dynamics is not None


def test_real_logs_fit_or_refuse_in_one_line(world) -> None:
    """A plain log (no latent timeline) fits where it identifies the dynamics; the real-log
    adapters' fixtures refuse with what they lack."""
    from rankgym.logs.mind import MINDSource
    from rankgym.logs.obd import OBDSource

    log, latent, reached, truth = world
    plain = fit_user_dynamics(log, truth)  # the reached log alone: censored by its window
    timeline = fit_user_dynamics(latent, truth, reached)
    assert plain.params.satiation_weight == pytest.approx(timeline.params.satiation_weight)
    assert plain.params.continue_base == pytest.approx(timeline.params.continue_base, abs=0.02)
    # a user whose latent sessions ran out looks, in the log alone, like one who left
    assert plain.report["return_rate"] < timeline.report["return_rate"]
    fixtures = Path(__file__).parents[1] / "fixtures"
    obd = OBDSource(path=str(fixtures / "obd")).build()
    mind = MINDSource(path=str(fixtures / "mind")).build()
    cases = [
        (obd, "obd: .*every session has one request: continuation is not identified"),
        (mind, "mind: .*no user both came back and stayed away: return is not identified"),
    ]
    for real, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            fit_user_dynamics(real, PBMClickModel().fit(real))
        assert "\n" not in str(caught.value)
