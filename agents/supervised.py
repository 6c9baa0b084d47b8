"""The supervised ceiling: the RL agents' scorer fitted to the reward model's attractiveness.

Not RL and not deployable on real logs: it reads the reward model's click probabilities of
every candidate (the ground truth on a synthetic world) while training. It answers how far the
scorer's features can go: the gap between it and the oracle is the features', the gap between
an RL agent and it is the RL's (``conf/agent/supervised.yaml``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rankgym.agents.baselines import ScoringPolicy
from rankgym.agents.scorer import CandidateScorer
from rankgym.envs.vector import BatchedReplayEnv


class SupervisedPolicy(ScoringPolicy):
    """Ranks by a trained :class:`CandidateScorer` (position-free), greedily slot by slot."""

    def __init__(self, scorer: CandidateScorer, name: str = "supervised") -> None:
        super().__init__(name)
        self.scorer = scorer.eval()

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """The scorer's score of each candidate."""
        device = next(self.scorer.parameters()).device
        tensors = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in obs.items()}
        with torch.no_grad():
            return self.scorer(tensors).double().cpu().numpy()


class SupervisedAgent:
    """Fits the scorer by regression to the training env's attractiveness (the ceiling).

    Each step the batched env (``action_mode=scores``, random rankings, so users' histories
    evolve as in training) starts ``num_envs`` requests; their candidates' attractiveness under
    the reward model is the target of a binary cross-entropy on the scores (``sigmoid(score)``
    estimates the click probability at the top), one Adam step per batch, fresh data each time.

    Args:
        name: the name reported in results.
        num_envs: requests per gradient step.
        learning_rate: Adam's step size.
        scorer: ``CandidateScorer`` arguments (``variant``, ``hidden``, ``item_bias``).
    """

    action_mode = "scores"

    def __init__(
        self,
        name: str = "supervised",
        num_envs: int = 256,
        learning_rate: float = 1e-3,
        scorer: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"agent.num_envs={num_envs!r}; allowed: an int >= 1")
        if not isinstance(learning_rate, int | float) or learning_rate <= 0:
            raise ValueError(f"agent.learning_rate={learning_rate!r}; allowed: a number > 0")
        self.name, self.num_envs, self.learning_rate = name, num_envs, float(learning_rate)
        self.scorer = {**(scorer or {}), "max_positions": 1}

    def train(
        self, venv: BatchedReplayEnv, timesteps: int, seed: int, device: str = "cpu"
    ) -> tuple[SupervisedPolicy, int]:
        """Fit on ``timesteps`` requests of ``venv`` (its ``num_envs`` per step).

        Returns the policy and the requests learned from.
        """
        if venv.config.obs_mode != "ids" or venv.config.action_mode != "scores":
            raise ValueError(
                "the supervised ceiling trains on env.obs_mode=ids, action_mode=scores"
            )
        torch.manual_seed(seed)
        dev = torch.device("cuda" if device == "cuda" else "cpu")
        space, tables = venv.observation_space, venv.embedding_tables
        scorer = CandidateScorer(space, tables, **self.scorer).to(dev)
        optimizer = torch.optim.Adam(scorer.parameters(), lr=self.learning_rate)
        rng = np.random.default_rng(seed)
        venv.seed(seed)
        obs = venv.reset()
        steps = max(1, -(-timesteps // venv.num_envs))
        for _ in tqdm(range(steps), desc="supervised", unit=" batches", disable=None):
            target = torch.as_tensor(venv.current_attractiveness(), dtype=torch.float32, device=dev)
            tensors = {k: torch.as_tensor(v, device=dev) for k, v in obs.items()}
            mask = tensors["mask"] > 0.5
            scores = scorer(tensors)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                scores[mask], target[mask].clamp(0.0, 1.0)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            venv.step_async(rng.uniform(-1.0, 1.0, (venv.num_envs, scores.shape[1])))
            obs = venv.step_wait()[0]
        return SupervisedPolicy(scorer, self.name), steps * venv.num_envs
