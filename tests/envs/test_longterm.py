"""The sequential world: dynamics, its logs and latent timeline, the replay engine's sessions and
returns, long-term metrics, and PPO's credit across requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankgym.agents.baselines import LookaheadOraclePolicy, OraclePolicy, RandomPolicy
from rankgym.agents.evaluation import evaluate, long_term_metrics
from rankgym.agents.policies import PositionRolloutBuffer
from rankgym.agents.training import build_agent
from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.vector import BatchedReplayEnv
from rankgym.logs.dynamics import DynamicsParams, UserDynamics
from rankgym.logs.ground_truth import LATENT_DIR, TRUTH_DIR, GroundTruth
from rankgym.logs.session_log import SessionLog
from rankgym.logs.synthetic import MAX_REQUESTS, SyntheticWorld

WORLD = {"n_items": 400, "n_users": 150, "n_sessions": 500, "propensity_samples": 20}


def sequential(**dynamics: float) -> tuple[SessionLog, SessionLog, GroundTruth]:
    return SyntheticWorld(**WORLD, dynamics=dynamics).generate_latent()


@pytest.fixture(scope="module")
def world() -> tuple[SessionLog, SessionLog, GroundTruth]:
    return sequential()


def replay(latent: SessionLog, truth: GroundTruth, episode: str = "session", **kw):
    encoded = encode_log(latent, HashingEncoder(dim=16), progress=False)
    cfg = ReplayConfig(obs_mode="ids", episode=episode, **kw)
    return encoded, TruthClickModel(truth=truth), cfg


def test_dynamics_functions() -> None:
    dyn = UserDynamics(DynamicsParams(), np.array([0, 0, 1]), np.array([0.9, 0.1, 0.5]))
    attr = np.array([[0.5, 0.5, 0.5]])
    items = np.array([[0, 1, 2]])
    fresh = dyn.initial_satiation(1)
    np.testing.assert_allclose(dyn.satiate(attr, items, fresh), attr)  # nothing seen: as is
    tired = dyn.expose(fresh, np.array([[0, 2, -1]]))  # group 0 at the top, group 1 second
    np.testing.assert_allclose(tired, [[1.0, 0.5]])
    after = dyn.satiate(attr, items, tired)
    assert after[0, 0] == after[0, 1] < after[0, 2] < 0.5  # the most seen group falls most
    np.testing.assert_allclose(dyn.expose(tired, np.full((1, 1), -1)), tired * 0.8)
    np.testing.assert_allclose(dyn.recover(tired, np.array([3.0])), tired / 2)  # a half-life
    probs = np.array([[0.5, 0.5]])
    good, bait = dyn.satisfaction(probs, np.array([[0, 0]])), dyn.satisfaction(probs, items[:, 1:])
    np.testing.assert_allclose([good[0], bait[0]], [0.9, 0.3])
    # the same clicks on poorer items disappoint: a lower chance of the next request
    assert dyn.continue_prob(bait, probs.sum(1)) < dyn.continue_prob(good, probs.sum(1))
    assert dyn.mean_gap_days(np.array([2.0]))[0] < dyn.mean_gap_days(np.array([0.0]))[0]
    with pytest.raises(ValueError, match=r"dynamics.continue_max=2; allowed: \[0, 1\]"):
        DynamicsParams(continue_max=2)


def test_bad_dynamics_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="dataset.dynamics.boredom is not a dynamics parameter"):
        SyntheticWorld(dynamics={"boredom": 1.0})
    with pytest.raises(ValueError, match="allowed with dynamics: pbm"):
        SyntheticWorld(dynamics={}, click_model="cascade")


def test_logs_hold_what_the_loggers_users_reached(world) -> None:
    log, latent, truth = world
    assert latent.n_requests == latent.n_sessions * MAX_REQUESTS
    assert set(log.request_ids) < set(latent.request_ids) and log.n_sessions < latent.n_sessions
    lengths = np.diff(log.session_offsets)
    assert 1.5 < lengths.mean() < 4 and lengths.min() == 1 and lengths.max() > 4
    # a session went on as the logger's slates satisfied its user: satisfying clicks raise
    # the chance of another request, disappointing ones lower it
    dyn, p = truth.user_dynamics(), truth.dynamics
    effect = (p.continue_slope + p.disappointment) * dyn.item_satisfaction[log.item]
    pleased = np.add.reduceat(log.click * (effect - p.disappointment), log.request_offsets[:-1])
    last = np.zeros(log.n_requests, dtype=bool)
    last[log.session_offsets[1:] - 1] = True
    assert pleased[~last].mean() > pleased[last].mean() + 0.1
    # the truth knows every latent request, reached or not
    truth.request_rows(latent.request_ids)
    assert truth.dynamics == DynamicsParams()


def test_world_writes_its_latent_timeline(tmp_path: Path) -> None:
    out = tmp_path / "world"
    world = SyntheticWorld(**{**WORLD, "n_sessions": 60}, dynamics={"gap_days": 2.0})
    log = world.write(out)
    latent = SessionLog.read(out / TRUTH_DIR / LATENT_DIR)
    assert latent.meta["source"] == "synthetic-latent" and log.meta["source"] == "synthetic"
    assert GroundTruth.load(out).dynamics == DynamicsParams(gap_days=2.0)
    assert GroundTruth.load(out).user_dynamics() is not None


@pytest.mark.parametrize("choices", ["expected", "sampled"])
def test_sessions_end_and_users_return_as_the_dynamics_say(world, choices: str) -> None:
    _, latent, _ = world
    test = latent.split(0.2, by="user", seed=0)[1]
    outcomes = {}
    for name, over in {
        "leave": {"continue_base": 0.0, "continue_slope": 0.0, "return_base": 0.0,
                  "return_slope": 0.0},
        "stay": {"continue_base": 1.0, "continue_max": 1.0, "disappointment": 0.0},
        "return": {"continue_base": 0.0, "continue_slope": 0.0, "disappointment": 0.0,
                   "return_base": 1.0, "return_max": 1.0},
    }.items():  # fmt: skip
        truth = sequential(**over)[2]
        encoded, model, cfg = replay(latent, truth, episode="user", user_choices=choices)
        result = evaluate(RandomPolicy(), test, encoded, model, cfg, bootstrap=0)
        outcomes[name] = result.metrics
    assert outcomes["leave"]["session_length"] == 1 and outcomes["leave"]["sessions"] == 1
    assert outcomes["stay"]["session_length"] == pytest.approx(MAX_REQUESTS)
    assert outcomes["return"]["return_rate"] == 1 and outcomes["return"]["session_length"] == 1
    per_user = np.bincount(test.request_user[test.session_offsets[:-1]])
    assert outcomes["return"]["sessions"] == pytest.approx(per_user[per_user > 0].mean())


def test_batched_and_single_rows_play_the_same_episodes(world) -> None:
    _, latent, truth = world
    encoded, model, cfg = replay(latent, truth, episode="user")
    test = latent.split(0.2, by="user", seed=0)[1]
    _, _, truth = world
    a, b = (
        evaluate(OraclePolicy(), test, encoded, model, cfg, truth, num_envs=n, bootstrap=0)
        for n in (64, 7)
    )
    assert a.metrics == pytest.approx(b.metrics)
    assert a.metrics["true_long_term_value"] == a.metrics["long_term_value"]


def test_looking_ahead_beats_the_click_greedy_oracle(world) -> None:
    """The world is sequential: the click-greedy oracle wins more clicks per request and loses
    in clicks per user; valued on the same users with the same random numbers."""
    _, latent, truth = world
    encoded, model, cfg = replay(latent, truth, episode="user")
    test = latent.split(0.5, by="user", seed=0)[1]
    greedy, ahead = (
        evaluate(p, test, encoded, model, cfg, bootstrap=0).metrics
        for p in (OraclePolicy(), LookaheadOraclePolicy(weight=10))
    )
    assert greedy["expected_clicks"] > ahead["expected_clicks"]
    assert ahead["long_term_value"] > 1.1 * greedy["long_term_value"]
    assert ahead["session_length"] > greedy["session_length"]
    with pytest.raises(ValueError, match="agent=lookahead_oracle needs a sequential world"):
        bandit = SyntheticWorld(**WORLD).generate()
        evaluate(LookaheadOraclePolicy(), bandit[0], *replay(bandit[0], bandit[1])[:3])


def test_long_term_metrics_by_hand() -> None:
    # episode 0: a session of two requests, then a return for one more; episode 1: one request
    # that could have been followed by a session it was not
    clicks = {"expected_clicks": np.array([1.0, 0.5, 2.0, 0.25])}
    #                 episode, survival, opens, later, following session
    flow = np.array([[0, 1.0, 1, 0, 1], [0, 1.0, 0, 0, 1], [0, 1.0, 1, 1, 0], [1, 1.0, 1, 0, 1]])
    out = long_term_metrics(clicks, flow, bootstrap=20, seed=0)
    assert out["long_term_value"][0] == pytest.approx(3.75 / 2)
    assert out["session_length"][0] == pytest.approx(4 / 3)
    assert out["sessions"][0] == pytest.approx(3 / 2)
    assert out["return_rate"][0] == pytest.approx(1 / 2)
    low, high = out["long_term_value"][1]
    assert 0.25 <= low <= high <= 3.5
    # weighted by the chance of reaching a request: the expectation over leaving
    flow[1, 1], flow[2, 1] = 0.5, 0.2
    out = long_term_metrics(clicks, flow, bootstrap=0, seed=0)
    assert out["long_term_value"][0] == pytest.approx((1 + 0.25 + 0.4 + 0.25) / 2)
    assert out["return_rate"][0] == pytest.approx(0.2 / 2)


def test_expected_flow_is_the_mean_of_sampled_ones(world) -> None:
    """user_choices=expected walks the timeline with the chance the user is there: its long-term
    value and session length are the means of the sampled users' (satiation across sessions is
    the one approximation), within three standard errors of 60 draws (under 6%)."""
    _, latent, truth = world
    test = latent.split(0.2, by="user", seed=0)[1]
    encoded, model, cfg = replay(latent, truth, episode="user")
    exact = evaluate(OraclePolicy(), test, encoded, model, cfg, truth, bootstrap=0)
    sampled_cfg = replay(latent, truth, episode="user", user_choices="sampled")[2]
    draws = [
        evaluate(OraclePolicy(), test, encoded, model, sampled_cfg, truth, bootstrap=0, seed=s)
        for s in range(60)
    ]
    for key in ("long_term_value", "session_length"):
        values = np.array([d.metrics[key] for d in draws])
        error = values.std(ddof=1) / np.sqrt(len(values))
        assert abs(values.mean() - exact.metrics[key]) < 3 * error < 0.06 * values.mean()


def test_split_by_user_keeps_users_whole(world) -> None:
    _, latent, _ = world
    train, test = latent.split(0.3, by="user", seed=1)
    assert not set(train.request_user) & set(test.request_user)
    assert train.n_sessions + test.n_sessions == latent.n_sessions


@pytest.mark.parametrize("choices", ["expected", "sampled"])
def test_position_credit_composes_with_discounting(world, choices: str) -> None:
    """PPO's per-position credit with gamma > 0: each position's return is its own clicks plus
    the request's future value F_t = R_t - C_t, where R_t = C_t + gamma (c_t R_{t+1} + b_t
    R_next_session); the critic's last output is trained on R_t."""
    _, latent, truth = world
    encoded, model, _ = replay(latent, truth)
    cfg = ReplayConfig(obs_mode="ids", max_candidates=12, slate_size=5, action_mode="scores",
                       episode="user", user_choices=choices)  # fmt: skip
    env = BatchedReplayEnv(latent, encoded, model, cfg, num_envs=4)
    hyper = {"n_steps": 12, "batch_size": 12, "n_epochs": 1, "gamma": 0.8}
    agent = build_agent("ppo", env, 0, "cpu", hyper, None, True, "position", 0.0)
    buffer = agent.rollout_buffer
    assert isinstance(buffer, PositionRolloutBuffer) and buffer.values.shape[-1] == 6
    agent.learn(48)
    r = buffer.rewards.swapaxes(0, 1)  # [env, step, position] (learning arrays: env-major)
    starts = buffer.episode_starts.swapaxes(0, 1)
    went = buffer.transition.swapaxes(0, 1)  # [env, step, (next request, return, ended)]
    returns = buffer.returns.reshape(4, 12, 6)
    clicks = r.sum(2)
    if choices == "expected":  # chances strictly between 0 and 1
        assert ((went[..., 0] > 0) & (went[..., 0] < 1)).any() and (went[..., 1] > 0).any()
    # every step before the last follows from the steps after it (the last is bootstrapped)
    checked = 0
    for e in range(4):
        for t in range(10):
            if starts[e, t + 1]:
                expected_r = clicks[e, t]
            elif went[e, t, 2]:  # the session ended: the next step opens the following session
                expected_r = clicks[e, t] + 0.8 * went[e, t, 1] * returns[e, t + 1, 5]
            else:  # the same session goes on; leaving leads to the following session's first
                later = [u for u in range(t + 1, 11) if went[e, u, 2] or starts[e, u + 1]]
                if not later or starts[e, later[0] + 1]:
                    continue  # the following session is past the rollout or absent
                nxt = returns[e, later[0] + 1, 5]
                expected_r = clicks[e, t] + 0.8 * (
                    went[e, t, 0] * returns[e, t + 1, 5] + went[e, t, 1] * nxt
                )
            assert returns[e, t, 5] == pytest.approx(expected_r, rel=1e-4, abs=1e-5)
            checked += 1
    assert checked > 10
    future = returns[..., 5] - clicks
    np.testing.assert_allclose(returns[..., :5], r + future[..., None], rtol=1e-4, atol=1e-5)


