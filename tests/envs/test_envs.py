"""The replay environments: Gymnasium/SB3 contracts, determinism, semantics, batched == single."""

from __future__ import annotations

import copy
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.encoders.pooling import UserPooling
from rankgym.envs import RANKGYM_ENV_IDS
from rankgym.envs.click_models.fitted import CascadeClickModel, DCMClickModel, PBMClickModel
from rankgym.envs.click_models.neural import NeuralClickModel
from rankgym.envs.click_models.simple import LoggedClickModel, TruthClickModel
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.session_replay import SessionReplayEnv
from rankgym.envs.vector import BatchedReplayEnv
from rankgym.logs import LogValidationError
from rankgym.logs.synthetic import SyntheticWorld
from tests.conftest import SMALL_WORLD


@pytest.fixture(scope="module")
def world(small_world):
    log, truth = small_world
    return log, encode_log(log, HashingEncoder(dim=64), progress=False), truth


REWARD_MODELS = ("truth", "logged", "pbm", "dcm", "cascade", "neural")


class _Models(dict):
    """Every reward model, fitted once on the small world; neural per user-state pooling."""

    def __init__(self, log, encoded, truth) -> None:
        super().__init__(
            truth=TruthClickModel(truth=truth),
            logged=LoggedClickModel(),
            pbm=PBMClickModel().fit(log),
            dcm=DCMClickModel().fit(log),
            cascade=CascadeClickModel().fit(log),
            neural=None,
        )
        self._fit = lambda pooling: NeuralClickModel(epochs=1, hidden=16, ensemble=2).fit(
            log, encoded=encoded, pooling=pooling
        )
        self._neural: dict = {}
        self["neural"] = self.neural(UserPooling())

    def neural(self, pooling: UserPooling) -> NeuralClickModel:
        if pooling not in self._neural:
            self._neural[pooling] = self._fit(pooling)
        return self._neural[pooling]


@pytest.fixture(scope="module")
def models(world) -> _Models:
    return _Models(*world)


def make(world, model=None, **options) -> SessionReplayEnv:
    log, encoded, truth = world
    return SessionReplayEnv(
        log, encoded, model or TruthClickModel(truth=truth), ReplayConfig(**options)
    )


# ---------------------------------------------------------------------- contracts
@pytest.mark.parametrize("env_id", RANKGYM_ENV_IDS)
@pytest.mark.parametrize(
    "options", [{}, {"obs_mode": "ids"}, {"action_mode": "scores"}, {"action_mode": "top1"}]
)
def test_registered_envs_pass_checkers_without_warnings(env_id: str, options: dict) -> None:
    env = gym.make(env_id, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)


def test_make_takes_keyword_options() -> None:
    env = gym.make("rankgym/SessionReplay-v0", slate_size=5, obs_mode="ids", max_candidates=12)
    obs, _ = env.reset(seed=0)
    assert obs["candidates"].shape == (12,) and obs["user"].dtype == np.int32
    assert env.action_space.n == 12
    with pytest.raises(TypeError, match="unknown env option.*'slate'.*allowed: action_mode"):
        gym.make("rankgym/SessionReplay-v0", slate=5)


def rollout(env, seed: int, steps: int) -> list:
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [(obs, info)]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(0, 20)))
        out.append((obs, reward, terminated, truncated, info))
        if terminated:
            obs, info = env.reset()
            out.append((obs, info))
    return out


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_seeded_rollouts_are_identical(world) -> None:
    """Gymnasium's determinism check: two envs, one seed, 200 steps, exact equality."""
    a, b = rollout(make(world), 7, 200), rollout(make(world), 7, 200)
    assert same(a, b)
    c = rollout(make(world), 8, 200)
    assert not same(a, c)


# ---------------------------------------------------------------------- semantics
def test_slot_mode_builds_slates_and_rewards_expected_clicks(world) -> None:
    log, _, truth = world
    env = make(world, slate_size=4)
    env.reset(seed=1)
    model = env.data.model
    for _ in range(3):  # three requests
        r = int(env.engine.req[0])
        cand = env.data.candidates[r]
        rewards, info, step = [], {}, 0
        while "slate" not in info:
            _, reward, terminated, _, info = env.step(step % 2)  # 0, 1, 0 (invalid), 1 ...
            rewards.append(reward)
            step += 1
        slate = info["slate"]
        assert len(slate) == min(4, int((cand >= 0).sum()))
        assert len(set(slate.tolist())) == len(slate)  # never the same item twice
        assert info["invalid_actions"] >= 1  # repeated actions fell back to a valid candidate
        expected = model.click_probs(env.data.context, np.array([r]), slate[None])[0]
        np.testing.assert_allclose(rewards, expected)
        np.testing.assert_allclose(info["expected_clicks"], expected.sum())
        truth_rows = truth.request_rows(log.request_ids[[r]])
        np.testing.assert_allclose(expected, truth.click_probs(truth_rows, slate[None])[0])
        if terminated:
            break


