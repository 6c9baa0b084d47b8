"""stable-baselines3 policies built on the CandidateScorer, with action masks.

* PPO / A2C: :class:`RankingActorCriticPolicy`, a categorical distribution over candidates
  whose logits are the scores (masked candidates get probability 0); the critic reads the
  scorer's pooled state.
* PPO / A2C on whole slates: :class:`RankingSlatePolicy`, a Plackett-Luce distribution over
  rankings of the candidates (env ``action_mode=scores``): one step ranks a request, so a slate
  costs one forward pass and one learning sample instead of one per position. With
  ``credit="position"`` each position's choice is credited with its own clicks (and the
  discounted clicks below it, :class:`PositionRolloutBuffer`) instead of every choice with the
  slate's clicks.
* DQN: :class:`RankingDQNPolicy`, one Q-value per candidate from the scorer, masked both when
  acting and in the target's max (a masked Q is very negative and never the max). Use it with
  :class:`MaskedDQN`, whose epsilon-greedy exploration picks among valid candidates, per env.

The embedding tables of ``ids`` observations are module buffers: they move to the policy's
device and are saved in the state dict, not in the pickled constructor arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import DictReplayBuffer, DictRolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, PyTorchObs
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

from rankgym.agents.scorer import MASKED, CandidateScorer


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

    value_width = 1  # values per state: one, or one per slate position (credit per position)

    def _build(self, lr_schedule: Any) -> None:
        self.scorer = CandidateScorer(
            self.observation_space, self._tables, self.table_shapes, **self.scorer_kwargs
        )
        self._tables = None  # now in the scorer's buffers
        self.table_shapes = self.scorer.table_shapes
        h = self.scorer.hidden
        self.value_head = nn.Sequential(
            nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, self.value_width)
        )
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _heads(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
        with self.scorer.autocast():  # scores and values come out in float32
            enc = self.scorer.encode(obs)
            values = self.value_head(self.scorer.pooled(enc)).float()
            return self.scorer.score(enc), values

    def _distribution(self, obs: PyTorchObs) -> tuple[Any, torch.Tensor]:
        """The action distribution of ``obs`` and the state values."""
        logits, values = self._heads(obs)
        return self.action_dist.proba_distribution(action_logits=logits), values

    def _entropy(self, dist: Any, actions: torch.Tensor) -> torch.Tensor:
        """The entropy PPO's loss rewards (of the categorical over candidates)."""
        return dist.entropy()

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions, values and log-probabilities (PPO's rollout step)."""
        dist, values = self._distribution(obs)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, values, dist.log_prob(actions)

    def evaluate_actions(
        self, obs: PyTorchObs, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values, log-probabilities and entropy of stored actions (PPO's loss)."""
        dist, values = self._distribution(obs)
        return values, dist.log_prob(actions), self._entropy(dist, actions)

    def get_distribution(self, obs: PyTorchObs) -> Any:
        """The action distribution: a masked categorical over candidates (a Plackett-Luce
        over rankings for :class:`RankingSlatePolicy`)."""
        return self._distribution(obs)[0]

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """State values (the critic)."""
        return self._heads(obs)[1]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)


class PlackettLuce(Distribution):
    """Plackett-Luce rankings of the unmasked candidates, with exact log-probabilities.

    A ranking is drawn position by position: the next item is chosen among those not yet
    placed with probability ``softmax(scores)``. Drawing is the Gumbel trick (sort
    ``scores + Gumbel noise``); the log-probability of a ranking sums, over its first
    ``slate_size`` positions, ``score - logsumexp(scores of the items not yet placed)``: only
    the placed positions, so the rest of the ranking does not add variance.

    An action is the ranking written as scores in ``[-1, 1]`` (what the env's ``Box(K)``
    action takes and SB3 clips to): ``1 - 2 rank / K`` for unmasked candidates, ``-1`` for
    masked ones. Sorting the action descending gives the ranking back exactly.

    Args:
        slate_size: positions the env fills per request (the ranking's scored prefix).
        per_position: :meth:`log_prob` returns each position's choice log-probability
            (``[B, slate_size]``, 0 past the placed prefix) instead of their sum (``[B]``).
    """

    def __init__(self, slate_size: int, per_position: bool = False) -> None:
        super().__init__()
        self.slate_size = slate_size
        self.per_position = per_position
        self.scores = torch.empty(0)
        self.mask = torch.empty(0, dtype=torch.bool)

    def proba_distribution_net(self, *args: Any, **kwargs: Any) -> nn.Module:
        """No layers of its own: the scores come from the :class:`CandidateScorer`."""
        return nn.Identity()

    def proba_distribution(self, scores: torch.Tensor, mask: torch.Tensor) -> PlackettLuce:
        """Set the ``[B, K]`` scores and the ``[B, K]`` bool mask (True: may be placed)."""
        self.scores, self.mask = scores, mask
        return self

    def _encode(self, order: torch.Tensor) -> torch.Tensor:
        """Rankings (candidate indices, best first) as ``[B, K]`` actions."""
        k = order.shape[1]
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(k, device=order.device).expand_as(order))
        return torch.where(self.mask, 1.0 - 2.0 * rank.to(self.scores.dtype) / k, -1.0)

    def _ranked_scores(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores in the order ``actions`` rank the candidates (masked last, very negative),
        the logsumexp of the scores from each position on (of the items still free there),
        and which positions are placed (the first ``slate_size`` unmasked ones)."""
        order = torch.argsort(actions, dim=1, descending=True, stable=True)
        ranked = self.scores.masked_fill(~self.mask, MASKED).gather(1, order)
        rest = torch.logcumsumexp(ranked.flip(1), dim=1).flip(1)  # logsumexp over j >= k
        width = self.mask.sum(1, keepdim=True).clamp(max=self.slate_size)
        placed = torch.arange(ranked.shape[1], device=ranked.device) < width
        return ranked, rest, placed

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B]`` exact log-probability of the placed prefix of each ranking (with
        ``per_position``, ``[B, slate_size]``: each placed position's choice)."""
        ranked, rest, placed = self._ranked_scores(actions)
        per_position = (ranked - rest) * placed
        if self.per_position:
            return per_position[:, : self.slate_size]
        return per_position.sum(1)

    def entropy_along(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B]`` sum over the placed positions of the entropy of that position's choice
        (among the items not yet placed), along each ranking: PL has no closed-form entropy."""
        ranked, rest, placed = self._ranked_scores(actions)
        k = ranked.shape[1]
        later = torch.ones(k, k, dtype=torch.bool, device=ranked.device).triu()  # j >= i
        logp = (ranked.unsqueeze(1) - rest.unsqueeze(2)).masked_fill(~later, float("-inf"))
        p = logp.exp()
        h = -(p * logp.masked_fill(~later, 0.0)).sum(-1)  # [B, K]: entropy at position i
        return (h * placed).sum(1)

    def entropy(self) -> torch.Tensor:
        """:meth:`entropy_along` the most likely ranking."""
        return self.entropy_along(self.mode())

    def sample(self) -> torch.Tensor:
        """Rankings drawn by the Gumbel trick."""
        u = torch.rand_like(self.scores).clamp_(1e-12, 1.0 - 1e-7)
        noisy = (self.scores - torch.log(-torch.log(u))).masked_fill(~self.mask, float("-inf"))
        return self._encode(torch.argsort(noisy, dim=1, descending=True, stable=True))

    def mode(self) -> torch.Tensor:
        """The most likely ranking: candidates by decreasing score."""
        keyed = self.scores.masked_fill(~self.mask, float("-inf"))
        return self._encode(torch.argsort(keyed, dim=1, descending=True, stable=True))

    def actions_from_params(
        self, scores: torch.Tensor, mask: torch.Tensor, deterministic: bool = False
    ) -> torch.Tensor:
        """Rankings for ``scores`` and ``mask``."""
        return self.proba_distribution(scores, mask).get_actions(deterministic=deterministic)

    def log_prob_from_params(
        self, scores: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled rankings and their log-probabilities."""
        actions = self.actions_from_params(scores, mask)
        return actions, self.log_prob(actions)


class RankingSlatePolicy(RankingActorCriticPolicy):
    """Whole-slate actor-critic for PPO/A2C: a :class:`PlackettLuce` ranking per request.

    The env runs with ``action_mode=scores``: one step ranks a whole request and earns the
    slate's expected clicks. The scorer is position-free (``max_positions=1``), so its scores
    rank the slate by sorting, and an evaluation or export that scores slot by slot places the
    same items (the argmax of the remaining candidates, every slot).

    ``credit="position"`` (with :class:`PositionRolloutBuffer`): the log-probabilities and
    the critic's values are per position (``[B, slate_size]``: the value of the clicks from
    each position on), so PPO's clipped ratio and advantage are taken per position. With
    ``future`` (``gamma > 0``) the critic has one more output, the value of the whole request
    and what follows it, which the buffer bootstraps across requests.

    Args:
        slate_size: positions per request (the env's ``slate_size``).
        credit: ``slate`` (one advantage per slate) or ``position``.
        future: with ``credit="position"``: also value what follows the request.
    """

    def __init__(
        self,
        *args: Any,
        slate_size: int = 10,
        credit: str = "slate",
        future: bool = False,
        **kwargs: Any,
    ) -> None:
        self.slate_size, self.credit = slate_size, credit  # checked by training._check_slate
        self.per_position, self.future = credit == "position", future
        # credit per position: one value per position (of the clicks from there on)
        self.value_width = slate_size + int(future) if self.per_position else 1
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        self.scorer_kwargs["max_positions"] = 1
        super()._build(lr_schedule)
        self.action_dist = PlackettLuce(self.slate_size, self.per_position)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(slate_size=self.slate_size, credit=self.credit, future=self.future)
        return data

    def _distribution(self, obs: PyTorchObs) -> tuple[PlackettLuce, torch.Tensor]:
        """The Plackett-Luce distribution over rankings of the candidates, and the values."""
        logits, values = self._heads(obs)
        dist = PlackettLuce(self.slate_size, self.per_position)
        return dist.proba_distribution(logits, obs["mask"] > 0.5), values

    def _entropy(self, dist: Any, actions: torch.Tensor) -> torch.Tensor:
        """The per-position entropies summed along the stored rankings."""
        return dist.entropy_along(actions)


CREDITS = ("slate", "position", "request")  # agent.credit (training._check_slate)


class PositionRolloutBuffer(DictRolloutBuffer):
    """PPO/A2C's rollout buffer with one reward, value, log-probability and advantage per
    slate position, for :class:`RankingSlatePolicy` with ``credit="position"``.

    The choice at position ``p`` cannot change the clicks above it, so its advantage is the
    discounted clicks from ``p`` on, ``G_p = sum_{q >= p} position_discount ** (q - p) r_q``,
    less the critic's value of them. ``position_discount=1`` is the exact policy gradient of
    the slate's clicks with less variance than one advantage per slate; ``0`` credits each
    choice with its own clicks only (myopic: exact when the best slate is the sort by
    attractiveness, as under a position-based model).

    With ``gamma > 0`` (a sequential world, where a slate changes what comes next) every
    position's choice is also credited with the discounted value of what follows its request,
    ``F_t``, which all positions of a request share: ``G_p = sum_{q >= p} ... + F_t``. A
    request leads on two ways (``transitions``): to the session's next request with chance
    ``c_t``, or, leaving there, to the following session with chance ``b_t``; so the whole request's
    return is ``R_t = C_t + gamma (c_t R_{t+1} + b_t R_next_session)`` (``C_t`` its clicks),
    and ``F_t = R_t - C_t``. Sampled users make ``c_t`` and ``b_t`` 0 or 1; a walk of the whole
    timeline with the chance that the user is there (``env.user_choices=expected``) makes ``R_t``
    the exact expectation over every leaving point, with no sampling noise. Returns run to the
    rollout's end and are bootstrapped there by the critic's extra output, the value of the
    whole pending request (``gae_lambda`` is not used). ``gamma = 0`` gives ``F_t = 0``, the
    bandit credit.

    Args:
        slot_rewards: returns the last env step's ``[n_envs, slate_size]`` rewards per
            position (:meth:`rankgym.envs.vector.BatchedReplayEnv.slot_rewards`).
        transitions: returns what the last env step's requests led to, ``[n_envs, 3]``
            (:meth:`rankgym.envs.vector.BatchedReplayEnv.transitions`); ``None``: the next
            request always follows.
        slate_size: positions per request.
        position_discount: in ``[0, 1]``.
        (the rest): :class:`~stable_baselines3.common.buffers.DictRolloutBuffer`'s.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        gae_lambda: float = 1.0,
        gamma: float = 0.0,
        n_envs: int = 1,
        slot_rewards: Callable[[], np.ndarray] | None = None,
        slate_size: int = 10,
        position_discount: float = 1.0,
        transitions: Callable[[], np.ndarray] | None = None,
    ) -> None:
        if not 0 <= gamma <= 1:
            raise ValueError(f"agent.hyperparams.gamma={gamma}; allowed: [0, 1]")
        if slot_rewards is None:
            raise ValueError("agent.credit=position needs the env's rewards per position")
        self.slot_rewards, self.slate_size = slot_rewards, slate_size
        self.transitions = transitions
        self.position_discount = float(position_discount)
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda,
                         gamma, n_envs)  # fmt: skip

    def reset(self) -> None:
        super().reset()
        shape = (self.buffer_size, self.n_envs, self.slate_size)
        for name in ("rewards", "log_probs", "advantages"):
            setattr(self, name, np.zeros(shape, dtype=np.float32))
        self.transition = np.tile(np.float32([1, 0, 0]), (*shape[:2], 1))
        width = self.slate_size + int(self.gamma > 0)  # + the whole request's value
        for name in ("returns", "values"):
            setattr(self, name, np.zeros((*shape[:2], width), dtype=np.float32))

    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: torch.Tensor,
        log_prob: torch.Tensor,
    ) -> None:
        """Store one step; the per-position rewards come from the env (their sum is
        ``reward``)."""
        rewards = np.asarray(self.slot_rewards(), dtype=np.float32)
        if rewards.shape != (self.n_envs, self.slate_size):
            raise ValueError(
                f"the env's rewards per position have shape {rewards.shape}; expected "
                f"({self.n_envs}, {self.slate_size}): train in env action_mode=scores"
            )
        for key in self.observations:
            self.observations[key][self.pos] = np.asarray(obs[key])
        self.actions[self.pos] = np.asarray(action).reshape(self.n_envs, self.action_dim)
        self.rewards[self.pos] = rewards
        if self.transitions is not None:
            self.transition[self.pos] = self.transitions()
        self.episode_starts[self.pos] = np.asarray(episode_start)
        self.values[self.pos] = value.detach().cpu().numpy().reshape(self.n_envs, -1)
        self.log_probs[self.pos] = log_prob.detach().cpu().numpy().reshape(self.n_envs, -1)
        self.pos += 1
        self.full = self.pos == self.buffer_size

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        """``returns[p] = G_p`` (the discounted clicks from ``p`` on, within the request, plus
        ``F_t``) and ``advantages[p] = G_p - values[p]``; with ``gamma > 0`` also
        ``returns[slate_size] = R_t``, the whole request's target."""
        s = self.slate_size
        returns = np.zeros_like(self.returns)
        later = np.zeros(self.rewards.shape[:2], dtype=np.float32)
        for p in reversed(range(s)):
            later = self.rewards[..., p] + self.position_discount * later
            returns[..., p] = later
        if self.gamma > 0:
            clicks = self.rewards.sum(axis=2)
            pending = last_values.detach().cpu().numpy().reshape(self.n_envs, -1)[:, s]
            alive = 1.0 - np.asarray(dones, dtype=np.float32)
            after = pending * alive  # R of the request that follows, bootstrapped at the end
            next_session = after.copy()  # R of the following session's first request
            for t in reversed(range(self.buffer_size)):
                if t < self.buffer_size - 1:  # an episode that ended at t leads nowhere
                    alive = 1.0 - self.episode_starts[t + 1]
                    after, next_session = after * alive, next_session * alive
                c, b, ended = self.transition[t].T
                next_session = np.where(ended > 0, after, next_session)
                same = np.where(ended > 0, 0.0, after)
                whole = clicks[t] + self.gamma * (c * same + b * next_session)
                returns[t, :, s] = whole
                after = whole
            returns[..., :s] += (returns[..., s] - clicks)[..., None]  # + F_t
        self.returns = returns
        self.advantages = returns[..., :s] - self.values[..., :s]

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: Any = None
    ) -> Any:
        """Minibatch with per-position ``old_log_prob`` and ``advantages`` (``[b, S]``, what
        PPO's ratio is taken against) and values and returns flattened as PPO flattens the
        critic's output."""
        samples = super()._get_samples(batch_inds, env)
        return samples._replace(
            old_log_prob=self.to_torch(self.log_probs[batch_inds]),
            advantages=self.to_torch(self.advantages[batch_inds]),
        )


class RankingQNetwork(BasePolicy):
    """Q-value per candidate from the scorer; masked candidates get :data:`MASKED`.

    ``q_model``:

    * ``additive``: the scorer's scores, the position added to its context: each position
      learns its own ranking, from the transitions placed at that position only;
    * ``factorized``: ``sigmoid(e[position]) * sigmoid(score)``, a learned examination per
      position times an attractiveness from a position-free scorer (what a position-based
      click model says a slot's expected clicks are). Every position then ranks by the same
      scores, learned from the transitions of all positions, and the exported scorer ranks as
      the Q-values do.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        scorer: dict[str, Any],
        tables: dict[str, np.ndarray] | None,
        table_shapes: dict[str, tuple[int, int]] | None,
        q_model: str = "additive",
    ) -> None:
        super().__init__(observation_space, action_space)
        self.q_model = q_model
        self.examination: nn.Embedding | None = None
        if q_model == "factorized":
            scorer = {**scorer, "max_positions": 1}
            self.examination = nn.Embedding(int(observation_space["position"].high[0]) + 1, 1)
            nn.init.zeros_(self.examination.weight)  # 0.5 at every position to start
        self.scorer = CandidateScorer(observation_space, tables, table_shapes, **scorer)
        self.unread = False  # a target network whose values are multiplied by gamma = 0

    def forward(self, obs: PyTorchObs) -> torch.Tensor:
        """``[B, K]`` Q-values; masked candidates get a very negative value. An ``unread``
        network (the target when ``gamma`` is 0) returns zeros without computing them."""
        if self.unread:
            return obs["mask"].new_zeros(obs["mask"].shape)
        with self.scorer.autocast():  # float32 scores in any case
            scores = self.scorer(obs)
        if self.examination is None:
            return scores
        position = obs["position"].long().reshape(-1).clamp(0, self.examination.num_embeddings - 1)
        q = torch.sigmoid(self.examination(position)) * torch.sigmoid(scores)
        return q.masked_fill(obs["mask"] <= 0.5, MASKED)

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> torch.Tensor:
        return self(observation).argmax(dim=1)


class RankingDQNPolicy(_ScorerArguments, DQNPolicy):
    """DQN policy whose Q-network and target are :class:`RankingQNetwork` s (``q_model``:
    ``additive`` or ``factorized``)."""

    def __init__(self, *args: Any, q_model: str = "additive", **kwargs: Any) -> None:
        self.q_model = q_model  # checked by training._check_q_model
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> RankingQNetwork:  # type: ignore[override]
        """A fresh Q-network (called for the online and the target network)."""
        return RankingQNetwork(
            self.observation_space,
            self.action_space,
            self.scorer_kwargs,
            self._tables,
            self.table_shapes,
            self.q_model,
        ).to(self.device)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self._tables = None  # copied into both networks' buffers
        self.table_shapes = self.q_net.scorer.table_shapes

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(q_model=self.q_model)
        return data


# observation keys laid out per candidate
PER_CANDIDATE = ("candidates", "candidate_features", "mask")


class PlacedCandidateReplayBuffer(DictReplayBuffer):
    """DQN's replay buffer whose samples show the learner only the placed candidate.

    DQN's loss reads ``Q(s, a)`` of the stored action alone, and the scorer scores a candidate
    from the request's context and that candidate only (no candidate sees another), so each
    sampled observation is cut to its placed candidate (``K`` = 1, action 0): the same
    Q-values and gradients as scoring all ``K`` and gathering one, for about ``1/K`` of the
    head's work (tested). The buffer stores whole transitions as SB3's does (the same
    checkpoint arrays), and next observations keep every candidate for the target's max.
    """

    extra_arrays: tuple[str, ...] = ()  # arrays a checkpoint saves beside SB3's own

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: Any = None
    ) -> DictReplayBufferSamples:
        rows, envs = self._draw(batch_inds)
        actions = self.to_torch(self.actions[rows, envs]).long()
        done = self.dones[rows, envs] * (1 - self.timeouts[rows, envs])
        return DictReplayBufferSamples(
            observations=self._placed(rows, envs, actions),
            actions=torch.zeros_like(actions),
            next_observations=self._at(self.next_observations, rows, envs),
            dones=self.to_torch(done).reshape(-1, 1),
            rewards=self.to_torch(self.rewards[rows, envs]).reshape(-1, 1),
        )

    def _draw(self, batch_inds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sampled rows and an env for each, drawn uniformly (as SB3 draws it)."""
        return batch_inds, np.random.randint(0, self.n_envs, size=len(batch_inds))

    def _at(
        self, arrays: dict[str, np.ndarray], rows: np.ndarray, envs: np.ndarray
    ) -> dict[str, torch.Tensor]:
        return {key: self.to_torch(value[rows, envs]) for key, value in arrays.items()}

    def _placed(
        self, rows: np.ndarray, envs: np.ndarray, actions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The stored observations cut to their placed candidate."""
        obs = self._at(self.observations, rows, envs)
        b, k = obs["mask"].shape
        picked = torch.arange(b, device=actions.device), actions[:, 0]
        return {
            key: value.reshape(b, k, -1)[picked].reshape(b, -1) if key in PER_CANDIDATE else value
            for key, value in obs.items()
        }


class RequestSamples(NamedTuple):
    """A minibatch of :class:`RequestReplayBuffer`: what :meth:`MaskedDQN.train` reads."""

    observations: dict[str, torch.Tensor]  # cut to the placed candidate (action 0)
    actions: torch.Tensor
    next_observations: dict[str, torch.Tensor]  # after the request: the session's next one
    later_observations: dict[str, torch.Tensor]  # the following session's first request
    rewards: torch.Tensor  # [b, 1] the request's clicks from the placement on, weighted
    follow: torch.Tensor  # [b, 2] the chances of the session's next request and of a return


class RequestReplayBuffer(PlacedCandidateReplayBuffer):
    """DQN's replay buffer for ``credit="request"``: each placement is credited with its
    request's clicks from its position on (weighted by ``position_discount``, as PPO's
    :class:`PositionRolloutBuffer`), plus the discounted value of what follows the request.

    A request leads on two ways, as in :class:`PositionRolloutBuffer`: to the session's next
    request with chance ``c``, or, leaving there, to the following session's first with chance
    ``b`` (``transitions``; 0 or 1 each with sampled users, probabilities in an expected walk). So
    the target of a placement at position ``p`` is ``R_p + gamma (c max Q(s_next) + b max
    Q(s_later))``, with ``R_p = sum_{q >= p} position_discount ** (q - p) r_q`` the clicks of
    positions ``p`` on, as if the user were surely there (``reached_rewards``): ``gamma``
    discounts once per request. ``position_discount=0`` credits a placement with its own click
    only: the clicks below it then add no noise to its target, though the target misses how
    taking an item from the pool changes the clicks below. A placement's effect on
    whether the user goes on reaches it through ``c`` and ``b`` of its own request; a
    placement-by-placement chain could not carry it, since the scorer sees earlier placements
    only through the mask. Within a request the return is the behaviour policy's (a
    multi-step return without correction).

    Transitions are rewritten when their request ends (``R_p``, ``c``, ``b`` and the next
    observation of its last placement) and when their session ends (``later``: the row whose
    next observation is the following session's first). Until then they are ``pending`` and
    never sampled; ``pending`` is saved with the buffer, so a resumed run never samples the
    sessions its restart abandoned.

    Args:
        reached_rewards: returns the last env step's rewards as if the user were there
            (:meth:`rankgym.envs.vector.BatchedReplayEnv.reached_rewards`); ``None``: the
            step's rewards.
        transitions: returns what the last env step's requests led to, ``[n_envs, 3]``
            (:meth:`rankgym.envs.vector.BatchedReplayEnv.transitions`); ``None``: the next
            request always follows.
        position_discount: in ``[0, 1]``, the weight of the clicks ``q - p`` positions below.
        (the rest): :class:`~stable_baselines3.common.buffers.DictReplayBuffer`'s.
    """

    extra_arrays = ("follow", "later", "pending")

    def __init__(
        self,
        *args: Any,
        reached_rewards: Callable[[], np.ndarray] | None = None,
        transitions: Callable[[], np.ndarray] | None = None,
        position_discount: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reached_rewards, self.transitions = reached_rewards, transitions
        self.position_discount = float(position_discount)
        self.follow = np.zeros((self.buffer_size, self.n_envs, 2), dtype=np.float32)
        self.later = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self.pending = np.zeros((self.buffer_size, self.n_envs), dtype=bool)
        self.session_rows = np.zeros(self.n_envs, dtype=np.int64)  # rows of each open session

    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        row, n = self.pos, self.n_envs
        super().add(obs, next_obs, action, reward, done, infos)
        if self.reached_rewards is not None:
            self.rewards[row] = self.reached_rewards()
        if self.transitions is not None:
            went = np.asarray(self.transitions(), dtype=np.float64).reshape(n, 3)
        else:
            went = np.tile([1.0, 0.0, 0.0], (n, 1))
        position = np.asarray(obs["position"]).reshape(n).astype(np.int64)
        done = np.asarray(done, dtype=bool).reshape(n)
        request_ended = done | (np.asarray(next_obs["position"]).reshape(n) == 0)
        self.follow[row] = np.where(request_ended[:, None] & ~done[:, None], went[:, :2], 0.0)
        self.pending[row] = True
        self.session_rows += 1
        envs = np.flatnonzero(request_ended)
        total = self.rewards[row, envs]
        for back in range(1, int(position[envs].max(initial=0)) + 1):  # the request's rows
            keep = position[envs] >= back
            envs, total = envs[keep], total[keep]
            earlier = (row - back) % self.buffer_size
            total = self.rewards[earlier, envs] + self.position_discount * total
            self.rewards[earlier, envs] = total
            for value in self.next_observations.values():
                value[earlier, envs] = value[row, envs]
            for array in (self.dones, self.timeouts, self.follow):
                array[earlier, envs] = array[row, envs]
        # a session's end: its rows' following session is this row's next observation
        session_ended = request_ended & (done | (went[:, 2] > 0))
        ended = np.flatnonzero(session_ended)
        for back in range(int(self.session_rows[ended].max(initial=0))):
            ended = ended[self.session_rows[ended] > back]
            earlier = (row - back) % self.buffer_size
            self.later[earlier, ended] = row
            self.pending[earlier, ended] = False
        self.session_rows[session_ended] = 0

    def _draw(self, batch_inds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uniform transitions, drawn again where they hit an unfinished session (a few in a
        hundred once the buffer holds a few hundred steps; more at the start, when every env
        began its episode at once)."""
        rows, envs = super()._draw(batch_inds)
        filled = self.buffer_size if self.full else self.pos
        for _ in range(1000):
            again = np.flatnonzero(self.pending[rows, envs])
            if not len(again):
                return rows, envs
            rows[again] = np.random.randint(0, filled, size=len(again))
            envs[again] = np.random.randint(0, self.n_envs, size=len(again))
        raise RuntimeError(
            "the replay buffer holds no finished session: agent.hyperparams.learning_starts "
            "must cover at least one whole session per env"
        )

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: Any = None
    ) -> RequestSamples:
        rows, envs = self._draw(batch_inds)
        actions = self.to_torch(self.actions[rows, envs]).long()
        return RequestSamples(
            observations=self._placed(rows, envs, actions),
            actions=torch.zeros_like(actions),
            next_observations=self._at(self.next_observations, rows, envs),
            later_observations=self._at(self.next_observations, self.later[rows, envs], envs),
            rewards=self.to_torch(self.rewards[rows, envs]).reshape(-1, 1),
            follow=self.to_torch(self.follow[rows, envs]),
        )


