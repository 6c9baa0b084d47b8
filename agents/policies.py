"""stable-baselines3 policies built on the CandidateScorer, with action masks.

* PPO / A2C: :class:`RankingActorCriticPolicy`, a categorical distribution over candidates
  whose logits are the scores (masked candidates get probability 0); the critic reads the
  scorer's pooled state.
* DQN: :class:`RankingDQNPolicy`, one Q-value per candidate from the scorer, masked both when
  acting and in the target's max (a masked Q is very negative and never the max). Use it with
  :class:`MaskedDQN`, whose epsilon-greedy exploration picks among valid candidates, per env.

The embedding tables of ``ids`` observations are module buffers: they move to the policy's
device and are saved in the state dict, not in the pickled constructor arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

from agents.scorer import CandidateScorer


def masked_random_actions(mask: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """A uniformly random valid candidate per row of ``mask`` (``[B, K]``)."""
    u = (rng.random(mask.shape) if rng is not None else np.random.random(mask.shape)) + 1.0
    return np.argmax(np.where(mask > 0.5, u, 0.0), axis=1)


class _ScorerArguments:
    """Constructor arguments both policies share: the scorer's settings and the tables.

    ``tables`` are used once, to fill the scorer's buffers; ``table_shapes`` (what checkpoints
    keep) rebuild empty buffers on load, which the saved state dict then fills.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Any,
        scorer: dict[str, Any] | None = None,
        tables: dict[str, np.ndarray] | None = None,
        table_shapes: dict[str, tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.scorer_kwargs = dict(scorer or {})
        self._tables = tables
        self.table_shapes = table_shapes
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(scorer=self.scorer_kwargs, table_shapes=self.table_shapes)
        return data


class RankingActorCriticPolicy(_ScorerArguments, ActorCriticPolicy):
    """Actor-critic over candidates for PPO/A2C (``policy_kwargs``: ``scorer``, ``tables``)."""

    def _build(self, lr_schedule: Any) -> None:
        self.scorer = CandidateScorer(
            self.observation_space, self._tables, self.table_shapes, **self.scorer_kwargs
        )
        self._tables = None  # now in the scorer's buffers
        self.table_shapes = self.scorer.table_shapes
        h = self.scorer.hidden
        self.value_head = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 1))
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _heads(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.scorer.encode(obs)
        return self.scorer.score(enc), self.value_head(self.scorer.pooled(enc))

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions, values and log-probabilities (PPO's rollout step)."""
        logits, values = self._heads(obs)
        dist = self.action_dist.proba_distribution(action_logits=logits)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, values, dist.log_prob(actions)

    def evaluate_actions(
        self, obs: PyTorchObs, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values, log-probabilities and entropy of stored actions (PPO's loss)."""
        logits, values = self._heads(obs)
        dist = self.action_dist.proba_distribution(action_logits=logits)
        return values, dist.log_prob(actions), dist.entropy()

    def get_distribution(self, obs: PyTorchObs) -> Any:
        """The masked categorical distribution over candidates."""
        logits, _ = self._heads(obs)
        return self.action_dist.proba_distribution(action_logits=logits)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """State values (the critic)."""
        return self._heads(obs)[1]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)


class RankingQNetwork(BasePolicy):
    """Q-value per candidate: the scorer's masked scores."""

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        scorer: dict[str, Any],
        tables: dict[str, np.ndarray] | None,
        table_shapes: dict[str, tuple[int, int]] | None,
    ) -> None:
        super().__init__(observation_space, action_space)
        self.scorer = CandidateScorer(observation_space, tables, table_shapes, **scorer)

    def forward(self, obs: PyTorchObs) -> torch.Tensor:
        """``[B, K]`` Q-values; masked candidates get a very negative value."""
        return self.scorer(obs)

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> torch.Tensor:
        return self(observation).argmax(dim=1)


class RankingDQNPolicy(_ScorerArguments, DQNPolicy):
    """DQN policy whose Q-network and target are :class:`RankingQNetwork` s."""

    def make_q_net(self) -> RankingQNetwork:  # type: ignore[override]
        """A fresh Q-network (called for the online and the target network)."""
        return RankingQNetwork(
            self.observation_space,
            self.action_space,
            self.scorer_kwargs,
            self._tables,
            self.table_shapes,
        ).to(self.device)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self._tables = None  # copied into both networks' buffers
        self.table_shapes = self.q_net.scorer.table_shapes


class MaskedDQN(DQN):
    """DQN whose exploration (warm-up and epsilon-greedy) picks valid candidates, per env.

    SB3's DQN samples the whole action space, and with several envs explores all of them or
    none on a step; here each env explores on its own with probability epsilon, uniformly among
    the candidates its mask allows, so no invalid action ever enters the replay buffer.
    """

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Greedy masked Q, or (not deterministic) a valid random candidate w.p. epsilon."""
        action, state = self.policy.predict(observation, state, episode_start, deterministic)
        if deterministic or not self.policy.is_vectorized_observation(observation):
            return action, state
        explore = np.random.random(len(action)) < self.exploration_rate
        if explore.any():
            action = np.where(explore, masked_random_actions(observation["mask"]), action)
        return action, state

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps < learning_starts:
            action = masked_random_actions(self._last_obs["mask"])
        else:
            action, _ = self.predict(self._last_obs, deterministic=False)
        return action, action