def test_mask_and_padding(world) -> None:
    env = make(world, max_candidates=8, slate_size=3)
    obs, _ = env.reset(seed=2)
    cand = env.data.candidates[int(env.engine.req[0])]
    np.testing.assert_array_equal(obs["mask"], (cand >= 0).astype(np.float32))
    obs, *_ = env.step(int(np.argmax(obs["mask"])))
    assert obs["mask"][np.argmax(cand >= 0)] == 0  # placed: no longer selectable
    # longer requests keep their first K logged items
    log = env.data.log
    r = int(np.argmax(log.request_sizes))
    assert log.request_sizes[r] > 8
    first = log.item[log.request_offsets[r] : log.request_offsets[r] + 8]
    np.testing.assert_array_equal(env.data.candidates[r], first)


def test_clicks_update_the_user_history(world) -> None:
    env = make(world, obs_mode="ids", slate_size=5, reward="sampled")
    for episode in range(40):
        obs, _ = env.reset(seed=episode)
        before = obs["user"].copy()
        info = {}
        while "slate" not in info:
            obs, _, terminated, _, info = env.step(int(np.argmax(obs["mask"])))
        clicked = info["slate"][info["clicks"] == 1]
        if len(clicked) and not terminated:
            np.testing.assert_array_equal(obs["user"][-len(clicked) :], clicked)
            np.testing.assert_array_equal(obs["user"][: -len(clicked)],
                                          before[len(clicked) :])  # fmt: skip
            return
    pytest.fail("no request with a click in 40 episodes")


def test_user_episodes_replay_all_of_a_users_requests(world) -> None:
    log = world[0]
    env = make(world, episode="user", action_mode="top1")
    _, info = env.reset(seed=0, options={"episode": 3})
    user = log.request_user[int(env.engine.req[0])]
    assert info["requests"] == int((log.request_user == user).sum())
    times = []
    terminated = False
    while not terminated:
        times.append(log.request_timestamp[int(env.engine.req[0])])
        _, _, terminated, _, _ = env.step(0)
    assert len(times) == info["requests"] and times == sorted(times)


# ---------------------------------------------------------------------- batched == single
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"obs_mode": "ids", "slate_size": 5, "reward": "sampled"},
        {"action_mode": "scores", "max_candidates": 8, "slate_size": 4},
        {"action_mode": "top1", "episode": "user", "pooling": "decay", "profile_weight": 0.3},
    ],
)
@pytest.mark.parametrize("model_name", REWARD_MODELS)
def test_batched_env_equals_single_envs(world, models, options: dict, model_name: str) -> None:
    log, encoded, _ = world
    cfg = ReplayConfig(**options)
    model = models[model_name]
    if model.needs_history:  # fitted on the env's user histories
        model = models.neural(cfg.user_pooling)
    n = 5
    # one model object serves all six envs: click models hold no per-env state
    single = DummyVecEnv([lambda: SessionReplayEnv(log, encoded, model, cfg) for _ in range(n)])
    batched = BatchedReplayEnv(log, encoded, model, cfg, num_envs=n, device="cpu")
    single.seed(3)
    batched.seed(3)
    obs_a, obs_b = single.reset(), batched.reset()
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(120):
        assert same({k: v for k, v in obs_a.items()}, obs_b)
        if cfg.action_mode == "scores":
            actions = rng.uniform(-1, 1, (n, cfg.max_candidates)).astype(np.float32)
        else:
            actions = rng.integers(0, cfg.max_candidates, n)
        obs_a, rew_a, done_a, info_a = single.step(actions)
        obs_b, rew_b, done_b, info_b = batched.step(actions)
        np.testing.assert_array_equal(done_a, done_b)
        # float32 rewards; a neural model's MLP rounds differently for a batch of 1 and of 5
        np.testing.assert_allclose(rew_a, rew_b, rtol=0, atol=5e-7)
        for a, b in zip(info_a, info_b, strict=True):
            assert ("terminal_observation" in a) == ("terminal_observation" in b)
            if "terminal_observation" in a:
                assert same(a["terminal_observation"], b["terminal_observation"])
            if "slate" in a:
                assert same({k: a[k] for k in ("slate", "clicks", "request")},
                            {k: b[k] for k in ("slate", "clicks", "request")})  # fmt: skip
                assert a["ndcg"] == pytest.approx(b["ndcg"])
        episodes += int(done_a.sum())
    assert episodes >= 5, episodes  # auto-reset was exercised