def test_compare_pairs_long_term_values_by_episode(tmp_path: Path) -> None:
    import pandas as pd

    from rankgym.experiments.compare import paired_difference, per_request

    runs = []
    for name, clicks, episode, survival in (
        ("a", [1.0, 2.0, 0.5], ["u1", "u1", "u2"], [1.0, 1.0, 1.0]),  # different requests
        ("b", [1.0, 0.5], ["u1", "u2"], [1.0, 0.5]),  # the second reached half the time
    ):
        run = tmp_path / name
        run.mkdir()
        pd.DataFrame({"request": [f"r{i}" for i in range(len(clicks))], "session": episode,
                      "expected_clicks": clicks, "episode": episode,
                      "survival": survival}).to_parquet(run / "per_request.parquet")  # fmt: skip
        runs.append(per_request([{"_dir": str(run)}], "long_term_value"))
    assert runs[0]["long_term_value"].tolist() == [3.0, 0.5]
    paired = paired_difference(runs[0], runs[1], "long_term_value", bootstrap=50)
    assert paired["diff"] == pytest.approx(((3.0 - 1.0) + (0.5 - 0.25)) / 2)
    assert paired["n_sessions"] == 2


def test_dqn_looking_ahead_in_an_expected_walk_needs_request_credit(world) -> None:
    _, latent, truth = world
    encoded, model, _ = replay(latent, truth)
    for choices in ("expected", "sampled"):
        cfg = ReplayConfig(obs_mode="ids", user_choices=choices)
        env = BatchedReplayEnv(latent, encoded, model, cfg, num_envs=4)
        hyper = {"gamma": 0.99, "learning_starts": 10, "buffer_size": 100}
        if choices == "expected":
            match = "needs agent.credit=request or env.user_choices=sampled"
            with pytest.raises(ValueError, match=match):
                build_agent("dqn", env, 0, "cpu", hyper)
            assert build_agent("dqn", env, 0, "cpu", hyper, credit="request").gamma == 0.99
        else:
            assert build_agent("dqn", env, 0, "cpu", hyper).gamma == 0.99