class MaskedDQN(DQN):
    """DQN whose exploration (warm-up and epsilon-greedy) picks valid candidates, per env.

    SB3's DQN samples the whole action space, and with several envs explores all of them or
    none on a step; here each env explores on its own with probability epsilon, uniformly among
    the candidates its mask allows, so no invalid action ever enters the replay buffer.
    """

    def _setup_model(self) -> None:
        super()._setup_model()
        # with gamma 0 the TD target is the reward alone: SB3 multiplies the target network's
        # values by 0, so they are not computed (one forward pass fewer per gradient step, the
        # same targets and the same saved weights)
        self.q_net_target.unread = self.gamma == 0

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's DQN update; with a :class:`RequestReplayBuffer` its target has two branches,
        ``R_p + gamma (c max Q'(s_next) + b max Q'(s_later))`` (the Huber loss, the gradient
        clipping and the logged keys are SB3's)."""
        if not isinstance(self.replay_buffer, RequestReplayBuffer):
            return super().train(gradient_steps, batch_size)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size)
            target = data.rewards
            if self.gamma > 0:
                with torch.no_grad():
                    target = target + self.gamma * self._following_value(data)
            q = self.q_net(data.observations).gather(1, data.actions)
            loss = nn.functional.smooth_l1_loss(q, target)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))

    def _following_value(self, data: RequestSamples) -> torch.Tensor:
        """``[b, 1]`` ``c max Q'(s_next) + b max Q'(s_later)``, the target network read only
        where a branch has a chance: with sampled users one branch per sample at most, so
        one pass over the batch rather than two."""
        chances = data.follow  # [b, 2]
        value = torch.zeros_like(chances)
        for branch, states in enumerate((data.next_observations, data.later_observations)):
            rows = (chances[:, branch] > 0).nonzero().squeeze(1)
            if len(rows):
                best = self.q_net_target({k: v[rows] for k, v in states.items()}).max(dim=1)
                # no candidate left to place (an episode's end): nothing follows
                value[rows, branch] = torch.where(best.values > MASKED / 2, best.values, 0.0)
        return (chances * value).sum(dim=1, keepdim=True)

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
