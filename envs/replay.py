"""The replay engine: the state machine that replays logged sessions under a click model.

It is written once, for a batch of ``B >= 1`` sessions stepped together in array operations.
:class:`~rankgym.envs.session_replay.SessionReplayEnv` (Gymnasium) is a batch of one and
:class:`~rankgym.envs.vector.BatchedReplayEnv` (an SB3 ``VecEnv``) a batch of many; both are thin
adapters that add their API (seeding, auto-reset, infos), so "batched == single" holds by
construction.

* :class:`ReplayConfig`: the options (``conf/env/*.yaml``).
* :class:`ReplayData`: what replaying a log needs, computed once: candidates, the reward model's
  per-log context, episodes, initial histories and the spaces.
* :class:`ReplayEngine`: the batch state (which request, what is placed, who still examines,
  each user's history and pooled state) and one :meth:`ReplayEngine.step`.

Randomness is counter-based: every random number is splitmix64 of a per-row key and an event id
(episode, request, position, stream), so a row's numbers do not depend on the batch around it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from rankgym.encoders.encoded_log import EncodedLog
from rankgym.encoders.hashing import splitmix64
from rankgym.encoders.pooling import POOLING_METHODS, UserPooling, append_history, pad_histories
from rankgym.envs.click_models.base import (
    MAX_POSITIONS,
    ClickModel,
    LogContext,
    sample_slot_click,
    slot_click_prob,
)
from rankgym.envs.metrics import ndcg_batch
from rankgym.envs.sequential import UserFlow
from rankgym.logs import SessionLog

ACTION_MODES = ("slot", "scores", "top1")
OBS_MODES = ("embeddings", "ids")
REWARDS = ("expected", "sampled")
EPISODES = ("session", "user")
USER_CHOICES = ("expected", "sampled")
RING = 2  # a batched observation's candidates array stays valid for RING - 1 further steps
MAX_CANDIDATES = 256  # K: candidates per request (OBD's largest catalog is 80; positions: 64)
SMALL_GATHER = 256  # candidate rows up to which numpy gathers faster than torch on the CPU


@dataclass(frozen=True)
class ReplayConfig:
    """Options of the replay environments (``conf/env/*.yaml``).

    Args:
        max_candidates: ``K``, candidates per request (at most 256). Shorter requests are
            padded (masked); longer ones keep their first ``K`` candidates: shown items in logged
            order first (the logging ranker's top, so the click evidence stays), then unshown
            ones; a request with unshown candidates lists the kept ones by item code
            (``SessionLog.candidate_matrix``).
        slate_size: positions to fill per request (``<= K``); requests with fewer candidates fill
            as many as they have.
        action_mode: ``slot`` (``Discrete(K)``: one step per position), ``scores`` (``Box(K)``:
            one step per request, the slate is the top scores), ``top1`` (one item per request).
        obs_mode: ``embeddings`` (vectors) or ``ids`` (integer codes and the pooling weights of
            the history; the tables are ``env.embedding_tables``, held once by the policy).
        reward: ``expected`` clicks (the click probability of each placed item) or ``sampled``.
        episode: ``session`` (one logged session) or ``user`` (all of a user's requests in time
            order).
        user_choices: in a sequential world (a reward model with dynamics), whether users
            continue and return ``expected`` (the episode walks the whole latent timeline and
            each request's clicks are weighted by the chance the user got there: long-term
            values with no sampling noise) or ``sampled`` (drawn; the episode ends when the
            user leaves). No effect in a bandit world (:mod:`rankgym.envs.sequential`).
        history_len: user-history items kept for the user state (most recent).
        pooling, decay, last_k: user-state pooling (``rankgym.encoders.pooling``); they reach the
            observation, the baselines and click models that read the user state.
        profile_weight: weight of the user's profile text in the state (embeddings mode: an
            ``ids`` observation carries item codes only).
        features: put the dataset's item and user feature tables in the observation
            (``EncodedLog.item_features`` / ``user_features``; no effect without feature
            columns): ``embeddings`` observations get ``candidate_features`` and
            ``user_features`` (the history's item features pooled as the text state is, then
            the user's own), ``ids`` observations the tables in ``embedding_tables``. Both
            modes carry the user's code, ``user_id``.
        user_profile: the embedding of the user's profile text (``users.parquet``'s ``text``)
            joins the user's own features (after the feature columns, with or without
            ``features``; a log without profile texts adds nothing): what the user says they
            like, which a short history shows only in part. A ranker exported from such a
            policy looks it up by ``user_id``. Off here, on in ``conf/env/default.yaml``.
    """

    max_candidates: int = 20
    slate_size: int = 10
    action_mode: str = "slot"
    obs_mode: str = "embeddings"
    reward: str = "expected"
    episode: str = "session"
    user_choices: str = "expected"
    history_len: int = 20
    pooling: str = "mean"
    decay: float = 0.8
    last_k: int = 5
    profile_weight: float = 0.0
    features: bool = True
    user_profile: bool = False

    def valued(self) -> ReplayConfig:
        """These options with the users' choices ``expected``: what policies are valued
        under. A sequential world's values are the expected walk's, however training drew
        the users, so a run's own figures and a later ``rankgym evaluate`` of it agree."""
        return replace(self, user_choices="expected")

    def __post_init__(self) -> None:
        choices = {
            "action_mode": ACTION_MODES,
            "obs_mode": OBS_MODES,
            "reward": REWARDS,
            "episode": EPISODES,
            "user_choices": USER_CHOICES,
            "pooling": POOLING_METHODS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"env.{key}={getattr(self, key)!r}; allowed: {', '.join(allowed)}")
        if not 1 <= self.max_candidates <= MAX_CANDIDATES:
            raise ValueError(
                f"env.max_candidates={self.max_candidates}; allowed: 1..{MAX_CANDIDATES}"
            )
        top = min(self.max_candidates, MAX_POSITIONS)
        if not 1 <= self.slate_size <= top:
            raise ValueError(
                f"env.slate_size={self.slate_size}; allowed: 1..{top} (max_candidates "
                f"{self.max_candidates}, at most {MAX_POSITIONS} positions)"
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
            raise ValueError(
                f"env.profile_weight={self.profile_weight} needs env.obs_mode=embeddings (ids "
                "observations carry item codes, not the profile); allowed with ids: 0"
            )
        defaults = {f.name: f.default for f in fields(self)}
        for key in ("decay", "last_k"):  # set away from its default, it must have an effect
            if self.pooling != key and getattr(self, key) != defaults[key]:
                raise ValueError(
                    f"env.{key}={getattr(self, key)} is used only by env.pooling={key}"
                )

    @property
    def user_pooling(self) -> UserPooling:
        """The user-state pooling these options describe."""
        return UserPooling(
            self.history_len, self.pooling, self.decay, self.last_k, self.profile_weight
        )


def user_feature_table(encoded: EncodedLog, config: ReplayConfig) -> np.ndarray:
    """``float32[U, F]``: the user's own features an observation carries under ``config``: the
    dataset's user feature columns (``features``), then the profile text's embedding
    (``user_profile``; not for a log without profile texts, such as OBD, whose profiles are
    all zero). ``[0, 0]`` when it carries none."""
    parts = [encoded.user_features] if config.features else []
    if config.user_profile and encoded.user_profiles.any():
        parts.append(encoded.user_profiles)
    parts = [p for p in parts if p.shape[1]]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)


class ReplayData:
    """What replaying ``log`` under ``model`` needs, computed once (shared by every row).

    Attributes:
        candidates: ``int64[R, K]`` item codes, ``-1`` padding.
        slate_len: ``int64[R]`` positions filled per request: ``min(slate_size, candidates)``.
        context: the reward model's :class:`LogContext` for ``log``.
        attractiveness: ``float64[R, K]`` (``None`` when the model needs the user state; it is
            then computed when a request starts).
        episode_offsets, episode_requests: episodes as CSR ranges of request codes.
        initial_history: ``int64[U, H]`` each user's pre-log history, right-aligned.
        embedding_tables: ``items``, ``queries``, ``user_profiles`` (what ``ids`` codes index),
            plus ``item_features`` / ``user_features`` when the observation carries features.
        item_features, user_features: the feature tables the observation carries
            (``[n, 0]`` without features or with ``features=False``).
        observation_space, action_space: the spaces of one row.
    """

    def __init__(
        self, log: SessionLog, encoded: EncodedLog, model: ClickModel, config: ReplayConfig
    ) -> None:
        encoded.check(log)
        model.check_replay(config.user_pooling)
        self.log, self.encoded, self.model, self.config = log, encoded, model, config
        self.context: LogContext = model.context(log)
        k = config.max_candidates
        sizes = log.candidate_sizes
        self.slate_len = np.minimum(np.minimum(sizes, k), config.slate_size).astype(np.int64)
        self.candidates = log.candidate_matrix(k)
        self.attractiveness = (
            None
            if model.needs_history
            else model.attractiveness(self.context, np.arange(log.n_requests), self.candidates)
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
        # a sequential world's dynamics end sessions early and decide whether users return
        self.dynamics = model.user_dynamics()
        if self.dynamics is not None:
            self._session_structure(log)
        self.initial_history = pad_histories(
            log.user_history_offsets, log.user_history_items, config.history_len
        )
        self.embedding_tables = {
            "items": encoded.items,
            "queries": encoded.queries,
            "user_profiles": encoded.user_profiles,
        }
        none = np.zeros((0, 0), dtype=np.float32)
        self.item_features = encoded.item_features if config.features else none
        self.user_features = user_feature_table(encoded, config)
        if self.item_features.shape[1]:
            self.embedding_tables["item_features"] = self.item_features
        if self.user_features.shape[1]:
            self.embedding_tables["user_features"] = self.user_features
        self.observation_space = self._observation_space()
        self.action_space: spaces.Space = (
            spaces.Box(-1, 1, (k,), np.float32)
            if config.action_mode == "scores"
            else spaces.Discrete(k)
        )

    def _session_structure(self, log: SessionLog) -> None:
        """Per episode request: where its session's next request and the episode's next
        session start (``next_in_session``, ``next_session``: positions within the episode,
        ``-1`` where there is none)."""
        reqs = self.episode_requests
        n = len(reqs)
        sess = log.request_session[reqs]
        episode = np.repeat(np.arange(self.n_episodes), np.diff(self.episode_offsets))
        local = np.arange(n) - self.episode_offsets[episode]
        last = np.ones(n, dtype=bool)
        last[:-1] = (sess[1:] != sess[:-1]) | (episode[1:] != episode[:-1])
        self.next_in_session = np.where(last, -1, local + 1)
        self.session_start = np.concatenate([[True], last[:-1]])
        # the first request of the following session of the same episode
        starts = np.flatnonzero(self.session_start)
        after = np.searchsorted(starts, np.arange(n), side="right")
        nxt = starts[np.minimum(after, len(starts) - 1)]
        found = (after < len(starts)) & (episode[nxt] == episode)
        next_start = np.where(found, nxt, -1)
        self.next_session = np.where(
            next_start >= 0, next_start - self.episode_offsets[episode], -1
        )

    def _observation_space(self) -> spaces.Dict:
        cfg, log, k = self.config, self.log, self.config.max_candidates
        ints = lambda n, high: spaces.Box(-1, max(high - 1, 0), (n,), np.int32)  # noqa: E731
        # the user's code: what a policy's learned per-user vector (or feature row) is read by
        user_id = ints(1, log.n_users)
        common = {
            "mask": spaces.Box(0, 1, (k,), np.float32),
            "position": spaces.Box(0, cfg.slate_size, (1,), np.float32),
        }
        if cfg.obs_mode == "embeddings":
            bound = float(
                np.ceil(
                    max(
                        np.abs(self.embedding_tables[n]).max()
                        for n in ("items", "queries", "user_profiles")
                    )
                    + 1e-6
                )
            )
            d = self.encoded.dim
            vec = lambda *shape: spaces.Box(-bound, bound, shape, np.float32)  # noqa: E731
            feats = {}
            fi, fu = self.item_features.shape[1], self.user_features.shape[1]
            # user_features: the history's pooled item features, then the user's own
            for key, tables, n in (
                ("candidate_features", [self.item_features], k * fi),
                ("user_features", [self.item_features, self.user_features], fi + fu),
            ):
                if n:
                    top = float(np.ceil(max(np.abs(t).max(initial=0) for t in tables) + 1e-6))
                    feats[key] = spaces.Box(-top, top, (n,), np.float32)
            texts = {"query": vec(d), "user": vec(d), "candidates": vec(k * d)}
            return spaces.Dict({**texts, **feats, "user_id": user_id, **common})
        return spaces.Dict(
            {
                "query": ints(1, len(log.query_texts)),
                "user": ints(cfg.history_len, log.n_items),
                "user_weights": spaces.Box(0, 1, (cfg.history_len,), np.float32),
                "candidates": ints(k, log.n_items),
                "user_id": user_id,
                **common,
            }
        )

    def request_attractiveness(
        self, requests: np.ndarray, history: np.ndarray | None
    ) -> np.ndarray:
        """``float64[B, K]`` attractiveness of the candidates of ``requests``, for users with
        ``history`` (``int64[B, H]``, read by models that need it)."""
        if self.attractiveness is not None:
            return self.attractiveness[requests]
        return self.model.attractiveness(self.context, requests, self.candidates[requests], history)


# ---------------------------------------------------------------------- randomness
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
STREAM_EPISODE, STREAM_CLICK, STREAM_CONTINUE, STREAM_DYNAMICS = 0, 1, 2, 3


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
    return (splitmix64(z) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def new_key(rng: np.random.Generator) -> np.uint64:
    """Draw a row's random key from an env's ``np_random``."""
    return np.uint64(rng.integers(0, 2**63, dtype=np.int64))


# ---------------------------------------------------------------------- the engine
class ReplayEngine:
    """``B`` session replays in array operations: the one implementation of the dynamics.

    A row plays an episode (a session, or a user's requests) request by request. Per request it
    pools the user state from the row's history, asks the click model for the candidates'
    attractiveness, then places candidates one position at a time (or a whole slate from
    scores); each placement earns the click model's click probability given the items above it
    (or a sampled click). When a request's slate is full, its sampled clicks join the history.

    The adapters own the episode choice: :meth:`start_episodes` starts the ones they pick
    (:meth:`draw_episodes` draws uniformly from each row's key), and :meth:`step` reports which
    rows ended their episode without starting another.

    Args:
        data: the :class:`ReplayData` of the log.
        num_envs: ``B``.
        device: where candidate embeddings are gathered (``embeddings`` observations).
        request_infos: build the per-request info dicts (slate, clicks, NDCG...) in
            :meth:`step`; off for raw speed.
    """

    def __init__(
        self,
        data: ReplayData,
        num_envs: int,
        device: torch.device | str = "cpu",
        request_infos: bool = True,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}; allowed: >= 1")
        self.data, self.config = data, data.config
        self.request_infos = request_infos
        self.pooling = data.config.user_pooling
        cfg, encoded = self.config, data.encoded
        b, k, width, h = num_envs, cfg.max_candidates, cfg.slate_size, cfg.history_len
        self.num_envs = b
        self.rows = np.arange(b)
        self.key = np.zeros(b, dtype=np.uint64)
        self.episodes_started = np.zeros(b, dtype=np.int64)
        self.episode_no = np.zeros(b, dtype=np.int64)  # this row's count of started episodes
        self.episode = np.zeros(b, dtype=np.int64)  # the episode (index into data) played
        # what a row's random numbers are keyed by: its key and episode count; a sequential
        # world's queued episode (an evaluation) by row 0's key and the episode itself, so
        # that every policy meets the same users' choices whichever row plays them
        self.event_key = np.zeros(b, dtype=np.uint64)
        self.event_no = np.zeros(b, dtype=np.int64)
        self.queued = np.zeros(b, dtype=bool)
        self.ep_start = np.zeros(b, dtype=np.int64)
        self.ep_len = np.ones(b, dtype=np.int64)
        self.j = np.zeros(b, dtype=np.int64)  # request number within the episode
        self.req = np.zeros(b, dtype=np.int64)
        self.cand = np.full((b, k), -1, dtype=np.int64)
        self.attr = np.zeros((b, k))
        self.placed = np.zeros((b, k), dtype=bool)
        self.slate_len = np.ones(b, dtype=np.int64)
        self.pos = np.zeros(b, dtype=np.int64)
        self.examined = np.ones(b)  # P(this position is examined | items above)
        self.examining = np.ones(b, dtype=bool)  # the sampled user still scans (cascade/dcm)
        self.invalid = np.zeros(b, dtype=np.int64)
        self.slate = np.zeros((b, width), dtype=np.int64)  # candidate index per position
        self.clicks = np.zeros((b, width), dtype=np.int64)
        self.probs = np.zeros((b, width))
        # the last step's reward per position (scores mode: a whole slate per step), what a
        # learner that credits each position with its own clicks reads (agents.policies)
        self.slot_rewards = np.zeros((b, width))
        # the last step's rewards before an expected walk weights them by the chance that the
        # user is there (what a learner crediting requests with their future reads)
        self.reached_rewards = np.zeros(b)
        self.history = np.full((b, h), -1, dtype=np.int64)
        self.weights = np.zeros((b, h), dtype=np.float32)
        self.state = np.zeros((b, encoded.dim), dtype=np.float32)
        # embeddings mode: the history's item features, pooled with the same weights
        self.feature_state = np.zeros((b, data.item_features.shape[1]), dtype=np.float32)
        # a sequential world's users: satiation, satisfaction, whether they are still there
        self.flow = (
            None
            if data.dynamics is None
            else UserFlow(data.dynamics, b, expected=cfg.user_choices == "expected")
        )
        self._embeddings = cfg.obs_mode == "embeddings"
        if self._embeddings:
            self._setup_gather(torch.device(device), encoded)

    # ------------------------------------------------------------------ episodes
    def seed(self, rows: np.ndarray, keys: np.ndarray) -> None:
        """Give ``rows`` new random keys; their episode counters restart."""
        self.key[rows] = keys
        self.episodes_started[rows] = 0

    def draw_episodes(self, rows: np.ndarray) -> np.ndarray:
        """``int64`` a uniformly drawn episode for each of ``rows`` (from its key)."""
        event = counter(self.episodes_started[rows], 0, 0, STREAM_EPISODE)
        return (uniform(self.key[rows], event) * self.data.n_episodes).astype(np.int64)

    def start_episodes(
        self, rows: np.ndarray, episodes: np.ndarray, queued: np.ndarray | None = None
    ) -> None:
        """Start episode ``episodes[n]`` on row ``rows[n]`` (``queued`` marks evaluation ones)."""
        data = self.data
        episodes = np.asarray(episodes, dtype=np.int64)
        self.episode[rows] = episodes
        self.queued[rows] = False if queued is None else queued
        self.episode_no[rows] = self.episodes_started[rows]
        self.episodes_started[rows] += 1
        self.event_key[rows], self.event_no[rows] = self.key[rows], self.episode_no[rows]
        if self.flow is not None and queued is not None and queued.any():
            shared = rows[queued]
            self.event_key[shared], self.event_no[shared] = self.key[0], episodes[queued]
        self.ep_start[rows] = data.episode_offsets[episodes]
        self.ep_len[rows] = data.episode_offsets[episodes + 1] - data.episode_offsets[episodes]
        self.j[rows] = 0
        first = data.episode_requests[self.ep_start[rows]]
        self.history[rows] = data.initial_history[data.log.request_user[first]]
        if self.flow is not None:
            self.flow.start(rows)
        self._start_requests(rows)

    def _start_requests(self, rows: np.ndarray) -> None:
        data, cfg = self.data, self.config
        req = data.episode_requests[self.ep_start[rows] + self.j[rows]]
        self.req[rows] = req
        self.cand[rows] = data.candidates[req]
        history = self.history[rows]
        if not self._embeddings:
            self.weights[rows] = self.pooling.weights(history)
        else:
            profiles = data.encoded.user_profiles[data.log.request_user[req]]
            self.state[rows] = self.pooling.pool(data.encoded.items, history, profiles)
            if self.feature_state.shape[1]:
                self.feature_state[rows] = self.pooling.pool(data.item_features, history)
        self.attr[rows] = data.request_attractiveness(
            req, history if data.model.needs_history else None
        )
        if self.flow is not None:
            self.attr[rows] = self.flow.satiate(rows, self.attr[rows], self.cand[rows])
        self.slate_len[rows] = 1 if cfg.action_mode == "top1" else data.slate_len[req]
        self.placed[rows] = False
        self.pos[rows] = 0
        self.examined[rows] = 1.0
        self.examining[rows] = True
        self.invalid[rows] = 0
        if self._embeddings:
            self._row_version[rows] += 1

    # ------------------------------------------------------------------ stepping
    def valid(self) -> np.ndarray:
        """``bool[B, K]`` candidates that can be placed now."""
        return (self.cand >= 0) & ~self.placed

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Apply one action per row.

        Returns:
            ``float64[B]`` rewards; ``bool[B]`` rows whose episode ended (they stay at their
            final state until :meth:`start_episodes`); ``B`` info dicts, filled for rows whose
            request ended (when ``request_infos``).
        """
        if self.config.action_mode == "scores":
            scores = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1)
            keyed = np.where(self.valid(), scores, -np.inf)
            index = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
            order = np.lexsort((index, -keyed))  # best first, ties: lower index
            self.slot_rewards[:] = 0.0
            for s in range(self.config.slate_size):
                active = np.flatnonzero(self.pos < self.slate_len)
                self.slot_rewards[active, s] = self._place(active, order[active, s])
            reward = self.slot_rewards.sum(axis=1)
        else:
            reward = self._place(self.rows, np.asarray(actions, dtype=np.int64).reshape(-1))
        self.reached_rewards = reward
        if self.flow is not None and self.flow.expected:  # clicks of users still there
            reward = reward * self.flow.survival
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = np.zeros(self.num_envs, dtype=bool)
        finished = np.flatnonzero(self.pos == self.slate_len)
        if len(finished):
            if self.request_infos:
                self._request_infos(finished, infos)
            self._finish_requests(finished)
            if self.flow is None:
                self.j[finished] += 1
                going = finished[self.j[finished] < self.ep_len[finished]]
                ended[finished[self.j[finished] == self.ep_len[finished]]] = True
            else:
                going = self._advance(finished)
                ended[finished] = True
                ended[going] = False
            if len(going):
                self._start_requests(going)
        return reward, ended, infos

    def _place(self, rows: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Place candidate ``a[n]`` at the next position of row ``rows[n]``; its rewards.

        An invalid choice (padding, placed, out of range) places the row's first valid
        candidate instead and is counted in ``invalid``.
        """
        model = self.data.model
        valid = self.valid()[rows]
        inside = (a >= 0) & (a < valid.shape[1])
        ok = inside & valid[np.arange(len(rows)), np.where(inside, a, 0)]
        a = np.where(ok, a, np.argmax(valid, axis=1))
        self.invalid[rows] += ~ok
        pos = self.pos[rows]
        attr = self.attr[rows, a]
        p, self.examined[rows] = slot_click_prob(attr, pos, self.examined[rows], model)
        key, ep, j = self.event_key[rows], self.event_no[rows], self.j[rows]
        u = uniform(key, counter(ep, j, pos, STREAM_CLICK))
        v = uniform(key, counter(ep, j, pos, STREAM_CONTINUE))
        click, self.examining[rows] = sample_slot_click(
            attr, pos, self.examining[rows], u, v, model
        )
        self.placed[rows, a] = True
        self.slate[rows, pos] = a
        self.clicks[rows, pos] = click
        self.probs[rows, pos] = p
        self.pos[rows] += 1
        return p if self.config.reward == "expected" else click.astype(np.float64)

    def _finish_requests(self, rows: np.ndarray) -> None:
        """The sampled clicks of finished slates join their users' histories."""
        filled = np.arange(self.slate.shape[1])[None, :] < self.slate_len[rows][:, None]
        items = np.take_along_axis(self.cand[rows], self.slate[rows], axis=1)
        clicked = np.where(filled & (self.clicks[rows] == 1), items, -1)
        self.history[rows] = append_history(self.history[rows], clicked)

    def _advance(self, rows: np.ndarray) -> np.ndarray:
        """A sequential world's next step for rows whose request ended (:class:`UserFlow`):
        the session's next request, the following session's first, or the episode's end. Moves
        ``j`` and returns the rows that go on."""
        data = self.data
        filled = np.arange(self.slate.shape[1])[None, :] < self.slate_len[rows][:, None]
        items = np.where(filled, np.take_along_axis(self.cand[rows], self.slate[rows], axis=1), -1)
        probs = np.where(filled, self.probs[rows], 0.0)
        at = self.ep_start[rows] + self.j[rows]
        draws = None
        if not self.flow.expected:
            key, ep, j = self.event_key[rows], self.event_no[rows], self.j[rows]
            draws = tuple(uniform(key, counter(ep, j, n, STREAM_DYNAMICS)) for n in range(3))
        target = self.flow.advance(
            rows, items, probs, data.next_in_session[at], data.next_session[at], draws
        )
        going = target >= 0
        self.j[rows[going]] = target[going]
        return rows[going]

    def _request_infos(self, rows: np.ndarray, infos: list[dict[str, Any]]) -> None:
        width = self.slate_len[rows]
        slates = self.slate[rows]
        items = np.take_along_axis(self.cand[rows], slates, axis=1)
        attrs = np.take_along_axis(self.attr[rows], slates, axis=1)
        ndcg = ndcg_batch(self.attr[rows], slates, self.cand[rows] >= 0, width)
        probs, clicks = self.probs[rows], self.clicks[rows]  # fresh arrays: infos hold views
        filled = np.arange(slates.shape[1])[None, :] < width[:, None]
        expected = np.where(filled, probs, 0.0).sum(axis=1)
        requests, invalid = self.req[rows].tolist(), self.invalid[rows].tolist()
        flow = self._flow_infos(rows) if self.flow is not None else None
        episodes, queued = self.episode[rows].tolist(), self.queued[rows].tolist()
        for n, i in enumerate(rows.tolist()):
            s = int(width[n])
            infos[i].update(
                {
                    "request": requests[n],
                    "slate": items[n, :s],
                    "clicks": clicks[n, :s],
                    "click_probs": probs[n, :s],
                    "attractiveness": attrs[n, :s],
                    "expected_clicks": float(expected[n]),
                    "ndcg": float(ndcg[n]),
                    "invalid_actions": invalid[n],
                    "episode_id": episodes[n],
                    "queued": queued[n],
                }
            )
            if flow is not None:
                infos[i].update({k: v[n] for k, v in flow.items()})

    def _flow_infos(self, rows: np.ndarray) -> dict[str, list]:
        """A sequential world's request infos: the chance the user reached it (``survival``),
        whether it opened a session (``session_start``) after an earlier one
        (``later_session``), and whether a following session exists (``has_next_session``)."""
        data, at = self.data, self.ep_start[rows] + self.j[rows]
        opens = data.session_start[at]
        return {
            "survival": self.flow.survival[rows].tolist(),
            "session_start": opens.tolist(),
            "later_session": (opens & (self.j[rows] > 0)).tolist(),
            "has_next_session": (data.next_session[at] >= 0).tolist(),
        }

    # ------------------------------------------------------------------ observations
    def observation(self, rows: np.ndarray | None = None, copy: bool = False) -> dict[str, Any]:
        """Observations of all rows (or of ``rows``), one ``[n, ...]`` array per key.

        In ``embeddings`` mode the ``candidates`` array of a whole-batch observation is one of
        ``RING`` preallocated buffers, valid until the next call but one; ``copy=True`` (or
        ``rows``) returns fresh arrays.
        """
        sel = slice(None) if rows is None else rows
        req, cand = self.req[sel], self.cand[sel]
        ready = (self.pos[sel] < self.slate_len[sel])[:, None]
        mask = ((cand >= 0) & ~self.placed[sel] & ready).astype(np.float32)
        position = self.pos[sel].astype(np.float32)[:, None]
        queries = self.data.log.request_query[req]
        data = self.data
        users = data.log.request_user[req]
        if not self._embeddings:
            obs = {
                "query": queries.astype(np.int32)[:, None],
                "user": self.history[sel].astype(np.int32),
                "user_weights": self.weights[sel].copy(),
                "candidates": cand.astype(np.int32),
                "mask": mask,
                "position": position,
                "user_id": users.astype(np.int32)[:, None],
            }
            return obs
        fresh = copy or rows is not None
        obs = {
            "query": data.encoded.queries[queries].astype(np.float32),
            "user": self.state[sel].copy(),
            "candidates": self._gather(cand).copy() if fresh else self._next_ring_buffer(),
            "mask": mask,
            "position": position,
            "user_id": users.astype(np.int32)[:, None],
        }
        if data.item_features.shape[1]:
            feats = data.item_features[np.maximum(cand, 0)] * (cand >= 0)[..., None]
            obs["candidate_features"] = feats.reshape(len(cand), -1).astype(np.float32)
        user_feats = [self.feature_state[sel]] if data.item_features.shape[1] else []
        if data.user_features.shape[1]:
            user_feats.append(data.user_features[users].astype(np.float32))
        if user_feats:
            obs["user_features"] = np.concatenate(user_feats, axis=1)
        return obs

    def _setup_gather(self, device: torch.device, encoded: EncodedLog) -> None:
        b, k, d = self.num_envs, self.config.max_candidates, encoded.dim
        # on the CPU this shares the table's memory: a thousand single envs hold one copy
        self._items = torch.as_tensor(encoded.items, dtype=torch.float32, device=device)
        self._scratch = torch.empty((b * k, d), dtype=torch.float32, device=device)
        # a ring of preallocated buffers (fresh 30 MB arrays cost page faults); rows are
        # re-gathered only when their request changed since that buffer was filled
        self._ring = [np.zeros((b, k * d), dtype=np.float32) for _ in range(RING)]
        self._ring_version = np.full((RING, b), -1, dtype=np.int64)
        self._row_version = np.zeros(b, dtype=np.int64)
        self._ring_next = 0

    def _gather(self, cand: np.ndarray) -> np.ndarray:
        """``float32[n, K * d]`` embeddings of candidate codes (zeros for padding).

        Large batches are gathered by torch on the device into a scratch tensor (the result
        is a view of it, valid until the next gather); a few rows on the CPU by numpy, which
        has less overhead per call.
        """
        flat = cand.reshape(-1)
        padded = np.flatnonzero(flat < 0)
        if self._items.device.type == "cpu" and len(flat) <= SMALL_GATHER:
            out_np = self.data.encoded.items[np.maximum(flat, 0)].astype(np.float32, copy=False)
            out_np[padded] = 0.0
            return out_np.reshape(len(cand), -1)
        codes = torch.as_tensor(np.maximum(flat, 0), device=self._items.device)
        out = self._scratch[: len(codes)]
        torch.index_select(self._items, 0, codes, out=out)
        if len(padded):  # only the padded rows are written
            out[torch.as_tensor(padded, device=out.device)] = 0.0
        return out.reshape(len(cand), -1).cpu().numpy()

    def _next_ring_buffer(self) -> np.ndarray:
        i = self._ring_next
        self._ring_next = (i + 1) % RING
        stale = np.flatnonzero(self._ring_version[i] != self._row_version)
        if len(stale):
            self._ring[i][stale] = self._gather(self.cand[stale])
            self._ring_version[i, stale] = self._row_version[stale]
        return self._ring[i]
