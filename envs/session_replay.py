"""SessionReplayEnv: a Gymnasium environment that replays logged sessions under a click model."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from encoders.encoded_log import EncodedLog
from encoders.pooling import pool_user_state
from envs.click_models.base import ClickModel, sample_slot_click, slot_click_prob
from envs.logs import SessionLog
from envs.replay_data import (
    STREAM_CLICK,
    STREAM_CONTINUE,
    STREAM_EPISODE,
    ReplayConfig,
    ReplayData,
    append_history,
    counter,
    new_key,
    uniform,
)


class SessionReplayEnv(gym.Env):
    """Rank the candidates of logged requests; a click model says how the user responds.

    ## Description

    An episode replays one logged session (or, with ``episode="user"``, all of a user's requests
    in time order). Each request shows up to ``K`` logged candidates; the agent orders them into
    a slate of ``slate_size`` positions, and the click model (``logged``, ``pbm``, ``cascade``,
    ``dcm``, ``neural`` or the synthetic ``truth``) gives the probability of a click at every
    position. Clicks are appended to the user's history, so the user state of the next request
    depends on what the agent showed before.

    ## Action Space

    * ``slot`` (default): ``Discrete(K)``, the candidate for the next position. Placed or padded
      candidates are invalid: the env then places the first valid candidate instead (a
      documented fallback, counted in ``info["invalid_actions"]``), so random agents and env
      checkers can run; masked policies never trigger it.
    * ``scores``: ``Box(-1, 1, (K,))``, the slate is the valid candidates with the highest
      scores (ties: lower index first); one step per request.
    * ``top1``: ``Discrete(K)``, one item per request (a slate of one).

    ## Observation Space

    A flat ``Dict`` of ``Box`` es. In ``embeddings`` mode: ``query`` ``(d,)``, ``user`` ``(d,)``
    (pooled from the user's history, optionally mixed with the profile), ``candidates``
    ``(K * d,)`` (the ``K x d`` candidate matrix row-major, zeros for padding; flat because SB3
    warns about 2-D non-image observations; reshape with ``.view(-1, K, d)``), ``mask``
    ``(K,)`` (1 = can be placed now), ``position`` ``(1,)``. In ``ids`` mode the same keys
    hold integer codes: ``query`` ``(1,)``, ``user``
    ``(H,)`` history item codes (``-1`` padding, most recent last), ``candidates`` ``(K,)``;
    the tables are ``env.embedding_tables``. (The key is ``candidates``, not ``items``, which
    clashes with SB3's ``MultiInputPolicy``.)

    ## Rewards

    Per placed slot: its expected click probability given the items above it (``expected``,
    default) or a sampled click (``sampled``). Clicks are always sampled (from the env's
    random key) to update the user's history; in ``expected`` mode they do not change rewards.

    ## Starting State

    A session drawn uniformly from the log (``reset(options={"episode": i})`` picks one), the
    user's pre-log history as the initial state.

    ## Episode End

    Terminated after the last position of the episode's last request. Never truncated.

    ## Arguments

    ``log``, ``encoded`` (its :class:`EncodedLog`), ``model`` (a :class:`ClickModel`),
    ``config`` (:class:`ReplayConfig`). ``info`` after each finished request carries
    ``request``, ``slate`` (item codes), ``clicks``, ``click_probs``, ``expected_clicks`` and
    ``ndcg`` (of the slate against the click model's attractiveness).
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - Gymnasium's convention

    def __init__(
        self,
        log: SessionLog,
        encoded: EncodedLog,
        model: ClickModel,
        config: ReplayConfig | None = None,
    ) -> None:
        self.config = config or ReplayConfig()
        self.render_mode = None
        self.data = ReplayData(log, encoded, model, self.config)
        cfg, k = self.config, self.config.max_candidates
        self.embedding_tables = {
            "items": encoded.items,
            "queries": encoded.queries,
            "user_profiles": encoded.user_profiles,
        }
        if cfg.obs_mode == "embeddings":
            d = encoded.dim
            bound = float(
                np.ceil(max(np.abs(t).max() for t in self.embedding_tables.values()) + 1e-6)
            )
            vec = lambda *shape: spaces.Box(-bound, bound, shape, np.float32)  # noqa: E731
            self.observation_space = spaces.Dict(
                {"query": vec(d), "user": vec(d), "candidates": vec(k * d),
                 "mask": spaces.Box(0, 1, (k,), np.float32),
                 "position": spaces.Box(0, cfg.slate_size, (1,), np.float32)}
            )  # fmt: skip
        else:
            ints = lambda n, high: spaces.Box(-1, max(high - 1, 0), (n,), np.int32)  # noqa: E731
            self.observation_space = spaces.Dict(
                {"query": ints(1, len(log.query_texts)),
                 "user": ints(cfg.history_len, log.n_items),
                 "candidates": ints(k, log.n_items),
                 "mask": spaces.Box(0, 1, (k,), np.float32),
                 "position": spaces.Box(0, cfg.slate_size, (1,), np.float32)}
            )  # fmt: skip
        if cfg.action_mode == "scores":
            self.action_space = spaces.Box(-1, 1, (k,), np.float32)
        else:
            self.action_space = spaces.Discrete(k)
        self._key: np.uint64 | None = None
        self._episodes_started = 0

    # ------------------------------------------------------------------ Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode: a random session, or ``options["episode"]``."""
        super().reset(seed=seed)
        if seed is not None or self._key is None:
            self._key = new_key(self.np_random)
            self._episodes_started = 0
        data = self.data
        if options and "episode" in options:
            episode = int(options["episode"])
            if not 0 <= episode < data.n_episodes:
                raise ValueError(f"episode {episode} out of range 0..{data.n_episodes - 1}")
        else:
            u = uniform(self._key, counter(self._episodes_started, 0, 0, STREAM_EPISODE))
            episode = int(u * data.n_episodes)
        self._episode_no = self._episodes_started
        self._episode = episode
        self._episodes_started += 1
        start, end = data.episode_offsets[episode], data.episode_offsets[episode + 1]
        self._requests = data.episode_requests[start:end]
        self._history = data.initial_history[data.log.request_user[self._requests[0]]].copy()
        self._j = 0
        self._start_request()
        return self._observation(), {"episode_id": episode, "requests": len(self._requests)}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Place one candidate (``slot``) or a whole slate (``scores``, ``top1``)."""
        mode = self.config.action_mode
        if mode == "slot" or mode == "top1":
            reward = self._place(int(action))
        else:
            scores = np.asarray(action, dtype=np.float64).reshape(-1)
            valid = self._valid()
            order = np.lexsort((np.arange(len(scores)), -np.where(valid, scores, -np.inf)))
            reward = sum(self._place(int(a)) for a in order[: self._slate_len])
        info: dict[str, Any] = {}
        terminated = False
        if self._pos == self._slate_len:
            info = self._finish_request()
            self._j += 1
            if self._j == len(self._requests):
                terminated = True
            else:
                self._start_request()
        return self._observation(), float(reward), terminated, False, info

    # ------------------------------------------------------------------ internals
    def _user_state(self) -> np.ndarray:
        cfg, items = self.config, self.data.encoded.items
        profile = None
        if cfg.profile_weight > 0:
            user = self.data.log.request_user[self._request]
            profile = self.data.encoded.user_profiles[user][None]
        return pool_user_state(
            items, self._history[None], method=cfg.pooling, decay=cfg.decay, k=cfg.last_k,
            profile=profile, profile_weight=cfg.profile_weight,
        )[0]  # fmt: skip

    def _start_request(self) -> None:
        data, r = self.data, int(self._requests[self._j])
        self._request = r
        self._state = self._user_state()
        state = self._state[None] if data.model.needs_user_state else None
        self._attr = data.request_attractiveness(np.array([r]), state)[0]
        self._slate_len = 1 if self.config.action_mode == "top1" else int(data.slate_len[r])
        self._placed = np.zeros(self.config.max_candidates, dtype=bool)
        self._pos, self._examined, self._examining = 0, 1.0, True
        self._slate: list[int] = []
        self._clicks: list[int] = []
        self._probs: list[float] = []
        self._invalid = 0

    def _valid(self) -> np.ndarray:
        return (self.data.candidates[self._request] >= 0) & ~self._placed

    def _place(self, a: int) -> float:
        model, pos = self.data.model, self._pos
        valid = self._valid()
        if not 0 <= a < len(valid) or not valid[a]:
            a = int(np.argmax(valid))
            self._invalid += 1
        attr = float(self._attr[a])
        p, examined = slot_click_prob(
            np.array([attr]), np.array([pos]), np.array([self._examined]), model
        )
        self._examined = float(examined[0])
        u = uniform(self._key, counter(self._episode_no, self._j, pos, STREAM_CLICK))
        v = uniform(self._key, counter(self._episode_no, self._j, pos, STREAM_CONTINUE))
        clicked, examining = sample_slot_click(
            np.array([attr]), np.array([pos]), np.array([self._examining]), u, v, model
        )
        click, self._examining = bool(clicked[0]), bool(examining[0])
        self._placed[a] = True
        self._slate.append(a)
        self._clicks.append(int(click))
        self._probs.append(float(p[0]))
        self._pos += 1
        return float(p[0]) if self.config.reward == "expected" else float(click)

    def _finish_request(self) -> dict[str, Any]:
        cand = self.data.candidates[self._request]
        slate = np.array(self._slate)
        clicks = np.array(self._clicks)
        clicked = np.where(clicks == 1, cand[slate], -1)
        self._history = append_history(self._history[None], clicked[None])[0]
        return {
            "request": self._request,
            "slate": cand[slate],
            "clicks": clicks,
            "click_probs": np.array(self._probs),
            "expected_clicks": float(np.sum(self._probs)),
            "ndcg": ndcg(self._attr, slate, cand >= 0),
            "invalid_actions": self._invalid,
            "episode_id": self._episode,
            "queued": False,
        }

    def _observation(self) -> dict[str, np.ndarray]:
        cand = self.data.candidates[self._request]
        mask = self._valid() if self._pos < self._slate_len else np.zeros_like(self._placed)
        position = np.array([self._pos], dtype=np.float32)
        if self.config.obs_mode == "ids":
            query = self.data.log.request_query[self._request]
            return {
                "query": np.array([query], dtype=np.int32),
                "user": self._history.astype(np.int32),
                "candidates": cand.astype(np.int32),
                "mask": mask.astype(np.float32),
                "position": position,
            }
        items = self.data.encoded.items
        vectors = np.where((cand >= 0)[:, None], items[np.maximum(cand, 0)], 0.0)
        query = self.data.encoded.queries[self.data.log.request_query[self._request]]
        return {
            "query": query.astype(np.float32),
            "user": self._state.astype(np.float32),
            "candidates": vectors.astype(np.float32).reshape(-1),
            "mask": mask.astype(np.float32),
            "position": position,
        }


def ndcg(relevance: np.ndarray, slate: np.ndarray, valid: np.ndarray) -> float:
    """NDCG of one slate (candidate indices in order) against candidate relevance."""
    return float(ndcg_batch(relevance[None], slate[None], valid[None], np.array([len(slate)]))[0])


def ndcg_batch(
    relevance: np.ndarray, slates: np.ndarray, valid: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """NDCG of many slates at once.

    Args:
        relevance: ``float[n, K]`` candidate relevance (the click model's attractiveness).
        slates: ``int[n, S]`` candidate indices in display order (only the first ``lengths``
            entries of a row count).
        valid: ``bool[n, K]`` real (non-padding) candidates.
        lengths: ``int[n]`` slate lengths.

    The ideal is the best ordering of the valid candidates for the same slate length; 0 when
    no candidate has positive relevance.
    """
    width = slates.shape[1]
    discount = 1.0 / np.log2(np.arange(width) + 2.0)
    filled = np.arange(width)[None, :] < lengths[:, None]
    gains = np.take_along_axis(relevance, slates, axis=1)
    dcg = (np.where(filled, gains, 0.0) * discount).sum(axis=1)
    ideal = -np.sort(-np.where(valid, relevance, 0.0), axis=1)
    ideal = np.pad(ideal, ((0, 0), (0, max(0, width - ideal.shape[1]))))[:, :width]
    idcg = (np.where(filled, ideal, 0.0) * discount).sum(axis=1)
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)


# ---------------------------------------------------------------------- registered worlds
@functools.lru_cache(maxsize=4)
def synthetic_world(
    seed: int = 0, scale: float = 1.0, encoder: str = "hashing"
) -> tuple[SessionLog, EncodedLog, Any]:
    """A synthetic world, its embeddings and ground truth, cached per process."""
    from encoders.encoded_log import encode_log
    from envs.logs.synthetic import SyntheticWorld

    log, truth = SyntheticWorld(seed=seed, scale=scale).generate()
    if encoder == "hashing":
        from encoders.hashing import HashingEncoder

        text_encoder = HashingEncoder()
    elif encoder == "minilm":
        from encoders.transformer import TransformerEncoder

        text_encoder = TransformerEncoder(progress=False)
    elif encoder == "tiny":
        from encoders.tiny import tiny_bert_encoder

        text_encoder = tiny_bert_encoder()
    else:
        raise ValueError(f"encoder={encoder!r}; allowed: hashing, minilm, tiny")
    return log, encode_log(log, text_encoder, progress=False), truth


def make_synthetic_env(
    world_seed: int = 0, scale: float = 1.0, encoder: str = "hashing", **options: Any
) -> SessionReplayEnv:
    """``rankgym/SessionReplay-v0``: the synthetic world under its ground-truth click model.

    Keyword options are :class:`ReplayConfig` fields (``slate_size=5``, ``obs_mode="ids"``...).
    """
    from envs.click_models.simple import TruthClickModel

    allowed = set(asdict(ReplayConfig()))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown env option(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    log, encoded, truth = synthetic_world(world_seed, scale, encoder)
    return SessionReplayEnv(log, encoded, TruthClickModel(truth=truth), ReplayConfig(**options))
