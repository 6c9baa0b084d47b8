"""CandidateScorer and the SB3 policies: equivariance, masks, save/load, determinism."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor

from rankgym.agents.baselines import SB3Policy
from rankgym.agents.evaluation import evaluate
from rankgym.agents.policies import PlacedCandidateReplayBuffer, masked_random_actions
from rankgym.agents.scorer import MASKED, CandidateScorer
from rankgym.agents.training import build_agent, load_agent, save_checkpoint
from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.vector import BatchedReplayEnv

SMALL_PPO = {"n_steps": 16, "batch_size": 64, "n_epochs": 2, "learning_rate": 1e-3}
SMALL_DQN = {"learning_starts": 64, "buffer_size": 5000, "batch_size": 32, "train_freq": 1,
             "target_update_interval": 100}  # fmt: skip


@pytest.fixture(scope="module")
def world(small_world):
    log, truth = small_world
    return log, encode_log(log, HashingEncoder(dim=32), progress=False), truth


def venv(world, obs_mode: str = "ids", n: int = 8, **options) -> BatchedReplayEnv:
    log, encoded, truth = world
    cfg = ReplayConfig(obs_mode=obs_mode, max_candidates=12, slate_size=5, **options)
    env = BatchedReplayEnv(log, encoded, TruthClickModel(truth=truth), cfg, num_envs=n)
    env.seed(0)
    return env


@pytest.mark.parametrize("obs_mode", ["ids", "embeddings"])
@pytest.mark.parametrize("variant", ["mlp", "dot"])
def test_scorer_is_permutation_equivariant_and_masked(world, obs_mode: str, variant: str) -> None:
    env = venv(world, obs_mode)
    obs = env.reset()
    scorer = CandidateScorer(env.observation_space, env.embedding_tables, variant=variant)
    with torch.no_grad():
        base = scorer(obs_as_tensor(obs, "cpu")).numpy()
    mask = obs["mask"] > 0.5
    assert (base[~mask] == MASKED).all() and (base[mask] > MASKED).all()
    perm = np.random.default_rng(0).permutation(12)
    permuted = dict(obs)
    permuted["mask"] = obs["mask"][:, perm]
    if obs_mode == "ids":
        permuted["candidates"] = obs["candidates"][:, perm]
    else:  # every per-candidate block moves with its candidate (text and features)
        for key in ("candidates", "candidate_features"):
            permuted[key] = obs[key].reshape(8, 12, -1)[:, perm].reshape(8, -1)
    with torch.no_grad():
        moved = scorer(obs_as_tensor(permuted, "cpu")).numpy()
    np.testing.assert_allclose(moved, base[:, perm], rtol=1e-5, atol=1e-5)


def test_scorer_works_for_any_k(world) -> None:
    small = venv(world)  # K = 12
    log, encoded, truth = world
    cfg = ReplayConfig(obs_mode="ids", max_candidates=20)
    wide = BatchedReplayEnv(log, encoded, TruthClickModel(truth=truth), cfg, num_envs=8)
    a = CandidateScorer(small.observation_space, small.embedding_tables)
    b = CandidateScorer(wide.observation_space, wide.embedding_tables)
    b.load_state_dict(a.state_dict())  # same weights, other K
    obs = small.reset()
    padded = dict(obs)
    padded["candidates"] = np.pad(obs["candidates"], ((0, 0), (0, 8)), constant_values=-1)
    padded["mask"] = np.pad(obs["mask"], ((0, 0), (0, 8)))
    with torch.no_grad():
        sa = a(obs_as_tensor(obs, "cpu")).numpy()
        sb = b(obs_as_tensor(padded, "cpu")).numpy()
    np.testing.assert_allclose(sb[:, :12], sa, rtol=1e-5, atol=1e-6)
    assert (sb[:, 12:] == MASKED).all()


def test_ppo_never_samples_masked_candidates(world) -> None:
    env = venv(world)
    model = build_agent("ppo", env, seed=0, device="cpu", hyperparams=SMALL_PPO)
    obs = env.reset()
    mask = obs["mask"] > 0.5
    for _ in range(200):
        actions, _ = model.predict(obs, deterministic=False)
        assert mask[np.arange(len(actions)), actions].all()
    dist = model.policy.get_distribution(obs_as_tensor(obs, "cpu"))
    probs = dist.distribution.probs.detach().numpy()
    assert (probs[~mask] == 0).all()
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def test_dqn_exploration_and_greedy_actions_are_valid(world) -> None:
    env = venv(world)
    model = build_agent("dqn", env, seed=0, device="cpu", hyperparams=SMALL_DQN)
    obs = env.reset()
    mask = obs["mask"] > 0.5
    model.exploration_rate = 1.0  # every env explores
    picks = np.stack([model.predict(obs, deterministic=False)[0] for _ in range(300)])
    assert mask[np.arange(8), picks].all()
    assert len(np.unique(picks[:, 0])) == mask[0].sum()  # uniformly over all valid ones
    greedy, _ = model.predict(obs, deterministic=True)
    assert mask[np.arange(8), greedy].all()
    q = model.q_net(obs_as_tensor(obs, "cpu")).detach().numpy()
    assert (q[~mask] == MASKED).all()
    assert (masked_random_actions(np.eye(4)) == np.arange(4)).all()


@pytest.mark.parametrize("name", ["ppo", "a2c", "dqn", "dqn+users"])
def test_save_load_round_trip_predicts_the_same(world, name: str, tmp_path: Path) -> None:
    env = venv(world)
    name, _, users = name.partition("+")
    hyper = SMALL_DQN if name == "dqn" else SMALL_PPO if name == "ppo" else {"n_steps": 8}
    scorer = {"user_embedding": 4} if users else None
    model = build_agent(name, env, seed=0, device="cpu", hyperparams=hyper, scorer=scorer)
    model.learn(300)
    if users:  # learned, and it comes back with the rest of the state dict
        assert model.q_net.scorer.user_vectors.weight.abs().max() > 0
    path = save_checkpoint(model, tmp_path, name)
    loaded = load_agent(name, path, venv(world), "cpu", hyper, scorer)
    assert loaded.num_timesteps == model.num_timesteps >= 300
    obs = env.reset()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True)[0])  # fmt: skip
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[key], value)
    assert "tables" not in loaded.policy_kwargs  # tables travel in the state dict, once
    if name == "dqn":  # the replay buffer comes back too, as plain arrays
        assert loaded.replay_buffer.pos == model.replay_buffer.pos > 0
        for key, value in model.replay_buffer.observations.items():
            np.testing.assert_array_equal(loaded.replay_buffer.observations[key], value)


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_same_seed_same_training(world, name: str) -> None:
    log, encoded, truth = world
    _, test = log.split(0.3, seed=0)

    def train_and_evaluate() -> dict:
        model = build_agent(name, venv(world), seed=3, device="cpu",
                            hyperparams=SMALL_DQN if name == "dqn" else SMALL_PPO)  # fmt: skip
        model.learn(600)
        policy = SB3Policy(model, "ids", name)
        cfg = ReplayConfig(obs_mode="ids", max_candidates=12, slate_size=5)
        return evaluate(policy, test, encoded, TruthClickModel(truth=truth), cfg, truth=truth,
                        bootstrap=50).to_dict()  # fmt: skip

    assert train_and_evaluate() == train_and_evaluate()


def test_learning_without_a_logger_leaves_no_temporary_directory(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SB3's default logger makes an empty ``SB3-<time>`` directory in the temporary
    directory at every ``learn()``; an agent built here writes nothing until given a logger."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = build_agent("ppo", venv(world), seed=0, device="cpu", hyperparams=SMALL_PPO)
    model.learn(200)
    assert model.num_timesteps >= 200 and list(tmp_path.glob("SB3-*")) == []


def test_unknown_agent_and_hyperparameter_are_named(world) -> None:
    with pytest.raises(ValueError, match="agent.algorithm='sac'; allowed: ppo, a2c"):
        build_agent("sac", venv(world), seed=0)
    with pytest.raises(ValueError, match="agent.hyperparams for ppo: .*n_stepz"):
        build_agent("ppo", venv(world), seed=0, hyperparams={"n_stepz": 3})


def test_scorer_table_paths_equal_row_paths_and_follow_loaded_tables(world) -> None:
    """Large batches project the item table once (and read a cached unit table); the scores are
    those of small batches, which project their own rows; a loaded state dict resets the cache."""
    env = venv(world)
    obs = obs_as_tensor(env.reset(), "cpu")
    a = CandidateScorer(env.observation_space, env.embedding_tables)
    n_items = a.items.shape[0]
    repeat = n_items // (8 * 12) + 1  # B * K > the table's rows: the table path
    big = {k: v.repeat(repeat, *([1] * (v.dim() - 1))) for k, v in obs.items()}
    assert big["candidates"].numel() > n_items >= obs["candidates"].numel()
    with torch.no_grad():
        small_scores, big_scores = a(obs), a(big)
    torch.testing.assert_close(big_scores[:8], small_scores, rtol=1e-5, atol=1e-5)
    b = CandidateScorer(env.observation_space, None, a.table_shapes)  # zero tables
    with torch.no_grad():
        b(big)  # caches the unit table of the zero tables
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(b(big), big_scores)


def test_scorer_reuses_cosines_of_unchanged_rows_with_the_same_scores(world) -> None:
    """Without autograd, rows whose candidates, query and history equal the previous call's
    reuse its cosines: along a slot env's steps (some envs within a request, some starting
    another) the scores equal those computed from scratch, also when the env rewrites the
    observation arrays it returned before."""
    env = venv(world, n=6)
    memo = CandidateScorer(env.observation_space, env.embedding_tables, user_embedding=0)
    rng = np.random.default_rng(0)
    obs, reused = env.reset(), 0
    for _ in range(12):
        tensors = obs_as_tensor(obs, "cpu")
        with torch.no_grad():
            fresh = memo.score(memo.encode(tensors))  # through the memo
        with torch.enable_grad():
            scratch = memo(tensors).detach()  # autograd on: computed from scratch
        torch.testing.assert_close(fresh, scratch, rtol=1e-6, atol=1e-6)
        before = obs["candidates"].copy()
        obs = env.step(masked_random_actions(obs["mask"], rng))[0]
        reused += int((obs["candidates"] == before).all(1).sum())
    assert 0 < reused < 12 * 6  # both paths ran: rows kept their request, others changed
    first = {k: v[:3] for k, v in obs_as_tensor(obs, "cpu").items()}
    with torch.no_grad():  # another batch shape: computed afresh, not mixed up
        torch.testing.assert_close(memo(first), memo(obs_as_tensor(obs, "cpu"))[:3])


@pytest.mark.parametrize("obs_mode", ["ids", "embeddings"])
def test_user_vectors_score_by_user_and_unknown_users_get_the_zero_vector(
    world, obs_mode: str
) -> None:
    """``user_embedding``: a learned vector per user joins the context. It starts at zero (the
    scores then ignore the user's code), learns per user, and code -1 reads the zero row."""
    env = venv(world, obs_mode)
    obs = obs_as_tensor(env.reset(), "cpu")
    scorer = CandidateScorer(env.observation_space, env.embedding_tables, user_embedding=4)
    assert scorer.user_vectors.num_embeddings == world[0].n_users + 1
    other = dict(obs, user_id=(obs["user_id"] + 1) % world[0].n_users)
    with torch.no_grad():
        torch.testing.assert_close(scorer(other), scorer(obs))  # zero vectors: no effect
    # one gradient step moves the vectors of the batch's users only
    users = set(obs["user_id"].long().reshape(-1).tolist())
    scorer(obs)[obs["mask"] > 0.5].sum().backward()
    moved = set(torch.nonzero(scorer.user_vectors.weight.grad.abs().sum(1)).reshape(-1).tolist())
    assert moved == users
    with torch.no_grad():
        scorer.user_vectors.weight.normal_()
        scorer.user_vectors.weight[-1] = 0.0  # as training leaves it: no code reads it
        assert not torch.allclose(scorer(other), scorer(obs))
        cold = scorer(dict(obs, user_id=torch.full_like(obs["user_id"], -1)))
        scorer.user_vectors.weight[obs["user_id"].long().reshape(-1)] = 0.0
        torch.testing.assert_close(cold, scorer(obs))


def test_user_embedding_values_are_checked(world) -> None:
    env = venv(world)
    for bad in (-1, True, 2.5, "8"):
        with pytest.raises(ValueError, match=r"agent.scorer.user_embedding=.*allowed: an int >= 0"):
            CandidateScorer(env.observation_space, env.embedding_tables, user_embedding=bad)
    space = spaces.Dict({k: v for k, v in env.observation_space.spaces.items() if k != "user_id"})
    with pytest.raises(ValueError, match="needs the observation's user_id"):
        CandidateScorer(space, env.embedding_tables, user_embedding=4)


def test_dqn_with_gamma_0_skips_the_target_network_and_learns_the_same(world) -> None:
    def trained(unread: bool | None) -> tuple[object, dict[str, torch.Tensor]]:
        env = venv(world)
        hyper = {**SMALL_DQN, "gamma": 0.0}
        model = build_agent("dqn", env, seed=0, device="cpu", hyperparams=hyper)
        if unread is not None:
            model.q_net_target.unread = unread
        model.learn(400)
        return model, {k: v.clone() for k, v in model.q_net.state_dict().items()}

    skipped, weights = trained(None)
    assert skipped.q_net_target.unread and not skipped.q_net.unread
    computed, reference = trained(False)  # the target computed and multiplied by 0
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    obs = obs_as_tensor(venv(world).reset(), "cpu")
    assert (skipped.q_net_target(obs) == 0).all() and (computed.q_net_target(obs) != 0).any()
    # with gamma > 0 the target network's values are read, so computed
    bootstrapped = build_agent("dqn", venv(world), seed=0, device="cpu", hyperparams=SMALL_DQN)
    assert not bootstrapped.q_net_target.unread


@pytest.mark.parametrize("obs_mode", ["ids", "embeddings"])
def test_dqn_samples_score_only_the_placed_candidate_with_the_same_q_and_gradient(
    world, obs_mode: str
) -> None:
    env = venv(world, obs_mode)
    model = build_agent("dqn", env, seed=0, device="cpu", hyperparams=SMALL_DQN)
    model.learn(200)
    buffer = model.replay_buffer
    assert isinstance(buffer, PlacedCandidateReplayBuffer)
    inds = np.arange(buffer.pos)
    np.random.seed(1)
    placed = buffer._get_samples(inds)
    np.random.seed(1)  # the same env indices: the whole observations of the same transitions
    whole = DictReplayBuffer._get_samples(buffer, inds)
    k = whole.observations["mask"].shape[1]
    assert placed.observations["mask"].shape == (len(inds), 1) and k == 12
    assert (placed.actions == 0).all() and (whole.actions != 0).any()
    assert (placed.observations["mask"] == 1).all()  # only valid candidates are ever placed
    assert placed.next_observations["mask"].shape == (len(inds), k)  # the target's max reads all

    def q_and_grad(obs, actions):
        model.q_net.zero_grad()
        q = model.q_net(obs).gather(1, actions.long())
        q.sum().backward()
        grads = [p.grad.clone() for p in model.q_net.parameters() if p.grad is not None]
        return q.detach(), grads

    q_placed, g_placed = q_and_grad(placed.observations, placed.actions)
    q_whole, g_whole = q_and_grad(whole.observations, whole.actions)
    torch.testing.assert_close(q_placed, q_whole, rtol=1e-5, atol=1e-5)
    assert len(g_placed) == len(g_whole) > 0
    for a, b in zip(g_placed, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_linear_lr_schedule_decays_to_zero_at_the_last_step_and_is_checked(world) -> None:
    hyper = {**SMALL_PPO, "learning_rate": 2e-3}
    model = build_agent("ppo", venv(world), 0, "cpu", hyper, lr_schedule="linear")
    assert model.lr_schedule(1.0) == pytest.approx(2e-3)
    assert model.lr_schedule(0.25) == pytest.approx(5e-4)
    seen: list[float] = []
    model.learn(512, callback=_RecordLearningRate(seen))  # 4 rollouts of 8 envs x 16 steps
    assert seen[0] == pytest.approx(2e-3 * (1 - 128 / 512))  # set before each update
    assert seen == sorted(seen, reverse=True) and seen[-1] == pytest.approx(0.0)
    constant = build_agent("ppo", venv(world), 0, "cpu", hyper)
    assert constant.lr_schedule(0.25) == pytest.approx(2e-3)
    # without a learning_rate it decays from the algorithm's default (DQN's: 1e-4)
    dqn = build_agent("dqn", venv(world), 0, "cpu", {}, lr_schedule="linear")
    assert dqn.lr_schedule(1.0) == pytest.approx(1e-4) and dqn.lr_schedule(0.5) == 5e-5
    with pytest.raises(ValueError, match="agent.lr_schedule='cosine'; allowed: constant, linear"):
        build_agent("ppo", venv(world), 0, "cpu", hyper, lr_schedule="cosine")


class _RecordLearningRate(BaseCallback):
    """Records the optimizer's learning rate at the start of each rollout after the first."""

    def __init__(self, seen: list[float]) -> None:
        super().__init__()
        self.seen = seen

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps:
            self.seen.append(self.model.policy.optimizer.param_groups[0]["lr"])

    def _on_training_end(self) -> None:
        self.seen.append(self.model.policy.optimizer.param_groups[0]["lr"])

    def _on_step(self) -> bool:
        return True


def test_factorized_dqn_ranks_alike_at_every_position_and_reloads(world, tmp_path: Path) -> None:
    env = venv(world)
    model = build_agent("dqn", env, 0, "cpu", SMALL_DQN, q_model="factorized")
    model.learn(300)
    net = model.q_net
    assert net.q_model == "factorized" and net.scorer.position.num_embeddings == 1
    obs = obs_as_tensor(env.reset(), "cpu")
    mask = obs["mask"] > 0.5
    with torch.no_grad():
        net.examination.weight.copy_(
            torch.linspace(2.0, -2.0, len(net.examination.weight))[:, None]
        )
        scores = net.scorer(obs)
        at = {p: net(dict(obs, position=torch.full_like(obs["position"], p))) for p in (0, 3)}
    # Q = sigmoid(e[p]) * sigmoid(score): below 1, smaller at a less examined position, masked
    # candidates MASKED, and the same order as the scorer's at every position
    assert (at[0][~mask] == MASKED).all() and (at[0][mask] > 0).all() and (at[0][mask] < 1).all()
    assert (at[3][mask] < at[0][mask]).all()
    ratio = torch.sigmoid(net.examination.weight[3]) / torch.sigmoid(net.examination.weight[0])
    torch.testing.assert_close(at[3][mask] / at[0][mask], ratio.detach().expand(int(mask.sum())))
    for q in at.values():
        np.testing.assert_array_equal(q.argmax(1).numpy(), scores.argmax(1).numpy())
    # saved and reloaded: the examination comes back with the scorer
    path = save_checkpoint(model, tmp_path, "dqn")
    loaded = load_agent("dqn", path, venv(world), "cpu", SMALL_DQN, q_model="factorized")
    with torch.no_grad():
        torch.testing.assert_close(loaded.q_net(obs), net(obs))
    with pytest.raises(ValueError, match="agent.q_model='position'; allowed: additive, factorized"):
        build_agent("dqn", venv(world), 0, "cpu", SMALL_DQN, q_model="position")
    with pytest.raises(ValueError, match="agent.q_model=factorized is DQN's"):
        build_agent("ppo", venv(world), 0, "cpu", SMALL_PPO, q_model="factorized")