def test_a_sequential_world_refuses_the_logged_clicks(tmp_path: Path) -> None:
    from rankgym.encoders.hashing import HashingEncoder as Hashing
    from rankgym.envs.click_models.simple import LoggedClickModel
    from rankgym.envs.setup import Split, setup_run

    world = SyntheticWorld(**{**WORLD, "n_sessions": 80}, dynamics={})
    out = tmp_path / "world"
    cfg = ReplayConfig(obs_mode="ids", episode="user")
    split = Split(by="user")
    run = setup_run(world, out, Hashing(dim=8), lambda: TruthClickModel(str(out)), cfg, split)
    assert run.observed is not None and run.data.meta["source"] == "synthetic-latent"
    assert run.data.n_requests == run.data.n_sessions * MAX_REQUESTS
    with pytest.raises(
        ValueError, match="reward=logged: a sequential world .* allowed: reward=truth or a fitted"
    ):
        setup_run(world, out, Hashing(dim=8), LoggedClickModel(), cfg, split)


@pytest.mark.parametrize(("choices", "discount"), [("expected", 1.0), ("sampled", 0.5)])
def test_request_credit_sums_a_requests_clicks_and_points_to_what_follows(
    world, choices: str, discount: float
) -> None:
    from rankgym.agents.policies import RequestReplayBuffer, masked_random_actions

    _, latent, truth = world
    encoded, model, cfg = replay(latent, truth, episode="user", user_choices=choices)
    env = BatchedReplayEnv(latent, encoded, model, cfg, num_envs=4)
    buffer = RequestReplayBuffer(  # 80 rows of 4 envs
        320, env.observation_space, env.action_space, device="cpu", n_envs=4,
        reached_rewards=env.reached_rewards, transitions=env.transitions,
        position_discount=discount,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    obs, steps = env.reset(), []
    for _ in range(80):
        action = masked_random_actions(obs["mask"], rng)
        after, reward, done, infos = env.step(action)
        stored = {k: v.copy() for k, v in after.items()}
        for e in np.flatnonzero(done):
            for k, v in infos[e]["terminal_observation"].items():
                stored[k][e] = v
        buffer.add(obs, stored, action, reward, done, infos)
        steps.append((obs["position"][:, 0].copy(), env.reached_rewards(), env.transitions(),
                      done.copy(), stored))  # fmt: skip
        if choices == "sampled":
            np.testing.assert_allclose(env.reached_rewards(), reward, rtol=1e-6)
        obs = after
    checked = 0
    for e in range(4):
        requests = [t for t, (_, _, _, done, nxt) in enumerate(steps)
                    if done[e] or nxt["position"][e, 0] == 0]  # fmt: skip
        sessions = [t for t in requests if steps[t][3][e] or steps[t][2][e, 2] > 0]
        for t, (position, _, _, _, _) in enumerate(steps):
            end = next((u for u in requests if u >= t), None)
            session_end = next((u for u in sessions if u >= t), None)
            assert buffer.pending[t, e] == (session_end is None)
            if session_end is None:
                continue
            assert end - t == steps[end][0][e] - position[e]  # the same request
            clicks = sum(discount ** (u - t) * steps[u][1][e] for u in range(t, end + 1))
            assert buffer.rewards[t, e] == pytest.approx(clicks, rel=1e-5)
            went = 0.0 if steps[end][3][e] else steps[end][2][e, :2]
            np.testing.assert_allclose(buffer.follow[t, e], went, rtol=1e-6)
            assert buffer.later[t, e] == session_end
            for k in ("query", "position", "candidates"):
                stored = buffer.next_observations[k]
                np.testing.assert_array_equal(stored[t, e], steps[end][4][k][e])
                np.testing.assert_array_equal(stored[session_end, e], steps[session_end][4][k][e])
            checked += 1
    assert checked > 150 and buffer.pending.any()
    if choices == "expected":  # mid-session requests lead to a return with some chance
        assert (buffer.follow[..., 1] > 0).any() and (buffer.follow[..., 1] < 1).any()
    np.random.seed(0)
    rows, envs = buffer._draw(np.random.randint(0, 80, size=2000))
    assert not buffer.pending[rows, envs].any() and len(np.unique(rows)) > 40


def test_request_credit_trains_resumes_and_is_dqns_alone(world, tmp_path: Path) -> None:
    from rankgym.agents.checkpoint import load_checkpoint, save_checkpoint
    from rankgym.agents.policies import RequestReplayBuffer

    _, latent, truth = world
    encoded, model, cfg = replay(latent, truth, episode="user")  # the expected walk

    def env() -> BatchedReplayEnv:
        return BatchedReplayEnv(latent, encoded, model, cfg, num_envs=4)

    # an expected walk's session is its 8 latent requests: the first end after ~80 steps
    hyper = {"gamma": 0.9, "learning_starts": 400, "buffer_size": 1200, "batch_size": 16}
    agent = build_agent("dqn", env(), 0, "cpu", hyper, credit="request")
    agent.learn(600)
    buffer = agent.replay_buffer
    assert isinstance(buffer, RequestReplayBuffer) and agent._n_updates > 0
    assert buffer.position_discount == 1.0  # the clicks from each placement on, unweighted
    own = build_agent("dqn", env(), 0, "cpu", hyper, credit="request", position_discount=0.0)
    assert own.replay_buffer.position_discount == 0.0
    # a request's first placement carries at least its own clicks and is never sampled open
    assert buffer.pending[: buffer.pos].any() and not buffer.pending[: buffer.pos].all()
    path = save_checkpoint(agent, tmp_path, "dqn")
    loaded = load_checkpoint(build_agent("dqn", env(), 0, "cpu", hyper, credit="request"),
                             path, "dqn")  # fmt: skip
    np.testing.assert_array_equal(loaded.replay_buffer.pending, buffer.pending)
    np.testing.assert_array_equal(loaded.replay_buffer.rewards, buffer.rewards)
    for algorithm, slate in (("ppo", False), ("dqn", True)):
        with pytest.raises(ValueError, match="agent.credit=request is DQN's"):
            build_agent(algorithm, env(), 0, "cpu", {}, slate=slate, credit="request")
