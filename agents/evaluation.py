"""Evaluation protocol: replay every test session once under a reward model, with bootstrap CIs.

:func:`evaluate` runs a policy (see :mod:`rankgym.agents.baselines` for the contract) on a
:class:`~rankgym.envs.vector.BatchedReplayEnv` over the test log, queueing each test episode
exactly once, and reports per-request means of

* ``expected_clicks``: sum of the reward model's click probabilities over the slate;
* ``ctr@1``: click probability of the top position;
* ``ndcg@{slate_size}``: NDCG of the slate against the reward model's attractiveness;
* ``mrr``: expected reciprocal rank of the first click under the reward model's structure
  (:func:`rankgym.envs.metrics.first_click_probs`);
* ``true_expected_clicks`` (with a ground truth): expected clicks of the same slates under the
  synthetic world's true click model.

Confidence intervals are 95% percentile bootstraps over sessions (a session's requests are
resampled together): each resample's metric is the sum over its sessions' requests divided by
their request count. They say how much the *test sessions* move a value.

Under a fitted ensemble (the neural model's members) ``expected_clicks`` also gets an
epistemic interval (:func:`epistemic_interval`): how much another equally likely *training log*
would move what the simulator says. That is the interval to read before trusting a simulated
value or the order of two policies (BENCHMARKS.md, "Simulator fidelity").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankgym.encoders.encoded_log import EncodedLog
from rankgym.envs.click_models.base import ClickModel
from rankgym.envs.metrics import expected_reciprocal_rank
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.vector import BatchedReplayEnv
from rankgym.logs import SessionLog
from rankgym.logs.ground_truth import GroundTruth


@dataclass
class EvaluationResult:
    """Metrics of one policy on a test log.

    Attributes:
        policy: the policy's name.
        n_sessions, n_requests: sessions and requests evaluated.
        metrics: mean per request of each metric.
        intervals: 95% bootstrap interval of each metric (over sessions).
        invalid_actions: actions on masked candidates (replaced by the env's fallback).
        per_request: each metric per request, plus ``request`` (request codes of the test log),
            in a sequential world ``survival`` (the chance the user reached the request),
            ``slate`` (``int64[N, slate_size]`` item codes, ``-1`` past a slate's end) and
            ``click_probs`` (the reward model's click probability at each slate position).
        epistemic: under an ensemble reward model, the :data:`EPISTEMIC_LEVEL` epistemic
            interval of ``expected_clicks`` (:func:`epistemic_interval`); else empty.
        member_values: under an ensemble, ``expected_clicks`` under each member alone.
    """

    policy: str
    n_sessions: int
    n_requests: int
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    invalid_actions: int = 0
    per_request: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    epistemic: dict[str, tuple[float, float]] = field(default_factory=dict)
    member_values: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: ``metric``, ``metric_ci_low``, ``metric_ci_high``, ... plus
        ``policy``, ``n_sessions``, ``n_requests`` and ``invalid_actions``; under an ensemble
        also ``expected_clicks_epi_low`` and ``expected_clicks_epi_high``."""
        out: dict[str, Any] = {
            "policy": self.policy,
            "n_sessions": self.n_sessions,
            "n_requests": self.n_requests,
            "invalid_actions": self.invalid_actions,
        }
        for key, value in self.metrics.items():
            low, high = self.intervals.get(key, (float("nan"), float("nan")))
            out[key] = float(value)
            out[f"{key}_ci_low"] = float(low)
            out[f"{key}_ci_high"] = float(high)
        for key, (low, high) in self.epistemic.items():
            out[f"{key}_epi_low"] = float(low)
            out[f"{key}_epi_high"] = float(high)
        return out


EPISTEMIC_LEVEL = 0.9  # the epistemic intervals' nominal coverage


def epistemic_interval(
    member_values: np.ndarray, centre: float, level: float = EPISTEMIC_LEVEL
) -> tuple[float, float]:
    """The interval around ``centre`` (the ensemble's value) in which another equally likely
    training log would put the simulator's value, from the values of its ``M >= 2`` members:
    ``centre +- t(level, M - 1) * sd * sqrt(1 + 1 / M)``, the prediction interval of a new draw
    from the members' distribution (Student's t, since ``sd`` comes from ``M`` draws).

    It measures the estimation noise of the log, not a model's bias: how far it covers the
    truth is measured (BENCHMARKS.md, "Simulator fidelity").
    """
    from scipy.stats import t

    values = np.asarray(member_values, dtype=np.float64)
    m = len(values)
    if m < 2:
        raise ValueError(f"an epistemic interval needs >= 2 member values, got {m}")
    half = t.ppf(0.5 + level / 2, m - 1) * values.std(ddof=1) * np.sqrt(1 + 1 / m)
    return float(centre - half), float(centre + half)


def evaluate(
    policy: Any,
    test: SessionLog,
    encoded: EncodedLog,
    model: ClickModel,
    config: ReplayConfig,
    truth: GroundTruth | None = None,
    num_envs: int = 256,
    bootstrap: int = 1000,
    seed: int = 0,
    max_sessions: int | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Replay every test episode once with ``policy`` and measure it under ``model``.

    Args:
        policy: an object with ``name``, ``obs_mode`` and ``act(obs, env) -> int64[B]``
            (``slot`` actions); a ``reset()`` method, when present, is called first.
        test: the test sessions; ``encoded`` their embedding tables.
        model: the reward model; ``config`` the env options (``obs_mode`` and ``action_mode``
            are overridden by the policy's and ``slot``).
        truth: the synthetic world's ground truth, for ``true_expected_clicks``.
        num_envs: sub-envs stepped at once (at most the number of episodes).
        bootstrap: bootstrap resamples of sessions for the intervals (0: no intervals).
        seed: seeds the env (click sampling), the session subset and the bootstrap.
        max_sessions: evaluate only this many episodes, a seeded random subset.
        progress: show a progress bar over episodes.
    """
    cfg = dataclasses.replace(config, obs_mode=policy.obs_mode, action_mode="slot")
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs}; allowed: >= 1")
    if bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap}; allowed: >= 0")
    by_session = cfg.episode == "session"
    n_episodes = test.n_sessions if by_session else len(np.unique(test.request_user))
    episodes = np.arange(n_episodes)
    if max_sessions is not None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions={max_sessions}; allowed: >= 1 or None")
        perm = np.random.default_rng(seed).permutation(n_episodes)
        episodes = perm[: min(max_sessions, n_episodes)]
    env = BatchedReplayEnv(
        test, encoded, model, cfg, num_envs=min(num_envs, len(episodes)), device="cpu"
    )
    data = env.data
    if data.n_episodes != n_episodes:
        raise RuntimeError(f"the env has {data.n_episodes} episodes, expected {n_episodes}")
    lengths = data.episode_offsets[episodes + 1] - data.episode_offsets[episodes]
    n_expected = int(lengths.sum())
    if hasattr(policy, "reset"):
        policy.reset()
    env.queue_episodes(episodes.tolist())
    env.seed(seed)
    obs = env.reset()

    requests: list[int] = []
    flow: list[tuple[int, float, bool, bool, bool]] = []  # a sequential world's sessions
    sequential = data.dynamics is not None
    slates: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    attrs: list[np.ndarray] = []
    ndcg: list[float] = []
    invalid = 0
    done_episodes = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(episodes), desc=f"evaluate {policy.name}", unit="session")
    max_steps = (int(lengths.max(initial=0)) * cfg.slate_size + 1) * (len(episodes) + 1)
    steps = 0
    while done_episodes < len(episodes):
        if steps > max_steps:
            raise RuntimeError(f"evaluation of {policy.name!r} did not finish in {steps} steps")
        actions = np.asarray(policy.act(obs, env), dtype=np.int64).reshape(-1)
        obs, _, dones, infos = env.step(actions)
        steps += 1
        for i, info in enumerate(infos):
            if not info.get("queued"):
                continue
            requests.append(info["request"])
            if sequential:
                flow.append(
                    (info["episode_id"], info["survival"], info["session_start"],
                     info["later_session"], info["has_next_session"])
                )  # fmt: skip
            slates.append(info["slate"])
            probs.append(info["click_probs"])
            attrs.append(info["attractiveness"])
            ndcg.append(info["ndcg"])
            invalid += info["invalid_actions"]
            if dones[i]:
                done_episodes += 1
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    if len(requests) != n_expected and not sequential:  # dynamics end episodes early
        raise RuntimeError(f"evaluated {len(requests)} requests, expected {n_expected}")

    req = np.asarray(requests, dtype=np.int64)
    width = cfg.slate_size
    lens = np.array([len(s) for s in slates], dtype=np.int64)
    filled = np.arange(width)[None, :] < lens[:, None]
    slate_mat = np.full((len(req), width), -1, dtype=np.int64)
    slate_mat[filled] = np.concatenate(slates) if slates else []
    prob_mat = np.zeros((len(req), width))
    prob_mat[filled] = np.concatenate(probs) if probs else []
    attr_mat = np.zeros((len(req), width))
    attr_mat[filled] = np.concatenate(attrs) if attrs else []

    per_request = {
        "expected_clicks": prob_mat.sum(axis=1),
        "ctr@1": prob_mat[:, 0],
        f"ndcg@{width}": np.asarray(ndcg, dtype=np.float64),
        "mrr": expected_reciprocal_rank(prob_mat, model.structure, attr_mat, model.abandonment),
    }
    if truth is not None and sequential:
        # a sequential world's clicks depend on the user's state (satiation): only a replay
        # under the truth itself values them
        if model.name == "truth":
            per_request["true_expected_clicks"] = per_request["expected_clicks"]
    elif truth is not None:
        rows = truth.request_rows(test.request_ids[req])
        per_request["true_expected_clicks"] = truth.click_probs(rows, slate_mat).sum(axis=1)

    member_values = None
    if len(req):
        # one more pass over the slates, under the logged histories: the spread, not the centre
        members = model.member_click_probs(data.context, req, slate_mat)
        if members is not None:
            member_values = members.sum(axis=2).mean(axis=1)
    session_of = np.asarray(test.request_session)[req]
    n_sessions = len(np.unique(session_of))
    means = {k: float(v.mean()) if len(v) else float("nan") for k, v in per_request.items()}
    intervals = bootstrap_intervals(per_request, session_of, bootstrap, seed)
    if sequential:  # per request reached: weighted by the chance the user got there
        flows = np.array(flow, dtype=np.float64).reshape(-1, 5)
        survival = flows[:, 1]
        for key, value in per_request.items():
            means[key] = float((survival * value).sum() / max(survival.sum(), 1e-300))
            intervals[key] = bootstrap_intervals(
                {key: survival * value}, session_of, bootstrap, seed, survival
            )[key]
    epistemic = {}
    if member_values is not None:
        epistemic["expected_clicks"] = epistemic_interval(member_values, means["expected_clicks"])
    if sequential:
        long_term = long_term_metrics(per_request, flows, bootstrap, seed)
        for key, (mean, interval) in long_term.items():
            means[key], intervals[key] = mean, interval
    if sequential and truth is not None and model.name != "truth":
        # a fitted simulator's policy, valued again under the truth's own dynamics
        from rankgym.envs.click_models.simple import TruthClickModel

        true = evaluate(
            policy, test, encoded, TruthClickModel(truth=truth), config, truth=truth,
            num_envs=num_envs, bootstrap=bootstrap, seed=seed, max_sessions=max_sessions,
        )  # fmt: skip
        for key in ("expected_clicks", "long_term_value"):
            means[f"true_{key}"] = true.metrics[key]
            intervals[f"true_{key}"] = true.intervals[key]
    if sequential:
        per_request["survival"] = survival
    per_request["request"] = req
    per_request["slate"] = slate_mat
    per_request["click_probs"] = prob_mat
    return EvaluationResult(
        policy=policy.name,
        n_sessions=n_sessions,
        n_requests=len(req),
        metrics=means,
        intervals=intervals,
        invalid_actions=int(invalid),
        per_request=per_request,
        epistemic=epistemic,
        member_values=member_values,
    )


LONG_TERM_METRICS = ("long_term_value", "session_length", "sessions", "return_rate")


def long_term_metrics(
    per_request: dict[str, np.ndarray], flow: np.ndarray, bootstrap: int, seed: int
) -> dict[str, tuple[float, tuple[float, float]]]:
    """A sequential world's per-episode metrics with 95% bootstrap intervals over episodes.

    Every request counts with the chance that the user reached it (1 for each reached one
    when the user's choices are sampled; ``env.user_choices=expected`` walks the whole latent
    timeline and weights it):

    * ``long_term_value``: expected clicks per episode (a session, or a user's sessions);
      ``true_long_term_value`` the same under the truth, when there is one;
    * ``session_length``: requests per session;
    * ``sessions``: sessions per episode;
    * ``return_rate``: the share of sessions the user came back after, among those with a
      following session to come back to (``env.episode=user``; ``nan`` otherwise).

    Args:
        per_request: ``expected_clicks`` (and ``true_expected_clicks``) per request.
        flow: ``float64[N, 5]`` per request: its episode, the chance the user reached it,
            whether it opened a session, opened one after an earlier one, and whether a next
            session exists.
    """
    episode, weight = flow[:, 0].astype(np.int64), flow[:, 1]
    opens, later, has_next = (flow[:, k] > 0 for k in (2, 3, 4))
    first = (opens & ~later).astype(np.float64)  # one per episode
    values = {"long_term_value": per_request["expected_clicks"]}
    if "true_expected_clicks" in per_request:
        values["true_long_term_value"] = per_request["true_expected_clicks"]
    ratios = {
        **{k: (weight * v, first) for k, v in values.items()},
        "session_length": (weight, weight * opens),
        "sessions": (weight * opens, first),
        "return_rate": (weight * later, weight * opens * has_next),
    }
    out = {}
    for key, (value, per) in ratios.items():
        total = per.sum()
        if total <= 0:
            out[key] = (float("nan"), (float("nan"), float("nan")))
            continue
        interval = bootstrap_intervals({key: value}, episode, bootstrap, seed, per)[key]
        out[key] = (float(value.sum() / total), interval)
    return out


def bootstrap_intervals(
    per_request: dict[str, np.ndarray],
    session: np.ndarray,
    resamples: int,
    seed: int,
    denominator: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap intervals of per-request means, resampling whole sessions.

    Each resample's value is the sum of its rows' values divided by its number of rows, or by
    the sum of its rows' ``denominator`` (a ratio estimator such as self-normalised IPS).
    """
    keys = list(per_request)
    if resamples == 0 or len(session) == 0:
        return {k: (float("nan"), float("nan")) for k in keys}
    _, group = np.unique(session, return_inverse=True)
    n = int(group.max()) + 1
    counts = np.bincount(group, weights=denominator, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(group, weights=per_request[k], minlength=n) for k in keys], 1)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(keys)))
    chunk = max(1, (1 << 22) // n)  # bounds the [chunk, n] weight matrix
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(np.float64)
        total = weights @ counts
        out[start : start + m] = (weights @ sums) / np.where(total > 0, total, 1.0)[:, None]
    low, high = np.percentile(out, [2.5, 97.5], axis=0)
    return {k: (float(low[j]), float(high[j])) for j, k in enumerate(keys)}