@pytest.mark.parametrize("model_name", REWARD_MODELS)
def test_one_model_serves_envs_on_different_logs_at_once(world, models, model_name) -> None:
    """The train env and the eval env share the run's reward model (the old neural crash)."""
    log, encoded, _ = world
    train, test = log.split(0.3, seed=0)
    cfg = ReplayConfig(obs_mode="ids", slate_size=4)
    shared = models[model_name]
    fresh = copy.deepcopy(shared)

    def run(envs) -> list[np.ndarray]:
        for env in envs:
            env.seed(1)
            env.reset()
        out = []
        for t in range(60):  # interleaved: the test env starts after the train env
            for env in envs:
                out.append(env.step(np.full(env.num_envs, t % 5))[1])
        return out

    together = run([BatchedReplayEnv(part, encoded, shared, cfg, num_envs=4, device="cpu")
                    for part in (train, test)])  # fmt: skip
    alone = run([BatchedReplayEnv(train, encoded, fresh, cfg, num_envs=4, device="cpu")])
    alone += run([BatchedReplayEnv(test, encoded, copy.deepcopy(shared), cfg, num_envs=4,
                                   device="cpu")])  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(together[0::2]), np.concatenate(alone[:60]))
    np.testing.assert_array_equal(np.concatenate(together[1::2]), np.concatenate(alone[60:]))


def test_cascade_world_batched_equals_single() -> None:
    log, truth = SyntheticWorld(**SMALL_WORLD, click_model="cascade").generate()
    encoded = encode_log(log, HashingEncoder(dim=16), progress=False)
    cfg = ReplayConfig(reward="sampled", slate_size=6)
    single = DummyVecEnv(
        [lambda: SessionReplayEnv(log, encoded, TruthClickModel(truth=truth), cfg)] * 4
    )
    batched = BatchedReplayEnv(log, encoded, TruthClickModel(truth=truth), cfg, num_envs=4)
    single.seed(0)
    batched.seed(0)
    single.reset(), batched.reset()
    clicks = 0.0
    for t in range(200):
        actions = np.full(4, t % 7)
        _, ra, da, _ = single.step(actions)
        _, rb, db, _ = batched.step(actions)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(da, db)
        clicks += ra.sum()
    assert clicks > 0


# ---------------------------------------------------------------------- bad input
def test_bad_options_name_the_value(world) -> None:
    with pytest.raises(
        ValueError, match=r"env\.slate_size=30; allowed: 1\.\.20 \(max_candidates 20"
    ):
        make(world, slate_size=30)
    with pytest.raises(ValueError, match=r"env\.max_candidates=0; allowed: 1\.\.256"):
        make(world, max_candidates=0)
    with pytest.raises(ValueError, match=r"env\.action_mode='rank'; allowed: slot, scores, top1"):
        make(world, action_mode="rank")


def test_options_that_would_do_nothing_are_refused(world) -> None:
    with pytest.raises(ValueError, match=r"env\.decay=0\.5 is used only by env\.pooling=decay"):
        ReplayConfig(decay=0.5)
    with pytest.raises(ValueError, match=r"env\.last_k=3 is used only by env\.pooling=last_k"):
        ReplayConfig(pooling="decay", last_k=3)
    with pytest.raises(ValueError, match=r"env\.profile_weight=0\.5 needs env\.obs_mode=embed"):
        ReplayConfig(obs_mode="ids", profile_weight=0.5)


@pytest.mark.parametrize("pooling", [{"pooling": "decay", "decay": 0.5},
                                     {"pooling": "last_k", "last_k": 2}])  # fmt: skip
