"""BatchedReplayEnv: B session replays stepped at once, as an SB3 ``VecEnv``.

It is the replay engine (:mod:`rankgym.envs.replay`) on ``num_envs`` rows behind SB3's ``VecEnv``
API, with the semantics of ``num_envs`` :class:`~rankgym.envs.session_replay.SessionReplayEnv` s
run by ``DummyVecEnv`` (sub-env ``i`` seeded with ``seed + i``): same observations, rewards, episode
ends and auto-reset (``terminal_observation`` in infos). Both envs run the same engine, so the
equality holds by construction; a test checks it for every reward model.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvStepReturn

from rankgym import threads
from rankgym.encoders.encoded_log import EncodedLog
from rankgym.envs.click_models.base import ClickModel
from rankgym.envs.replay import ReplayConfig, ReplayData, ReplayEngine, new_key
from rankgym.logs import SessionLog


class BatchedReplayEnv(VecEnv):
    """``num_envs`` replays of ``log`` in array ops (an SB3 ``VecEnv``).

    In ``embeddings`` mode the ``candidates`` array of an observation is one of a ring of
    preallocated buffers, so it stays valid until the next step returns: enough for SB3, whose
    PPO/DQN copy an observation into their buffers right after the step that follows it; copy
    it to keep it longer. (A fresh ``[B, K * d]`` array per step costs more than the rest of
    the step: page faults.)

    When an episode ends, its infos also carry ``episode = {"r": return, "l": length, "t":
    seconds}`` as SB3's ``Monitor`` does, so training logs ``rollout/ep_rew_mean``.

    Args:
        log, encoded, model, config: as for :class:`SessionReplayEnv`.
        num_envs: ``B``, sessions stepped at once.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``: where candidate
            embeddings are gathered.
        request_infos: put per-request metrics (slate, clicks, NDCG) in ``infos``; turn off
            for raw speed.
    """

    def __init__(
        self,
        log: SessionLog,
        encoded: EncodedLog,
        model: ClickModel,
        config: ReplayConfig | None = None,
        num_envs: int = 1024,
        device: str = "auto",
        request_infos: bool = True,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}; allowed: >= 1")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={device!r}; allowed: auto, cpu, cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device; use auto or cpu")
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if cuda else "cpu")
        self.config = config or ReplayConfig()
        self.data = ReplayData(log, encoded, model, self.config)
        self.engine = ReplayEngine(self.data, num_envs, self.device, request_infos)
        self.embedding_tables = self.data.embedding_tables
        self.render_mode = None
        super().__init__(num_envs, self.data.observation_space, self.data.action_space)
        self._seeded = np.zeros(num_envs, dtype=bool)
        self._queue: list[int] = []
        self._return = np.zeros(num_envs)  # Monitor-style episode statistics
        self._length = np.zeros(num_envs, dtype=np.int64)
        self._t0 = time.perf_counter()
        self._actions: np.ndarray | None = None

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> dict[str, np.ndarray]:
        """Reset every sub-env (seeds from :meth:`seed` apply here, as in SB3)."""
        for i, seed in enumerate(self._seeds):
            if seed is not None or not self._seeded[i]:
                # the same draw SessionReplayEnv makes from np_random after reset(seed=...)
                rng = _gym_rng(seed) if seed is not None else np.random.default_rng()
                self.engine.seed(np.array([i]), np.array([new_key(rng)]))
                self._seeded[i] = True
        rows = np.arange(self.num_envs)
        self._start_episodes(rows, [opt.get("episode") for opt in self._options])
        self._return[:] = 0.0
        self._length[:] = 0
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self.engine.observation()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of the next :meth:`step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Apply the stored actions to every sub-env, auto-resetting finished episodes."""
        threads.tick()  # training and evaluation step here: torch's threads follow the load
        reward, dones, infos = self.engine.step(self._actions)
        self._return += reward
        self._length += 1
        if dones.any():
            ended = np.flatnonzero(dones)
            terminal = self.engine.observation(ended)
            for n, i in enumerate(ended):
                infos[i]["terminal_observation"] = {k: v[n] for k, v in terminal.items()}
                infos[i]["TimeLimit.truncated"] = False
                infos[i]["episode"] = {
                    "r": float(self._return[i]),
                    "l": int(self._length[i]),
                    "t": round(time.perf_counter() - self._t0, 6),
                }
            self._return[ended] = 0.0
            self._length[ended] = 0
            self._start_episodes(ended, [None] * len(ended))
        return self.engine.observation(), reward.astype(np.float32), dones, infos

    def close(self) -> None:
        """Nothing to release."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """An attribute of the (shared) env, once per selected sub-env."""
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the shared env."""
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the shared env, once per selected sub-env."""
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """Sub-envs are not Gymnasium envs, so never wrapped."""
        return [False] * len(self._indices(indices))

    def _indices(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices) if isinstance(indices, Iterable) else [indices]

    # ------------------------------------------------------------------ evaluation hooks
    def queue_episodes(self, episodes: Sequence[int]) -> None:
        """Play these episodes (in order) before drawing random ones: one pass over a test set.

        Sub-envs take queued episodes whenever they start one (at :meth:`reset` and at
        auto-reset); request infos carry ``queued=True`` for them.
        """
        bad = [e for e in episodes if not 0 <= int(e) < self.data.n_episodes]
        if bad:
            raise ValueError(f"episodes {bad[:5]} out of range 0..{self.data.n_episodes - 1}")
        self._queue = [int(e) for e in reversed(list(episodes))]

    def transitions(self) -> np.ndarray:
        """``float64[B, 3]`` what each sub-env's request in the last step led to, in a
        sequential world (:attr:`rankgym.envs.sequential.UserFlow.transition`): the chance of
        the session's next request, of a return for the following session, and whether the session
        ended. In a bandit world: ``[1, 0, 0]`` (the next request always follows)."""
        flow = self.engine.flow
        if flow is None:
            return np.tile([1.0, 0.0, 0.0], (self.num_envs, 1))
        return flow.transition.copy()

    def reached_rewards(self) -> np.ndarray:
        """``float64[B]`` the last step's rewards as if the user were surely there: in an
        expected walk (``env.user_choices=expected``) the step's rewards before they are
        weighted by the chance that the user reached the request; otherwise the rewards."""
        return np.asarray(self.engine.reached_rewards, dtype=np.float64).copy()

    def slot_rewards(self) -> np.ndarray:
        """``float64[B, slate_size]`` the last step's reward of each position (``action_mode
        = scores``: each step ranks a whole slate; unfilled positions 0). The step's reward
        is their sum."""
        return self.engine.slot_rewards.copy()

    def current_attractiveness(self) -> np.ndarray:
        """``float64[B, K]`` the reward model's attractiveness of each sub-env's candidates
        (what an oracle ranks by)."""
        return self.engine.attr.copy()

    def _start_episodes(self, rows: np.ndarray, chosen: list[int | None]) -> None:
        """Start the ``chosen`` episodes, else queued ones, else random draws."""
        episodes = self.engine.draw_episodes(rows)
        queued = np.zeros(len(rows), dtype=bool)
        for n, pick in enumerate(chosen):
            if pick is not None:
                episodes[n] = int(pick)
            elif self._queue:
                episodes[n] = self._queue.pop()
                queued[n] = True
        self.engine.start_episodes(rows, episodes, queued)


def _gym_rng(seed: int) -> np.random.Generator:
    """The generator Gymnasium builds for ``reset(seed=seed)``."""
    from gymnasium.utils import seeding

    return seeding.np_random(seed)[0]
