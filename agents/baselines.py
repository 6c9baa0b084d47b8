"""Baseline ranking policies for evaluation: random, logged order, popularity, cosine, oracle.

Each baseline is a config (``conf/agent/<name>.yaml`` names its class as ``_target_``, with its
settings); ``fit(train, encoded)`` gives it what it reads from the data (counts, embedding
tables) and returns it, ready to evaluate.

A policy for :func:`rankgym.agents.evaluation.evaluate` is any object with ``name: str``,
``obs_mode: str`` and ``act(obs, env) -> int64[B]`` (the candidate index to place now, ``slot``
action mode). Baselines derive ``act`` from ``scores(obs, env) -> float64[B, K]``: the masked argmax
(candidates with ``mask == 0`` get ``-inf``; ties go to the lowest index), so a baseline never
picks a masked candidate and builds its slate greedily, best first. Every baseline reads
``ids`` observations (integer codes); embedding tables are held by the policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from rankgym.encoders.encoded_log import EncodedLog
from rankgym.logs import SessionLog

if TYPE_CHECKING:
    from rankgym.envs.vector import BatchedReplayEnv


def masked_argmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``int64[B]`` index of the best candidate with ``mask > 0`` (ties: lowest index)."""
    keyed = np.where(np.asarray(mask) > 0, np.asarray(scores, dtype=np.float64), -np.inf)
    return np.argmax(keyed, axis=1).astype(np.int64)