def test_pooling_reaches_the_observation_in_both_modes(world, pooling) -> None:
    """The ids observation carries the env's pooling weights; embeddings its pooled state."""
    encoded = world[1]
    states = {}
    for options in ({}, pooling):
        ids = make(world, obs_mode="ids", **options)
        emb = make(world, obs_mode="embeddings", **options)
        obs_ids, _ = ids.reset(seed=0, options={"episode": 5})
        obs_emb, _ = emb.reset(seed=0, options={"episode": 5})
        history = obs_ids["user"].astype(np.int64)
        pooled = obs_ids["user_weights"] @ np.where(
            (history >= 0)[:, None], encoded.items[np.maximum(history, 0)], 0.0
        )
        np.testing.assert_allclose(pooled, obs_emb["user"], rtol=1e-5, atol=1e-6)
        # the history's item features, pooled with the same weights (the world's category and
        # price band), and each candidate's features, as the ids tables give them
        feats = ids.embedding_tables["item_features"]
        pooled_feats = obs_ids["user_weights"] @ feats[np.maximum(history, 0)]
        np.testing.assert_allclose(pooled_feats, obs_emb["user_features"], rtol=1e-5, atol=1e-6)
        cand = obs_ids["candidates"].astype(np.int64)
        expected = np.where((cand >= 0)[:, None], feats[np.maximum(cand, 0)], 0.0).reshape(-1)
        np.testing.assert_allclose(obs_emb["candidate_features"], expected, rtol=1e-6)
        states[len(options)] = obs_emb["user"]
    assert (history >= 0).sum() > 2 and not np.allclose(states[0], states[2])
    assert emb.observation_space.contains(obs_emb)


def test_user_profile_joins_the_users_own_features_in_both_modes(world) -> None:
    """``user_profile``: the profile text's embedding follows the user's feature columns, in
    the ids tables (by ``user_id``) and after the pooled history's features in embeddings
    observations; ``features=false`` leaves the profile alone."""
    encoded = world[1]
    assert encoded.user_profiles.any(axis=1).all()  # every small-world user has a profile
    ids = make(world, obs_mode="ids", user_profile=True)
    np.testing.assert_array_equal(ids.embedding_tables["user_features"], encoded.user_profiles)
    assert "user_features" not in make(world, obs_mode="ids").embedding_tables  # no columns
    emb = make(world, obs_mode="embeddings", user_profile=True)
    plain = make(world, obs_mode="embeddings")
    obs, _ = emb.reset(seed=0, options={"episode": 5})
    obs_plain, _ = plain.reset(seed=0, options={"episode": 5})
    fi = encoded.item_features.shape[1]
    user = int(obs["user_id"][0])
    assert obs["user_features"].shape == (fi + encoded.dim,)
    np.testing.assert_array_equal(obs["user_features"][:fi], obs_plain["user_features"])
    np.testing.assert_allclose(obs["user_features"][fi:], encoded.user_profiles[user], rtol=1e-6)
    assert emb.observation_space.contains(obs)
    alone = make(world, obs_mode="embeddings", user_profile=True, features=False)
    obs_alone, _ = alone.reset(seed=0, options={"episode": 5})
    np.testing.assert_allclose(obs_alone["user_features"], encoded.user_profiles[user], rtol=1e-6)


def test_mismatched_artifacts_are_refused(world) -> None:
    log, encoded, _ = world
    other_log, other_truth = SyntheticWorld(**{**SMALL_WORLD, "seed": 1}).generate()
    # embeddings of another dataset: their query table does not fit this log
    with pytest.raises(ValueError, match=r"encoded queries has \d+ rows but the log has \d+"):
        SessionReplayEnv(other_log, encoded, TruthClickModel(truth=other_truth))
    # the ground truth of another world (same ids, other requests)
    with pytest.raises(LogValidationError, match="come from different worlds"):
        SessionReplayEnv(log, encoded, TruthClickModel(truth=other_truth))


def test_batched_env_rejects_bad_arguments(world) -> None:
    log, encoded, truth = world
    with pytest.raises(ValueError, match="num_envs=0; allowed: >= 1"):
        BatchedReplayEnv(log, encoded, TruthClickModel(truth=truth), num_envs=0)
    with pytest.raises(ValueError, match="device='tpu'; allowed: auto, cpu, cuda"):
        BatchedReplayEnv(log, encoded, TruthClickModel(truth=truth), device="tpu")
