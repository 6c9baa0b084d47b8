"""Whole-slate PPO: the Plackett-Luce distribution, the slate policy and the supervised ceiling."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor

from rankgym.agents.baselines import SB3Policy
from rankgym.agents.evaluation import evaluate
from rankgym.agents.policies import PlackettLuce, PositionRolloutBuffer
from rankgym.agents.supervised import SupervisedAgent
from rankgym.agents.training import (
    EvalCallback,
    SB3Agent,
    build_agent,
    learner_precision,
    load_agent,
    resolve_precision,
    save_checkpoint,
    scorer_precision,
)
from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.vector import BatchedReplayEnv

SMALL_PPO = {"n_steps": 16, "batch_size": 64, "n_epochs": 2, "learning_rate": 1e-3, "gamma": 0.0}


@pytest.fixture(scope="module")
def world(small_world):
    log, truth = small_world
    return log, encode_log(log, HashingEncoder(dim=32), progress=False), truth


def venv(world, n: int = 8, mode: str = "scores", log=None) -> BatchedReplayEnv:
    base, encoded, truth = world
    cfg = ReplayConfig(obs_mode="ids", max_candidates=12, slate_size=5, action_mode=mode)
    env = BatchedReplayEnv(log or base, encoded, TruthClickModel(truth=truth), cfg, num_envs=n)
    env.seed(0)
    return env


def test_log_prob_is_exact_and_sums_to_one_over_placed_prefixes() -> None:
    scores = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.7]])
    mask = torch.tensor([[True, True, True, False, True]])
    dist = PlackettLuce(slate_size=2).proba_distribution(scores, mask)
    valid = [0, 1, 2, 4]
    e = scores[0].exp()
    total = 0.0
    for a, b in itertools.permutations(valid, 2):
        rest = [c for c in valid if c not in (a, b)]
        action = dist._encode(torch.tensor([[a, b, *rest, 3]]))
        z = e[valid].sum()
        expected = math.log(e[a] / z) + math.log(e[b] / (z - e[a]))
        assert dist.log_prob(action).item() == pytest.approx(expected, abs=1e-5)
        total += math.exp(expected)
        # the unplaced tail's order does not change the probability of the slate
        swapped = dist._encode(torch.tensor([[a, b, *rest[::-1], 3]]))
        assert dist.log_prob(swapped).item() == pytest.approx(expected, abs=1e-5)
    assert total == pytest.approx(1.0, abs=1e-5)


def test_samples_follow_softmax_never_rank_masked_first_and_decode_exactly() -> None:
    torch.manual_seed(0)
    scores = torch.tensor([[1.0, 0.2, -0.5, 2.0]]).repeat(20000, 1)
    mask = torch.tensor([[True, True, True, False]]).repeat(20000, 1)
    dist = PlackettLuce(slate_size=3).proba_distribution(scores, mask)
    actions = dist.sample()
    assert actions.min() >= -1 and actions.max() <= 1  # inside the env's Box(-1, 1)
    assert (actions[:, 3] == -1).all()  # masked: ranked last
    top = np.bincount(actions.argmax(1).numpy(), minlength=4) / 20000
    soft = torch.softmax(scores[0, :3], 0).numpy()
    np.testing.assert_allclose(top[:3], soft, atol=0.015)
    # the env ranks by the action: the same order the distribution decoded
    order = torch.argsort(actions, dim=1, descending=True, stable=True)
    np.testing.assert_array_equal(dist._encode(order).numpy(), actions.numpy())
    mode = dist.mode()[0]
    assert torch.argsort(mode, descending=True).tolist() == [0, 1, 2, 3]


def test_entropy_along_a_ranking_is_the_sum_of_each_choice_entropy() -> None:
    scores = torch.tensor([[0.5, -1.0, 2.0]])
    dist = PlackettLuce(slate_size=2).proba_distribution(scores, torch.ones(1, 3, dtype=bool))
    action = dist._encode(torch.tensor([[2, 0, 1]]))
    p1 = torch.softmax(scores[0], 0)
    p2 = torch.softmax(scores[0, :2], 0)
    expected = -(p1 * p1.log()).sum() - (p2 * p2.log()).sum()
    assert dist.entropy_along(action).item() == pytest.approx(expected.item(), abs=1e-5)
    uniform = PlackettLuce(3).proba_distribution(torch.zeros(1, 3), torch.ones(1, 3, dtype=bool))
    assert uniform.entropy().item() == pytest.approx(math.log(3) + math.log(2), abs=1e-5)


@pytest.mark.parametrize(("credit", "discount"), [("slate", 1.0), ("position", 1.0),
                                                  ("position", 0.0)])  # fmt: skip
def test_slate_ppo_ranks_whole_requests_and_learns(world, credit: str, discount: float) -> None:
    log, encoded, truth = world
    train, test = log.split(0.3, seed=0)
    env = venv(world, n=16, log=train)
    model = build_agent("ppo", env, 0, "cpu", SMALL_PPO, None, True, credit, discount)
    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=False)
    assert actions.shape == (16, 12)
    ranked = np.argsort(-actions, axis=1, kind="stable")[:, :5]
    assert (obs["mask"][np.arange(16)[:, None], ranked] > 0).all()  # places valid items only
    cfg = ReplayConfig(obs_mode="ids", max_candidates=12, slate_size=5)

    def true_clicks() -> float:
        r = evaluate(SB3Policy(model, "ids", "ppo"), test, encoded, TruthClickModel(truth=truth),
                     cfg, truth=truth, bootstrap=0)  # fmt: skip
        assert r.invalid_actions == 0
        return r.metrics["true_expected_clicks"]

    before = true_clicks()
    model.learn(6000)  # 6,000 whole slates
    after = true_clicks()
    assert after > before + 0.05, (before, after)


def test_bf16_learner_rounds_products_keeps_float32_and_learns(world) -> None:
    """agent.precision=bf16: products in bfloat16 while learning; scores, values, weights and
    the periodic evaluations in float32; PPO still learns."""
    log, encoded, truth = world
    train, test = log.split(0.3, seed=0)
    agent = SB3Agent("ppo", "ppo", num_envs=16, hyperparams=SMALL_PPO, slate=True,
                     credit="position", position_discount=0.0, precision="bf16")  # fmt: skip
    model = agent.build(venv(world, n=16, log=train), 0, "cpu")
    with torch.no_grad():
        model.policy._heads(obs_as_tensor(model.env.reset(), model.device))  # float32 memo
        model.env.step(np.random.default_rng(0).uniform(-1, 1, (16, 12)))
        obs = obs_as_tensor(model.env.step(np.zeros((16, 12)))[0], model.device)
        with learner_precision(model, "bf16"):  # new requests, a memo of the same shapes
            mixed, mixed_values = model.policy._heads(obs)
        plain, plain_values = model.policy._heads(obs)
    assert mixed.dtype == mixed_values.dtype == torch.float32
    valid = obs["mask"] > 0.5
    error = (mixed - plain)[valid].abs().max().item()
    assert 0 < error < 0.02 * plain[valid].abs().max().item() + 1e-3  # rounded, same function
    assert (mixed[~valid] == plain[~valid]).all()  # masked stays masked
    assert torch.allclose(mixed_values, plain_values, atol=0.05)
    cfg = ReplayConfig(obs_mode="ids", max_candidates=12, slate_size=5)

    def true_clicks(m=model) -> float:
        r = evaluate(SB3Policy(m, "ids", "ppo"), test, encoded, TruthClickModel(truth=truth),
                     cfg, truth=truth, bootstrap=0)  # fmt: skip
        return r.metrics["true_expected_clicks"]

    bf16_at_eval: list[bool] = []

    def periodic(m) -> dict[str, float]:
        bf16_at_eval.append(m.policy.scorer.bf16)
        return {"true_expected_clicks": true_clicks(m)}

    class Drift(BaseCallback):
        """At each rollout: the learner's bfloat16 scores against float32 ones of the same
        weights (a stale cache of bfloat16 weights would drift apart as they learn)."""

        def _on_rollout_start(self) -> None:
            with torch.no_grad():
                mixed = self.model.policy._heads(obs)[0][valid]
                with scorer_precision(self.model, False):
                    exact = self.model.policy._heads(obs)[0][valid]
            drift.append(((mixed - exact).abs().max() / exact.abs().max()).item())

        def _on_step(self) -> bool:
            return True

    before = true_clicks()
    drift: list[float] = []
    agent.learn(model, 6000, callback=[EvalCallback(periodic, 2048, {}), Drift()])
    assert bf16_at_eval == [False] * 3  # at 2048, 4096, 6144 slates: float32
    assert not model.policy.scorer.bf16  # restored after learn
    assert len(drift) == 24 and 0 < max(drift) < 0.02
    assert all(p.dtype == torch.float32 for p in model.policy.parameters())
    assert true_clicks() > before + 0.05


def test_precision_is_checked() -> None:
    with pytest.raises(ValueError, match=r"agent.precision='fp16'; allowed: auto, fp32, bf16"):
        SB3Agent("ppo", "ppo", precision="fp16")
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")


def test_position_credit_is_the_clicks_from_each_position_on(world) -> None:
    """``credit=position``: the buffer stores the env's reward of every position (summing to
    the step's reward), and each position's advantage is the discounted clicks from there on
    less the critic's value of them; PPO's ratio is taken per position."""
    env = venv(world, n=4)
    hyper = {**SMALL_PPO, "n_steps": 3, "batch_size": 6}
    model = build_agent("ppo", env, 0, "cpu", hyper, None, True, "position", 0.5)
    buffer = model.rollout_buffer
    assert isinstance(buffer, PositionRolloutBuffer)
    env.reset()
    scores = np.random.default_rng(0).normal(size=(4, 12))
    _, reward, _, _ = env.step(scores)
    np.testing.assert_allclose(env.slot_rewards().sum(1), reward, rtol=1e-6)
    assert (env.slot_rewards()[:, 0] > 0).all()
    model.learn(12)  # one rollout of 3 steps x 4 envs, one update
    # after the update the buffer's learning arrays are flattened env-major (SB3's layout);
    # rewards keep their [step, env, position] layout
    r, v = buffer.rewards.swapaxes(0, 1).reshape(-1, 5), buffer.values.reshape(-1, 5)
    g = np.zeros_like(r)
    for p in reversed(range(5)):
        g[:, p] = r[:, p] + (0.5 * g[:, p + 1] if p < 4 else 0.0)
    np.testing.assert_allclose(buffer.returns.reshape(-1, 5), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(buffer.advantages.reshape(-1, 5), g - v, rtol=1e-5, atol=1e-6)
    batch = next(buffer.get(6))
    assert batch.old_log_prob.shape == batch.advantages.shape == (6, 5)
    assert batch.returns.shape == batch.old_values.shape == (30,)
    values, log_prob, _ = model.policy.evaluate_actions(batch.observations, batch.actions)
    assert values.shape == (6, 5) and log_prob.shape == (6, 5)
    # the per-position log-probabilities sum to the slate's
    whole = model.policy.get_distribution(batch.observations)
    whole.per_position = False
    torch.testing.assert_close(log_prob.sum(1), whole.log_prob(batch.actions))
    for bad, match in (
        ({"credit": "item"}, "agent.credit='item'; allowed: slate, position"),
        ({"credit": "position", "slate": False}, "agent.credit=position needs agent.slate=true"),
        ({"credit": "position", "position_discount": 1.5}, r"position_discount=1.5; allowed"),
    ):
        with pytest.raises(ValueError, match=match):
            SB3Agent("ppo", "ppo", **{"slate": True, **bad})
    # gamma > 0 adds the whole request's value to the critic (tests/envs/test_longterm.py)
    ahead = build_agent("ppo", env, 0, "cpu", {**hyper, "gamma": 0.9}, None, True, "position")
    assert ahead.rollout_buffer.values.shape[-1] == 6 and ahead.policy.value_width == 6
    with pytest.raises(ValueError, match=r"gamma=1.5; allowed: \[0, 1\]"):
        build_agent("ppo", env, 0, "cpu", {**hyper, "gamma": 1.5}, None, True, "position")


def test_slate_policy_evaluates_as_the_sort_of_its_scores(world) -> None:
    env = venv(world)
    model = build_agent("ppo", env, seed=1, device="cpu", hyperparams=SMALL_PPO, slate=True)
    slot_env = venv(world, mode="slot")
    obs = slot_env.reset()
    policy = SB3Policy(model, "ids", "ppo")
    with torch.no_grad():
        scores = model.policy.scorer(obs_as_tensor(obs, "cpu")).numpy()
    expected = np.argsort(-np.where(obs["mask"] > 0, scores, -np.inf), axis=1, kind="stable")
    for slot in range(5):  # greedy, slot by slot, in the slot env = the sorted scores
        act = policy.act(obs, slot_env)
        np.testing.assert_array_equal(act, expected[:, slot])
        obs = slot_env.step(act)[0]


def test_slate_checkpoint_round_trip_and_refusals(world, tmp_path: Path) -> None:
    env = venv(world)
    model = build_agent("ppo", env, seed=0, device="cpu", hyperparams=SMALL_PPO, slate=True)
    model.learn(256)
    path = save_checkpoint(model, tmp_path, "ppo")
    loaded = load_agent("ppo", path, venv(world), "cpu", SMALL_PPO, slate=True)
    obs = env.reset()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True)[0])  # fmt: skip
    with pytest.raises(ValueError, match="slate agent needs env.action_mode=scores"):
        build_agent("ppo", venv(world, mode="slot"), seed=0, slate=True)
    with pytest.raises(ValueError, match="agent.slate=true with agent.algorithm=dqn; allowed"):
        SB3Agent("dqn", "dqn", slate=True)
    with pytest.raises(ValueError, match="agent.slate='yes'; allowed: true, false"):
        SB3Agent("ppo", "ppo", slate="yes")
    assert SB3Agent("ppo", "ppo", slate=True).action_mode == "scores"


def test_supervised_ceiling_fits_the_truth(world) -> None:
    log, encoded, truth = world
    train, test = log.split(0.3, seed=0)
    agent = SupervisedAgent(num_envs=64, learning_rate=3e-3)
    policy, seen = agent.train(venv(world, n=64, log=train), 20000, seed=0)
    assert seen == 20032
    cfg = ReplayConfig(obs_mode="ids", max_candidates=12, slate_size=5)
    model = TruthClickModel(truth=truth)
    from rankgym.agents.baselines import CosinePolicy, RandomPolicy

    values = {
        p.name: evaluate(p, test, encoded, model, cfg, truth=truth, bootstrap=0).metrics[
            "true_expected_clicks"
        ]
        for p in (policy, RandomPolicy(), CosinePolicy().fit(train, encoded))
    }
    assert values["supervised"] > values["cosine"] > values["random"], values
    with pytest.raises(ValueError, match="action_mode=scores"):
        agent.train(venv(world, mode="slot"), 10, seed=0)
    with pytest.raises(ValueError, match="agent.num_envs=0"):
        SupervisedAgent(num_envs=0)
