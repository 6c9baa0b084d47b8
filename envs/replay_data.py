"""What the single and the batched replay environments share: options, tables and randomness.

Both environments replay the same :class:`ReplayData` (candidates, attractiveness, initial user
histories, embedding tables), and both draw their random numbers from :func:`uniform`, a
counter-based generator (splitmix64 of a per-env key and an event counter). A key comes from
``np_random`` when the env is seeded, so an env seeded with ``s`` and sub-env ``i`` of a batched
env seeded with ``s - i`` see exactly the same numbers, whatever order they are drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encoders.encoded_log import EncodedLog
from encoders.pooling import POOLING_METHODS, pad_histories
from envs.click_models.base import MAX_POSITIONS, ClickModel
from envs.logs import SessionLog

ACTION_MODES = ("slot", "scores", "top1")
OBS_MODES = ("embeddings", "ids")
REWARDS = ("expected", "sampled")
EPISODES = ("session", "user")


@dataclass(frozen=True)
class ReplayConfig:
    """Options of the replay environments (``conf/env/*.yaml``).

    Args:
        max_candidates: ``K``, candidates per request. Shorter requests are padded (masked);
            longer ones keep their first ``K`` items in logged order (the logging ranker's top K,
            the items most likely examined, so the click evidence stays).
        slate_size: positions to fill per request (``<= K``); requests with fewer candidates fill
            as many as they have.
        action_mode: ``slot`` (``Discrete(K)``: one step per position), ``scores`` (``Box(K)``:
            one step per request, the slate is the top scores), ``top1`` (one item per request).
        obs_mode: ``embeddings`` (vectors) or ``ids`` (integer codes; the tables are
            ``env.embedding_tables``, held once by the policy).
        reward: ``expected`` clicks (the click probability of each placed item) or ``sampled``.
        episode: ``session`` (one logged session) or ``user`` (all of a user's requests in time
            order).
        history_len: user-history items kept for the user state (most recent).
        pooling, decay, last_k: user-state pooling (``encoders.pooling``).
        profile_weight: weight of the user's profile text in the state (embeddings mode).
    """

    max_candidates: int = 20
    slate_size: int = 10
    action_mode: str = "slot"
    obs_mode: str = "embeddings"
    reward: str = "expected"
    episode: str = "session"
    history_len: int = 20
    pooling: str = "mean"
    decay: float = 0.8
    last_k: int = 5
    profile_weight: float = 0.0

    def __post_init__(self) -> None:
        choices = {
            "action_mode": ACTION_MODES,
            "obs_mode": OBS_MODES,
            "reward": REWARDS,
            "episode": EPISODES,
            "pooling": POOLING_METHODS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"env.{key}={getattr(self, key)!r}; allowed: {', '.join(allowed)}")
        if not 1 <= self.max_candidates <= MAX_POSITIONS:
            raise ValueError(
                f"env.max_candidates={self.max_candidates}; allowed: 1..{MAX_POSITIONS}"
            )
        if not 1 <= self.slate_size <= self.max_candidates:
            raise ValueError(
                f"env.slate_size={self.slate_size}; allowed: 1..max_candidates "
                f"({self.max_candidates})"
            )
        if self.history_len < 1:
            raise ValueError(f"env.history_len={self.history_len}; allowed: >= 1")
        if not 0 < self.decay <= 1:
            raise ValueError(f"env.decay={self.decay}; allowed: (0, 1]")
        if self.last_k < 1:
            raise ValueError(f"env.last_k={self.last_k}; allowed: >= 1")
        if not 0 <= self.profile_weight <= 1:
            raise ValueError(f"env.profile_weight={self.profile_weight}; allowed: [0, 1]")
        if self.obs_mode == "ids" and self.profile_weight > 0:
            raise ValueError("env.profile_weight > 0 needs obs_mode=embeddings")

    @property
    def steps_per_request(self) -> int:
        """Env steps per request at most (slot mode fills one position per step)."""
        return self.slate_size if self.action_mode == "slot" else 1


class ReplayData:
    """Precomputed tables for replaying ``log`` under a click model.

    Attributes:
        candidates: ``int64[R, K]`` item codes, ``-1`` padding.
        n_valid: ``int64[R]`` real candidates per request.
        slate_len: ``int64[R]`` positions filled per request: ``min(slate_size, n_valid)``.
        attractiveness: ``float64[R, K]`` (``None`` when the model needs the user state; it is
            then computed when a request starts).
        episode_offsets, episode_requests: episodes as CSR ranges of request codes.
        initial_history: ``int64[U, H]`` each user's pre-log history, right-aligned.
    """

    def __init__(
        self, log: SessionLog, encoded: EncodedLog, model: ClickModel, config: ReplayConfig
    ) -> None:
        encoded.check(log)
        model.bind(log)
        self.log, self.encoded, self.model, self.config = log, encoded, model, config
        k = config.max_candidates
        sizes = log.request_sizes
        self.n_valid = np.minimum(sizes, k).astype(np.int64)
        self.slate_len = np.minimum(self.n_valid, config.slate_size)
        slot = np.arange(log.n_impressions) - np.repeat(log.request_offsets[:-1], sizes)
        keep = slot < k
        self.candidates = np.full((log.n_requests, k), -1, dtype=np.int64)
        self.candidates[log.impression_request[keep], slot[keep]] = log.item[keep]
        self.attractiveness = (
            None
            if model.needs_user_state
            else model.attractiveness(np.arange(log.n_requests), self.candidates)
        )
        if config.episode == "session":
            self.episode_offsets = log.session_offsets.astype(np.int64)
            self.episode_requests = np.arange(log.n_requests, dtype=np.int64)
        else:
            order = np.lexsort((log.request_timestamp, log.request_user))
            counts = np.bincount(log.request_user, minlength=log.n_users)
            counts = counts[counts > 0]
            self.episode_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            self.episode_requests = order.astype(np.int64)
        self.n_episodes = len(self.episode_offsets) - 1
        self.initial_history = pad_histories(
            log.user_history_offsets, log.user_history_items, config.history_len
        )

    def request_attractiveness(
        self, requests: np.ndarray, user_state: np.ndarray | None
    ) -> np.ndarray:
        """``float64[B, K]`` attractiveness of the candidates of ``requests``."""
        if self.attractiveness is not None:
            return self.attractiveness[requests]
        return self.model.attractiveness(requests, self.candidates[requests], user_state)


# ---------------------------------------------------------------------- randomness
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
STREAM_EPISODE, STREAM_CLICK, STREAM_CONTINUE = 0, 1, 2


def counter(
    episode: np.ndarray, request: np.ndarray, position: np.ndarray, stream: int
) -> np.ndarray:
    """A unique uint64 event id (episode < 2^32, request < 2^16, position < 2^8, stream < 4)."""
    e = np.asarray(episode, dtype=np.uint64) << np.uint64(26)
    r = np.asarray(request, dtype=np.uint64) << np.uint64(10)
    p = np.asarray(position, dtype=np.uint64) << np.uint64(2)
    return e | r | p | np.uint64(stream)


def uniform(key: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from (key, event) pairs: splitmix64, vectorised, stateless."""
    with np.errstate(over="ignore"):
        z = np.asarray(key, dtype=np.uint64) + (np.asarray(event, dtype=np.uint64) + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def new_key(rng: np.random.Generator) -> np.uint64:
    """Draw an env's random key from its ``np_random``."""
    return np.uint64(rng.integers(0, 2**63, dtype=np.int64))


def append_history(history: np.ndarray, new_items: np.ndarray) -> np.ndarray:
    """Append items (``-1`` = nothing) to right-aligned histories, keeping the last ``H``.

    Args:
        history: ``int64[B, H]``, ``-1`` padding on the left.
        new_items: ``int64[B, S]`` in the order they happened.
    """
    both = np.concatenate([history, new_items], axis=1)
    order = np.argsort(both >= 0, axis=1, kind="stable")  # padding first, items keep their order
    return np.take_along_axis(both, order, axis=1)[:, -history.shape[1] :]
