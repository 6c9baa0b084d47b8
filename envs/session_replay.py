"""SessionReplayEnv: a Gymnasium environment that replays logged sessions under a click model.

It is the replay engine (:mod:`rankgym.envs.replay`) run on a batch of one session, behind
Gymnasium's API; :class:`~rankgym.envs.vector.BatchedReplayEnv` is the same engine on many.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

import gymnasium as gym
import numpy as np

from rankgym.encoders.encoded_log import EncodedLog
from rankgym.envs.click_models.base import ClickModel
from rankgym.envs.replay import ReplayConfig, ReplayData, ReplayEngine, new_key
from rankgym.logs import SessionLog


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
    ``user_weights`` ``(H,)`` the weight of each history item in the pooled user state (the
    env's ``pooling``, so a policy pools as the env does); the tables are
    ``env.embedding_tables``. (The key is ``candidates``, not ``items``, which clashes with
    SB3's ``MultiInputPolicy``.)

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
    ``request``, ``slate`` (item codes), ``clicks``, ``click_probs``, ``attractiveness`` (of
    the placed items), ``expected_clicks`` and ``ndcg`` (of the slate against the click model's
    attractiveness).
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
        self.engine = ReplayEngine(self.data, num_envs=1)
        self.embedding_tables = self.data.embedding_tables
        self.observation_space = self.data.observation_space
        self.action_space = self.data.action_space
        self._seeded = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode: a random session, or ``options["episode"]``."""
        super().reset(seed=seed)
        row = np.zeros(1, dtype=np.int64)
        if seed is not None or not self._seeded:
            self.engine.seed(row, np.array([new_key(self.np_random)]))
            self._seeded = True
        n_episodes = self.data.n_episodes
        if options and "episode" in options:
            episode = int(options["episode"])
            if not 0 <= episode < n_episodes:
                raise ValueError(f"episode {episode} out of range 0..{n_episodes - 1}")
        else:
            episode = int(self.engine.draw_episodes(row)[0])
        self.engine.start_episodes(row, np.array([episode]))
        return self._observation(), {"episode_id": episode, "requests": int(self.engine.ep_len[0])}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Place one candidate (``slot``, ``top1``) or a whole slate (``scores``)."""
        actions = np.asarray(action).reshape(1, -1)
        reward, ended, infos = self.engine.step(actions)
        return self._observation(), float(reward[0]), bool(ended[0]), False, infos[0]

    def _observation(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.engine.observation(copy=True).items()}


# ---------------------------------------------------------------------- registered worlds
@functools.lru_cache(maxsize=4)
def synthetic_world(
    seed: int = 0, scale: float = 1.0, encoder: str = "hashing"
) -> tuple[SessionLog, EncodedLog, Any]:
    """A synthetic world, its embeddings and ground truth, cached per process."""
    from rankgym.encoders.encoded_log import encode_log
    from rankgym.logs.synthetic import SyntheticWorld

    log, truth = SyntheticWorld(seed=seed, scale=scale).generate()
    if encoder == "hashing":
        from rankgym.encoders.hashing import HashingEncoder

        text_encoder = HashingEncoder()
    elif encoder == "minilm":
        from rankgym.encoders.transformer import TransformerEncoder

        text_encoder = TransformerEncoder(progress=False)
    elif encoder == "tiny":
        from rankgym.encoders.tiny import tiny_bert_encoder

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
    from rankgym.envs.click_models.simple import TruthClickModel

    allowed = set(asdict(ReplayConfig()))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown env option(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    log, encoded, truth = synthetic_world(world_seed, scale, encoder)
    return SessionReplayEnv(log, encoded, TruthClickModel(truth=truth), ReplayConfig(**options))
