"""BatchedReplayEnv: B session replays stepped at once, as an SB3 ``VecEnv``.

It has the semantics of ``num_envs`` :class:`~envs.session_replay.SessionReplayEnv` s run by
``DummyVecEnv`` (sub-env ``i`` seeded with ``seed + i``): same observations, rewards, episode
ends and auto-reset (``terminal_observation`` in infos), tested equal. Instead of a Python loop
over envs, every step is a handful of array operations over the batch: the control state (which
request, which position, what is placed, who is still examining) lives in ``[B]`` / ``[B, K]``
numpy arrays, and the candidate embeddings are gathered with torch on ``device`` (cuda when
present), the one step whose cost grows with ``K x d``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvStepReturn

from encoders.encoded_log import EncodedLog
from encoders.pooling import pool_user_state
from envs.click_models.base import ClickModel, sample_slot_click, slot_click_prob
from envs.logs import SessionLog
from envs.replay_data import (
    STREAM_CLICK,
    STREAM_CONTINUE,
    STREAM_EPISODE,
    ReplayConfig,
    append_history,
    counter,
    new_key,
    uniform,
)
from envs.session_replay import SessionReplayEnv, ndcg_batch

RING = 2  # an observation's candidates array stays valid for RING - 1 further steps


class BatchedReplayEnv(VecEnv):
    """``num_envs`` replays of ``log`` in tensor/array ops (an SB3 ``VecEnv``).

    In ``embeddings`` mode the ``candidates`` array of an observation is one of ``RING``
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
            embeddings are gathered (and where a neural click model runs).
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
        # one single env describes the spaces and validates the inputs
        template = SessionReplayEnv(log, encoded, model, config)
        self.render_mode = None
        super().__init__(num_envs, template.observation_space, template.action_space)
        self.config, self.data = template.config, template.data
        self.embedding_tables = template.embedding_tables
        self.request_infos = request_infos
        self.device = torch.device(
            "cuda"
            if device == "cuda" or (device == "auto" and torch.cuda.is_available())
            else "cpu"
        )
        # row I is zeros: padding (-1) gathers it, no masking pass over [B, K, d]
        items = np.concatenate([encoded.items, np.zeros((1, encoded.dim), encoded.items.dtype)])
        self._items = torch.as_tensor(items, dtype=torch.float32, device=self.device)
        self._needs_state = self.config.obs_mode == "embeddings" or model.needs_user_state
        b, k = num_envs, self.config.max_candidates
        self._rows = np.arange(b)
        self._key = np.zeros(b, dtype=np.uint64)
        self._seeded = np.zeros(b, dtype=bool)
        self._episodes_started = np.zeros(b, dtype=np.int64)
        self._episode_no = np.zeros(b, dtype=np.int64)
        self._episode = np.zeros(b, dtype=np.int64)
        self._return = np.zeros(b)  # Monitor-style episode statistics for SB3's rollout/ tags
        self._length = np.zeros(b, dtype=np.int64)
        self._t0 = time.perf_counter()
        self._queued = np.zeros(b, dtype=bool)
        self._queue: list[int] = []
        self._ep_start = np.zeros(b, dtype=np.int64)
        self._ep_len = np.zeros(b, dtype=np.int64)
        self._j = np.zeros(b, dtype=np.int64)
        self._req = np.zeros(b, dtype=np.int64)
        self._cand = np.full((b, k), -1, dtype=np.int64)
        self._attr = np.zeros((b, k))
        self._placed = np.zeros((b, k), dtype=bool)
        self._slate_len = np.ones(b, dtype=np.int64)
        self._pos = np.zeros(b, dtype=np.int64)
        self._examined = np.ones(b)
        self._examining = np.ones(b, dtype=bool)
        self._invalid = np.zeros(b, dtype=np.int64)
        width = self.config.slate_size
        self._slate = np.zeros((b, width), dtype=np.int64)
        self._clicks = np.zeros((b, width), dtype=np.int64)
        self._probs = np.zeros((b, width))
        self._history = np.full((b, self.config.history_len), -1, dtype=np.int64)
        self._state = np.zeros((b, encoded.dim), dtype=np.float32)
        # candidate vectors: a ring of preallocated buffers (fresh 30 MB arrays cost page
        # faults); rows are re-gathered only when their request changed since that buffer
        self._ring = [np.zeros((b, k * encoded.dim), dtype=np.float32) for _ in range(RING)]
        self._ring_version = np.full((RING, b), -1, dtype=np.int64)
        self._row_version = np.zeros(b, dtype=np.int64)
        self._ring_next = 0
        self._scratch = torch.empty((b * k, encoded.dim), dtype=torch.float32, device=self.device)
        self._actions: np.ndarray | None = None

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> dict[str, np.ndarray]:
        """Reset every sub-env (seeds from :meth:`seed` apply here, as in SB3)."""
        for i, seed in enumerate(self._seeds):
            if seed is not None or not self._seeded[i]:
                # the same draw SessionReplayEnv makes from np_random after reset(seed=...)
                rng = _gym_rng(seed) if seed is not None else np.random.default_rng()
                self._key[i] = new_key(rng)
                self._episodes_started[i] = 0
                self._seeded[i] = True
        episodes = [opt.get("episode") for opt in self._options]
        self._start_episodes(self._rows, episodes)
        self._return[:] = 0.0
        self._length[:] = 0
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self._observation()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of the next :meth:`step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Apply the stored actions to every sub-env, auto-resetting finished episodes."""
        mode = self.config.action_mode
        actions = self._actions
        if mode == "scores":
            scores = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1)
            valid = self._valid()
            keyed = np.where(valid, scores, -np.inf)
            order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -keyed))
            reward = np.zeros(self.num_envs)
            for s in range(self.config.slate_size):
                active = self._pos < self._slate_len
                reward += np.where(active, self._place(order[:, s], active), 0.0)
        else:
            reward = self._place(np.asarray(actions, dtype=np.int64).reshape(-1), None)
        self._return += reward
        self._length += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        finished = np.flatnonzero(self._pos == self._slate_len)
        dones = np.zeros(self.num_envs, dtype=bool)
        if len(finished):
            self._finish_requests(finished, infos)
            self._j[finished] += 1
            ended = finished[self._j[finished] == self._ep_len[finished]]
            going = finished[self._j[finished] < self._ep_len[finished]]
            dones[ended] = True
            if len(going):
                self._start_requests(going)
        if dones.any():
            ended = np.flatnonzero(dones)
            terminal = self._observation(ended)
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
        obs = self._observation()
        return obs, reward.astype(np.float32), dones, infos

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

    @property
    def queue_left(self) -> int:
        """Queued episodes not started yet."""
        return len(self._queue)

    def current_attractiveness(self) -> np.ndarray:
        """``float64[B, K]`` the reward model's attractiveness of each sub-env's candidates
        (what an oracle ranks by)."""
        return self._attr.copy()

    # ------------------------------------------------------------------ episode logic
    def _start_episodes(self, rows: np.ndarray, chosen: list[int | None]) -> None:
        data = self.data
        u = uniform(self._key[rows], counter(self._episodes_started[rows], 0, 0, STREAM_EPISODE))
        episode = (u * data.n_episodes).astype(np.int64)
        queued = np.zeros(len(rows), dtype=bool)
        for n, pick in enumerate(chosen):
            if pick is not None:
                episode[n] = int(pick)
            elif self._queue:
                episode[n] = self._queue.pop()
                queued[n] = True
        self._episode[rows] = episode
        self._queued[rows] = queued
        self._episode_no[rows] = self._episodes_started[rows]
        self._episodes_started[rows] += 1
        self._ep_start[rows] = data.episode_offsets[episode]
        self._ep_len[rows] = data.episode_offsets[episode + 1] - data.episode_offsets[episode]
        self._j[rows] = 0
        first = data.episode_requests[self._ep_start[rows]]
        self._history[rows] = data.initial_history[data.log.request_user[first]]
        self._start_requests(rows)

    def _start_requests(self, rows: np.ndarray) -> None:
        data, cfg = self.data, self.config
        req = data.episode_requests[self._ep_start[rows] + self._j[rows]]
        self._req[rows] = req
        self._cand[rows] = data.candidates[req]
        if self._needs_state:
            profile = None
            if cfg.profile_weight > 0:
                profile = data.encoded.user_profiles[data.log.request_user[req]]
            self._state[rows] = pool_user_state(
                data.encoded.items, self._history[rows], method=cfg.pooling, decay=cfg.decay,
                k=cfg.last_k, profile=profile, profile_weight=cfg.profile_weight,
            )  # fmt: skip
        state = self._state[rows] if data.model.needs_user_state else None
        self._attr[rows] = data.request_attractiveness(req, state)
        self._slate_len[rows] = 1 if cfg.action_mode == "top1" else data.slate_len[req]
        self._placed[rows] = False
        self._pos[rows] = 0
        self._examined[rows] = 1.0
        self._examining[rows] = True
        self._invalid[rows] = 0
        self._row_version[rows] += 1

    def _valid(self) -> np.ndarray:
        return (self._cand >= 0) & ~self._placed

    def _place(self, a: np.ndarray, active: np.ndarray | None) -> np.ndarray:
        """Place candidate ``a[i]`` at the next position of each (active) sub-env."""
        model = self.data.model
        rows = self._rows if active is None else np.flatnonzero(active)
        a = a[rows] if active is not None else a
        valid = self._valid()[rows]
        inside = (a >= 0) & (a < valid.shape[1])
        ok = inside & valid[np.arange(len(rows)), np.where(inside, a, 0)]
        a = np.where(ok, a, np.argmax(valid, axis=1))
        self._invalid[rows] += ~ok
        pos = self._pos[rows]
        attr = self._attr[rows, a]
        p, self._examined[rows] = slot_click_prob(attr, pos, self._examined[rows], model)
        key, ep, j = self._key[rows], self._episode_no[rows], self._j[rows]
        u = uniform(key, counter(ep, j, pos, STREAM_CLICK))
        v = uniform(key, counter(ep, j, pos, STREAM_CONTINUE))
        click, self._examining[rows] = sample_slot_click(
            attr, pos, self._examining[rows], u, v, model
        )
        self._placed[rows, a] = True
        self._slate[rows, pos] = a
        self._clicks[rows, pos] = click
        self._probs[rows, pos] = p
        self._pos[rows] += 1
        out = np.zeros(self.num_envs)
        out[rows] = p if self.config.reward == "expected" else click.astype(np.float64)
        return out

    def _finish_requests(self, rows: np.ndarray, infos: list[dict[str, Any]]) -> None:
        width = self._slate_len[rows]
        cols = np.arange(self._slate.shape[1])
        filled = cols[None, :] < width[:, None]
        slate_items = np.take_along_axis(self._cand[rows], self._slate[rows], axis=1)
        clicked = np.where(filled & (self._clicks[rows] == 1), slate_items, -1)
        self._history[rows] = append_history(self._history[rows], clicked)
        if not self.request_infos:
            return
        scores = ndcg_batch(self._attr[rows], self._slate[rows], self._cand[rows] >= 0, width)
        probs, clicks = self._probs[rows], self._clicks[rows]  # fresh arrays: infos hold views
        expected = np.where(filled, probs, 0.0).sum(axis=1)
        requests, invalid = self._req[rows].tolist(), self._invalid[rows].tolist()
        for n, i in enumerate(rows.tolist()):
            s = int(width[n])
            infos[i].update(
                {
                    "request": requests[n],
                    "slate": slate_items[n, :s],
                    "clicks": clicks[n, :s],
                    "click_probs": probs[n, :s],
                    "expected_clicks": float(expected[n]),
                    "ndcg": float(scores[n]),
                    "invalid_actions": invalid[n],
                    "episode_id": int(self._episode[i]),
                    "queued": bool(self._queued[i]),
                }
            )

    def _observation(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Observations of all sub-envs, or of ``rows`` only (terminal observations)."""
        sel = slice(None) if rows is None else rows
        req, cand = self._req[sel], self._cand[sel]
        valid = (cand >= 0) & ~self._placed[sel]
        mask = (valid & (self._pos[sel] < self._slate_len[sel])[:, None]).astype(np.float32)
        position = self._pos[sel].astype(np.float32)[:, None]
        log = self.data.log
        if self.config.obs_mode == "ids":
            return {
                "query": log.request_query[req].astype(np.int32)[:, None],
                "user": self._history[sel].astype(np.int32),
                "candidates": cand.astype(np.int32),
                "mask": mask,
                "position": position,
            }
        # terminal observations (rows given) are kept by callers: a copy, not a ring buffer
        vectors = self._next_ring_buffer() if rows is None else self._gather(cand).copy()
        return {
            "query": self.data.encoded.queries[log.request_query[req]].astype(np.float32),
            "user": self._state[sel].copy(),
            "candidates": vectors,
            "mask": mask,
            "position": position,
        }

    def _gather(self, cand: np.ndarray) -> np.ndarray:
        """``float32[n, K * d]`` embeddings of candidate codes, gathered on ``device``.

        The gather writes into a preallocated scratch tensor: the returned array is a view of
        it, valid until the next gather.
        """
        codes = torch.as_tensor(cand.reshape(-1), device=self.device)
        codes = torch.where(codes >= 0, codes, len(self._items) - 1)
        out = self._scratch[: len(codes)]
        torch.index_select(self._items, 0, codes, out=out)
        return out.reshape(len(cand), -1).cpu().numpy()

    def _next_ring_buffer(self) -> np.ndarray:
        """The next ring buffer, with the rows whose candidates changed re-gathered."""
        i = self._ring_next
        self._ring_next = (i + 1) % RING
        stale = np.flatnonzero(self._ring_version[i] != self._row_version)
        if len(stale):
            self._ring[i][stale] = self._gather(self._cand[stale])
            self._ring_version[i, stale] = self._row_version[stale]
        return self._ring[i]


def _gym_rng(seed: int) -> np.random.Generator:
    """The generator Gymnasium builds for ``reset(seed=seed)``."""
    from gymnasium.utils import seeding

    return seeding.np_random(seed)[0]