class ScoringPolicy:
    """Base of the baselines: ``act`` is the masked argmax of :meth:`scores`.

    Args:
        name: the name reported in results (default: the class's).
    """

    name: str = "scoring"
    obs_mode: str = "ids"
    # True when the scores read the logged ranking itself: off-policy estimators cannot value
    # such a policy (its action is not independent of the logged one given the request)
    reads_logged_order: bool = False

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    def fit(self, train: SessionLog, encoded: EncodedLog) -> ScoringPolicy:
        """Read what the policy needs from the training sessions; returns self."""
        return self

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """``float64[B, K]`` score of each candidate (higher is placed first)."""
        raise NotImplementedError

    def act(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """``int64[B]``: the best unmasked candidate of each sub-env."""
        return masked_argmax(self.scores(obs, env), obs["mask"])

    def reset(self) -> None:
        """Restore the initial state (evaluation calls it first; stateless policies: no-op)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class RandomPolicy(ScoringPolicy):
    """I.i.d. uniform scores from its own generator (``reset`` restarts it from ``seed``)."""

    name = "random"

    def __init__(self, seed: int = 0, name: str | None = None) -> None:
        super().__init__(name)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Restart the generator, so repeated evaluations are identical."""
        self.rng = np.random.default_rng(self.seed)

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """Uniform ``[0, 1)`` scores."""
        return self.rng.random(np.shape(obs["candidates"]))


class LoggedPolicy(ScoringPolicy):
    """The logging policy's order: candidates arrive in logged order, so score ``-index``."""

    name = "logged"
    reads_logged_order = True

    def fit(self, train: SessionLog, encoded: EncodedLog | None = None) -> LoggedPolicy:
        """Refuse logs with unshown candidates: their order does not reveal the logged one."""
        if train.has_unshown:
            raise ValueError(
                "agent=logged replays the logged order, which a dataset with unshown "
                f"candidates does not give to policies (dataset.candidates="
                f"{train.meta.get('params', {}).get('candidates', '?')}); use "
                "dataset.candidates=logged for this baseline"
            )
        return self

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """``-index`` of each candidate."""
        b, k = np.shape(obs["candidates"])
        return np.broadcast_to(-np.arange(k, dtype=np.float64), (b, k))


class PopularityPolicy(ScoringPolicy):
    """The item's smoothed training CTR ``(clicks + prior * global_ctr) / (impressions + prior)``.

    Items never shown in ``train`` score the global CTR.

    Args:
        prior: pseudo-impressions at the global CTR, >= 0.
    """

    name = "popularity"

    def __init__(self, prior: float = 10.0, name: str | None = None) -> None:
        super().__init__(name)
        if prior < 0:
            raise ValueError(f"agent.prior={prior}; allowed: >= 0")
        self.prior = float(prior)

    def fit(self, train: SessionLog, encoded: EncodedLog | None = None) -> PopularityPolicy:
        """Count clicks and impressions per item in ``train``; returns self."""
        prior = self.prior
        n = train.n_items
        items = np.asarray(train.item, dtype=np.int64)
        clicks = np.bincount(items, weights=np.asarray(train.click, dtype=np.float64), minlength=n)
        shown = np.bincount(items, minlength=n).astype(np.float64)
        total = shown.sum()
        self.global_ctr = float(clicks.sum() / total) if total > 0 else 0.0
        denom = shown + prior
        self.ctr = np.where(
            denom > 0, (clicks + prior * self.global_ctr) / np.where(denom > 0, denom, 1.0),
            self.global_ctr,
        )  # fmt: skip
        # index -1 (padding) reads the appended last entry; padding is masked anyway
        self._table = np.concatenate([self.ctr, [self.global_ctr]])
        return self

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """Smoothed CTR of each candidate."""
        cand = np.asarray(obs["candidates"], dtype=np.int64)
        return self._table[np.where(cand >= 0, cand, len(self._table) - 1)]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; zero rows stay zero (cosine 0, never NaN)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


class CosinePolicy(ScoringPolicy):
    """``cos(query, item) + cos(user state, item)`` on the encoder's embeddings.

    The user state is the observation's history codes weighted by its ``user_weights``: the
    env's pooling (``env.pooling``, ``env.decay``, ``env.last_k``), the state the env and
    its click model see. An empty query's embedding is used as is; zero vectors (empty
    history, padding) give cosine 0.

    Args:
        tables: ``items`` and ``queries`` embedding tables (``env.embedding_tables``, with
            ``item_features`` when ``features``); or :meth:`fit` takes them from the encoded
            log.
        features: add ``cos(pooled history features, item features)`` over the dataset's
            item feature table (:mod:`rankgym.encoders.features`): the content signal of datasets
            whose items are described by features rather than text (OBD).
    """

    name = "cosine"

    def __init__(
        self,
        tables: dict[str, np.ndarray] | None = None,
        name: str | None = None,
        features: bool = False,
    ):
        super().__init__(name)
        self.features = bool(features)
        if tables is not None:
            self._set_tables(tables)

    def fit(self, train: SessionLog, encoded: EncodedLog) -> CosinePolicy:
        """Take the embedding (and feature) tables of ``encoded``; returns self."""
        tables = {"items": encoded.items, "queries": encoded.queries}
        self._set_tables({**tables, "item_features": encoded.item_features})
        return self

    def _set_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.items = np.asarray(tables["items"])
        d = self.items.shape[1]
        # row I is zeros: padding (-1) gathers it
        self._items = np.concatenate([self.items, np.zeros((1, d), self.items.dtype)])
        self._items_unit = np.concatenate([_unit_rows(self.items), np.zeros((1, d))])
        self._queries_unit = _unit_rows(tables["queries"])
        feats = tables.get("item_features") if self.features else None
        if feats is None:
            feats = np.zeros((len(self.items), 0))
        self._feats = np.concatenate([feats, np.zeros((1, feats.shape[1]))])
        self._feats_unit = np.concatenate([_unit_rows(feats), np.zeros((1, feats.shape[1]))])

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """Query-item plus user-item cosine of each candidate (plus the features' cosine)."""
        cand = np.asarray(obs["candidates"], dtype=np.int64)
        cand = np.where(cand >= 0, cand, len(self._items_unit) - 1)
        vectors = self._items_unit[cand]
        query = self._queries_unit[np.asarray(obs["query"], dtype=np.int64).reshape(-1)]
        history = np.asarray(obs["user"], dtype=np.int64)
        weights = obs["user_weights"]
        pooled = np.einsum("bh,bhd->bd", weights, self._items[history])
        state = _unit_rows(pooled)
        scores = np.einsum("bkd,bd->bk", vectors, query + state)
        if self._feats.shape[1]:
            liked = _unit_rows(np.einsum("bh,bhf->bf", weights, self._feats[history]))
            scores = scores + np.einsum("bkf,bf->bk", self._feats_unit[cand], liked)
        return scores


class OraclePolicy(ScoringPolicy):
    """Ranks by the reward model's attractiveness (``env.current_attractiveness()``).

    The best order under the reward model for PBM (decreasing examination), cascade and
    independent structures; it reads the env's reward model, so it is an upper reference, not a
    deployable policy.
    """

    name = "oracle"

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """Attractiveness of each candidate under the env's reward model."""
        return env.current_attractiveness()


class LookaheadOraclePolicy(ScoringPolicy):
    """A sequential world's non-myopic oracle: attractiveness times ``1 + weight *
    satisfaction``, under the env's reward model and dynamics.

    The click-greedy :class:`OraclePolicy` puts the most clickable items first, poor ones
    included; their clicks disappoint and shorten the session. Weighting each click by the
    continuation it buys (a one-step lookahead: a satisfying click raises the chance of the
    next request, whose value is about ``weight`` times a click's) trades a few clicks now for
    longer sessions and more returns. An upper reference, not a deployable policy.

    Args:
        weight: the value of a satisfying click's continuation, in clicks (``>= 0``; ``0`` is
            the click-greedy oracle).
    """

    name = "lookahead_oracle"

    def __init__(self, weight: float = 10.0, name: str | None = None) -> None:
        if weight < 0:
            raise ValueError(f"agent.weight={weight}; allowed: >= 0")
        super().__init__(name)
        self.weight = float(weight)

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """Attractiveness weighted by the continuation a click buys."""
        dynamics = env.data.dynamics
        if dynamics is None:
            raise ValueError(
                "agent=lookahead_oracle needs a sequential world (dataset.dynamics, "
                "experiment=longterm) valued by a reward model with dynamics (reward=truth)"
            )
        items = np.maximum(np.asarray(obs["candidates"], dtype=np.int64), 0)
        return env.current_attractiveness() * (1 + self.weight * dynamics.item_satisfaction[items])


class SB3Policy:
    """A trained stable-baselines3 model (PPO, DQN, ...) as an evaluation policy.

    ``act`` is ``model.predict(obs, deterministic=True)[0]`` (for a whole-slate policy, the
    first unmasked candidate of its ranking); actions on masked candidates are replaced by the
    env's fallback and counted in ``invalid_actions``.
    """

    def __init__(self, model: Any, obs_mode: str, name: str) -> None:
        self.model, self.obs_mode, self.name = model, obs_mode, name

    def act(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """The model's deterministic action for every sub-env."""
        actions, _ = self.model.predict(obs, deterministic=True)
        actions = np.asarray(actions)
        if actions.ndim == 2:  # a slate policy's ranking (as scores): its best unplaced item
            return masked_argmax(actions, obs["mask"])
        return actions.astype(np.int64).reshape(-1)

    def __repr__(self) -> str:
        return f"SB3Policy(name={self.name!r}, obs_mode={self.obs_mode!r})"
