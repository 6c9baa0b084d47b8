"""Simulator fidelity: does a fitted reward model rank policies as the ground truth does?

A zoo of fixed policies (:func:`policy_zoo`: the baselines, noisy, mixed and reversed variants,
the oracle of the truth, plus any trained policy) is evaluated on the same held-out sessions under
the truth and under each fitted reward model; :func:`agreement` compares the two rankings of the
zoo (Kendall tau, Spearman, relative error, agreement on clearly different pairs). This is the
question to answer before training on a simulator fitted to real logs, asked where the truth is
known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rankgym.agents.baselines import (
    CosinePolicy,
    LoggedPolicy,
    PopularityPolicy,
    RandomPolicy,
    ScoringPolicy,
)
from rankgym.agents.evaluation import EPISTEMIC_LEVEL, epistemic_interval, evaluate
from rankgym.agents.ope import (
    LoggedSlates,
    OPEEstimate,
    TargetProbs,
    available_estimators,
    estimate,
)
from rankgym.encoders.encoded_log import EncodedLog
from rankgym.envs.click_models.base import ClickModel, LogContext
from rankgym.envs.replay import ReplayConfig
from rankgym.logs import SessionLog
from rankgym.logs.ground_truth import GroundTruth

if TYPE_CHECKING:
    from rankgym.envs.vector import BatchedReplayEnv

MIN_GAP = 0.05  # pairs of policies whose true values differ by more than this (relative)


def _zscore(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scores standardised over each row's placeable candidates (0 where masked)."""
    m = np.asarray(mask) > 0
    n = np.maximum(m.sum(axis=1, keepdims=True), 1)
    mean = np.where(m, scores, 0.0).sum(axis=1, keepdims=True) / n
    var = np.where(m, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / n
    return np.where(m, (scores - mean) / np.sqrt(np.maximum(var, 1e-12)), 0.0)


class MixturePolicy(ScoringPolicy):
    """A weighted sum of other policies' per-request z-scores, plus Gaussian noise.

    ``weights`` of -1 reverse a policy; ``noise`` (standard deviations of z-score) blurs it, so
    one class makes the zoo's noisy, mixed and reversed variants.

    Args:
        name: the reported name.
        parts: ``(policy, weight)`` pairs.
        noise: standard deviation of the noise added to the mixed z-score, >= 0.
        seed: seeds the noise (``reset`` restarts it).
    """

    def __init__(
        self,
        name: str,
        parts: list[tuple[ScoringPolicy, float]],
        noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(name)
        if noise < 0:
            raise ValueError(f"noise={noise}; allowed: >= 0")
        self.parts, self.noise, self.seed = parts, float(noise), seed
        self.rng = np.random.default_rng(seed)
        self.reads_logged_order = any(p.reads_logged_order for p, _ in parts)

    def fit(self, train: SessionLog, encoded: EncodedLog) -> MixturePolicy:
        """Fit every part; returns self."""
        for policy, _ in self.parts:
            policy.fit(train, encoded)
        return self

    def reset(self) -> None:
        """Restart the noise and every part."""
        self.rng = np.random.default_rng(self.seed)
        for policy, _ in self.parts:
            policy.reset()

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """The weighted z-scores of the parts, plus noise."""
        mask = obs["mask"]
        total = sum(w * _zscore(p.scores(obs, env), mask) for p, w in self.parts)
        if self.noise > 0:
            total = total + self.noise * self.rng.standard_normal(np.shape(mask))
        return total


class ModelGreedyPolicy(ScoringPolicy):
    """Ranks by a click model's attractiveness, whatever reward model the env runs.

    With the ground truth it is the truth's oracle (the top of the zoo; not deployable). With a
    fitted reward model it is the policy an ideal optimiser would learn in the simulator built
    on it: its value under the truth says what training in that simulator can be worth
    (:func:`greedy_values`).

    Args:
        model: the click model whose attractiveness ranks the candidates.
        name: the reported name (default ``greedy(<model name>)``).
    """

    def __init__(self, model: ClickModel, name: str | None = None) -> None:
        super().__init__(name or f"greedy({model.name})")
        self.model = model
        self._context: LogContext | None = None

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """The model's attractiveness of each candidate of the env's current requests (given
        each user's current history, for models that read it)."""
        log = env.data.log
        if self._context is None or self._context.log is not log:
            self._context = self.model.context(log)
        cand = np.asarray(obs["candidates"], dtype=np.int64)
        history = env.engine.history if self.model.needs_history else None
        return self.model.attractiveness(self._context, env.engine.req, cand, history)


class TruthOraclePolicy(ModelGreedyPolicy):
    """Ranks by the ground truth's attractiveness: the best policy of the synthetic world.

    Args:
        truth: the ground-truth click model.
    """

    def __init__(self, truth: ClickModel, name: str | None = None) -> None:
        super().__init__(truth, name or "truth-oracle")


class SatisfactionPolicy(ModelGreedyPolicy):
    """Ranks by a click model's attractiveness times ``1 + weight * satisfaction``: the
    lookahead oracle (:class:`~rankgym.agents.baselines.LookaheadOraclePolicy`) with a fixed
    satisfaction per item, so that it is the same policy whatever simulator values it.

    Args:
        model: the click model whose attractiveness it weights (the truth, in the zoo).
        satisfaction: ``float[I]`` per item code.
        weight: the value of a satisfying click's continuation, in clicks (``>= 0``).
        name: the reported name.
    """

    def __init__(
        self, model: ClickModel, satisfaction: np.ndarray, weight: float, name: str
    ) -> None:
        if weight < 0:
            raise ValueError(f"weight={weight}; allowed: >= 0")
        super().__init__(model, name)
        self.satisfaction, self.weight = np.asarray(satisfaction, dtype=np.float64), weight

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """Attractiveness weighted by the continuation a click buys."""
        items = np.maximum(np.asarray(obs["candidates"], dtype=np.int64), 0)
        return super().scores(obs, env) * (1 + self.weight * self.satisfaction[items])


class DiversityPolicy(ScoringPolicy):
    """A diversity re-ranker: a base policy's z-scores, less ``penalty`` for every item of the
    candidate's group already placed in the slate (the item column ``group_column``).

    Spreading a slate over groups costs clicks now and spares the user's satiation.

    Args:
        base: the policy re-ranked.
        penalty: z-score taken off per placed item of the same group (``>= 0``).
        name: the reported name.
        group_column: the item column of the groups.
    """

    def __init__(
        self, base: ScoringPolicy, penalty: float, name: str, group_column: str = "category"
    ) -> None:
        if penalty < 0:
            raise ValueError(f"penalty={penalty}; allowed: >= 0")
        super().__init__(name)
        self.base, self.penalty, self.group_column = base, float(penalty), group_column
        self.reads_logged_order = getattr(base, "reads_logged_order", False)
        self.group = np.zeros(0, dtype=np.int64)

    def fit(self, train: SessionLog, encoded: EncodedLog) -> DiversityPolicy:
        """Fit the base policy; read the item groups."""
        self.base = self.base.fit(train, encoded) if hasattr(self.base, "fit") else self.base
        if self.group_column not in train.item_features:
            raise ValueError(f"{self.name}: the log has no item column {self.group_column!r}")
        values = np.asarray(train.item_features[self.group_column]).astype(str)
        self.group = np.unique(values, return_inverse=True)[1].astype(np.int64)
        return self

    def reset(self) -> None:
        """Reset the base policy."""
        self.base.reset()

    def scores(self, obs: dict[str, np.ndarray], env: BatchedReplayEnv) -> np.ndarray:
        """The base's z-scores less the penalty per placed item of the same group."""
        mask = obs["mask"]
        cand = np.asarray(obs["candidates"], dtype=np.int64)
        engine = env.engine
        width = engine.slate.shape[1]
        placed_items = np.take_along_axis(cand, np.minimum(engine.slate, cand.shape[1] - 1), 1)
        placed = np.arange(width)[None, :] < engine.pos[:, None]
        placed_group = np.where(placed, self.group[np.maximum(placed_items, 0)], -1)
        group = np.where(cand >= 0, self.group[np.maximum(cand, 0)], -2)
        repeats = (group[:, :, None] == placed_group[:, None, :]).sum(axis=2)
        return _zscore(self.base.scores(obs, env), mask) - self.penalty * repeats


# the zoo's policies that rank by the truth itself: no model fitted on the log's features can
# see what they select on, so experiments.fidelity also reports the error without them
TRUTH_RANKED = (
    "truth-oracle", "truth-oracle-noisy", "anti-truth-oracle",
    "lookahead-3", "lookahead-10", "truth-oracle+diversity", "lookahead-10+diversity",
)  # fmt: skip


def policy_zoo(truth: ClickModel | None, noise: float = 1.0, seed: int = 0) -> list[ScoringPolicy]:
    """The fixed policies the fidelity report ranks (unfitted; call ``fit`` on each).

    From the worst to the best on the synthetic world: reversed relevance, random, the logging
    policy, popularity, mixtures of cosine and popularity, cosine, and (with a ``truth``) the
    truth's oracle and a noisy copy of it. A sequential world's truth adds the policies that
    trade clicks now for value later: lookahead (:class:`SatisfactionPolicy`) and diversity
    re-rankers (:class:`DiversityPolicy`).
    """
    cos, pop = CosinePolicy, PopularityPolicy
    zoo: list[ScoringPolicy] = [
        RandomPolicy(seed=seed),
        LoggedPolicy(),
        pop(),
        cos(),
        MixturePolicy("cosine-noisy", [(cos(), 1.0)], noise, seed),
        MixturePolicy("cosine+popularity-0.25", [(cos(), 0.25), (pop(), 0.75)]),
        MixturePolicy("cosine+popularity-0.5", [(cos(), 0.5), (pop(), 0.5)]),
        MixturePolicy("cosine+popularity-0.75", [(cos(), 0.75), (pop(), 0.25)]),
        MixturePolicy("cosine+logged", [(cos(), 1.0), (LoggedPolicy(), 1.0)]),
        MixturePolicy("anti-cosine", [(cos(), -1.0)]),
        MixturePolicy("anti-popularity", [(pop(), -1.0)]),
        MixturePolicy("anti-logged", [(LoggedPolicy(), -1.0)]),
    ]
    if truth is not None:
        oracle = TruthOraclePolicy(truth, TRUTH_RANKED[0])
        zoo += [
            oracle,
            MixturePolicy(TRUTH_RANKED[1], [(oracle, 1.0)], noise, seed),
            MixturePolicy(TRUTH_RANKED[2], [(oracle, -1.0)]),
        ]
    dynamics = None if truth is None else truth.user_dynamics()
    if dynamics is not None:  # a sequential world: what trades clicks now for value later
        sat = dynamics.item_satisfaction
        lookahead = SatisfactionPolicy(truth, sat, 10.0, "lookahead-10")
        zoo += [
            SatisfactionPolicy(truth, sat, 3.0, "lookahead-3"),
            lookahead,
            DiversityPolicy(cos(), 0.5, "cosine+diversity"),
            DiversityPolicy(TruthOraclePolicy(truth), 0.5, "truth-oracle+diversity"),
            DiversityPolicy(lookahead, 0.5, "lookahead-10+diversity"),
        ]
    return zoo


# ---------------------------------------------------------------------- agreement
def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two value vectors (ties in either count as neither agreement)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float((dx * dy).sum())
    norm = np.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return concordant_minus_discordant / norm if norm > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # average the ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass(frozen=True)
class Agreement:
    """How a method's values of the zoo agree with the true values.

    Attributes:
        kendall_tau, spearman: rank correlations with the true values.
        rel_error: mean of ``|value - true| / true`` over the zoo.
        max_rel_error: the largest ``|value - true| / true``.
        within: share of the zoo valued within :data:`MIN_GAP` (relative) of the true value.
        pair_agreement: share of policy pairs whose true values differ by more than
            :data:`MIN_GAP` (relative) that the method orders like the truth.
        pairs: how many such pairs there are.
    """

    kendall_tau: float
    spearman: float
    rel_error: float
    max_rel_error: float
    within: float
    pair_agreement: float
    pairs: int


def clear_pairs(
    true_values: np.ndarray, min_gap: float = MIN_GAP
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` of policies, and whether their true values differ by more than
    ``min_gap`` (relative to the smaller one)."""
    t = np.asarray(true_values, dtype=np.float64)
    i, j = np.triu_indices(len(t), k=1)
    gap = np.abs(t[i] - t[j]) / np.maximum(np.minimum(np.abs(t[i]), np.abs(t[j])), 1e-12)
    return i, j, gap > min_gap


def relative_errors(true_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``|value - true| / |true|`` per policy."""
    t, v = np.asarray(true_values, dtype=np.float64), np.asarray(values, dtype=np.float64)
    return np.abs(v - t) / np.maximum(np.abs(t), 1e-12)


def agreement(true_values: np.ndarray, values: np.ndarray, min_gap: float = MIN_GAP) -> Agreement:
    """Compare a method's values of the zoo with the true values (same order of policies)."""
    t, v = np.asarray(true_values, dtype=np.float64), np.asarray(values, dtype=np.float64)
    i, j, clear = clear_pairs(t, min_gap)
    same = np.sign(t[i] - t[j]) == np.sign(v[i] - v[j])
    error = relative_errors(t, v)
    return Agreement(
        kendall_tau=kendall_tau(t, v),
        spearman=spearman(t, v),
        rel_error=float(np.mean(error)),
        max_rel_error=float(np.max(error)),
        within=float(np.mean(error <= min_gap)),
        pair_agreement=float(same[clear].mean()) if clear.any() else float("nan"),
        pairs=int(clear.sum()),
    )


def apart_pairs(true_values: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[int, float]:
    """How many policy pairs a method calls apart (their intervals ``[low, high]`` do not
    overlap), and the share of them that the truth orders the same way (NaN when none).

    This is what a user can act on: an order the intervals separate should be the true one.
    """
    t = np.asarray(true_values, dtype=np.float64)
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    i, j = np.triu_indices(len(t), k=1)
    i_above, j_above = lo[i] > hi[j], lo[j] > hi[i]
    apart = i_above | j_above
    right = (i_above & (t[i] > t[j])) | (j_above & (t[j] > t[i]))
    n = int(apart.sum())
    return n, float(right[apart].mean()) if n else float("nan")


def paired_apart(
    true_values: np.ndarray,
    values: np.ndarray,
    members: np.ndarray,
    level: float = EPISTEMIC_LEVEL,
) -> tuple[int, float]:
    """:func:`apart_pairs` for an ensemble, judged on each pair's difference: a pair is apart
    when the epistemic interval of ``value_i - value_j`` (from the members' paired differences,
    :func:`~rankgym.agents.evaluation.epistemic_interval`) excludes 0.

    ``members`` is ``[policies, M]``. A member that rates every policy higher moves both values
    of a pair together, so the paired interval is narrower than the two values' intervals and
    separates pairs that are close in value but consistently ordered.
    """
    t, v = np.asarray(true_values, dtype=np.float64), np.asarray(values, dtype=np.float64)
    i, j = np.triu_indices(len(t), k=1)
    apart = np.zeros(len(i), dtype=bool)
    for n, (a, b) in enumerate(zip(i, j, strict=True)):
        low, high = epistemic_interval(members[a] - members[b], v[a] - v[b], level)
        apart[n] = low > 0 or high < 0
    right = np.sign(v[i] - v[j]) == np.sign(t[i] - t[j])
    k = int(apart.sum())
    return k, float(right[apart].mean()) if k else float("nan")


def covered(true_values: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """The share of policies whose true value lies in their interval ``[low, high]``."""
    t = np.asarray(true_values, dtype=np.float64)
    return float(np.mean((np.asarray(low) <= t) & (t <= np.asarray(high))))


def zoo_value(metrics: dict[str, float]) -> float:
    """What the zoo is ranked by: clicks per user episode in a sequential world
    (``long_term_value``), else expected clicks per request."""
    return metrics.get("long_term_value", metrics["expected_clicks"])


def value_zoo(
    policies: list[Any],
    test: SessionLog,
    encoded: EncodedLog,
    models: dict[str, ClickModel],
    config: ReplayConfig,
    truth: GroundTruth | None = None,
    num_envs: int = 256,
    seed: int = 0,
    max_sessions: int | None = None,
    progress: bool = False,
    slates: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    members: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, float]]:
    """Expected clicks per request of every policy under every model, on the same sessions
    (a sequential world's: clicks per user episode, :func:`zoo_value`).

    Returns ``{model name: {policy name: value}}``; with a ``truth``, also ``"truth"`` (the true
    value of the slates each policy built in the truth's env). A ``slates`` dict receives each
    policy's ``(requests, slates)`` from its run under the first model (for off-policy
    estimates of the same slates, :func:`ope_zoo`); a ``members`` dict receives
    ``{model: {policy: member values}}`` of the ensemble models, from which
    :func:`~rankgym.agents.evaluation.epistemic_interval` makes each value's interval.
    """
    from tqdm.auto import tqdm

    values: dict[str, dict[str, float]] = {name: {} for name in models}
    jobs = [(p, name, m) for p in policies for name, m in models.items()]
    for policy, name, model in tqdm(jobs, desc="fidelity", unit="eval", disable=not progress):
        result = evaluate(
            policy, test, encoded, model, config, truth=truth, num_envs=num_envs,
            bootstrap=0, seed=seed, max_sessions=max_sessions,
        )  # fmt: skip
        values[name][policy.name] = zoo_value(result.metrics)
        per_request = "long_term_value" not in result.metrics  # members value requests
        if members is not None and result.member_values is not None and per_request:
            members.setdefault(name, {})[policy.name] = result.member_values
        if slates is not None and policy.name not in slates:
            slates[policy.name] = (result.per_request["request"], result.per_request["slate"])
    return values


def greedy_values(
    models: dict[str, ClickModel],
    test: SessionLog,
    encoded: EncodedLog,
    truth: ClickModel,
    config: ReplayConfig,
    num_envs: int = 256,
    seed: int = 0,
    max_sessions: int | None = None,
) -> dict[str, float]:
    """True expected clicks per request of each fitted model's greedy policy.

    The greedy policy ranks by the model's attractiveness: the optimum of the simulator built
    on it, so its true value bounds what a policy trained in that simulator is worth (a model
    can order the zoo well and still put the wrong items on top). Models that replay the log's
    own clicks (``logged``) are skipped: their greedy policy reads the held-out clicks.
    """
    out = {}
    for name, model in models.items():
        if model.replays_clicks or model.name == "truth":  # the truth: the oracle itself
            continue
        result = evaluate(
            ModelGreedyPolicy(model, f"greedy({name})"), test, encoded, truth, config,
            num_envs=num_envs, bootstrap=0, seed=seed, max_sessions=max_sessions,
        )  # fmt: skip
        out[name] = zoo_value(result.metrics)
    return out


def ope_zoo(
    slates: dict[str, tuple[np.ndarray, np.ndarray]],
    test: SessionLog,
    models: dict[str, ClickModel],
    clip: float | None = None,
    seed: int = 0,
    exclude: set[str] | frozenset[str] = frozenset(),
    bootstrap: int = 200,
) -> dict[str, dict[str, OPEEstimate]]:
    """Off-policy estimates of every policy's slates: ``{method: {policy: estimate}}``.

    Methods: every propensity estimator the log allows (:data:`rankgym.agents.ope.ESTIMATORS`), and
    ``dr(<model>)`` / ``idr(<model>)`` for each fitted model in ``models`` (the doubly robust
    estimators with that model as control variate; a model that replays the log's own clicks
    is skipped). Policies named in ``exclude`` (those that read the logged ranking) are not
    estimated. ``bootstrap`` resamples of sessions give each estimate its interval.
    """
    out: dict[str, dict[str, OPEEstimate]] = {}
    fitted = {name: m for name, m in models.items() if not m.replays_clicks}
    contexts = {name: m.context(test) for name, m in fitted.items()}
    for policy, (requests, slate) in slates.items():
        if policy in exclude:
            continue
        logged = LoggedSlates.from_log(test, requests, slate.shape[1])
        plain = TargetProbs.deterministic(logged, slate)
        for name in available_estimators(logged, plain):
            out.setdefault(name, {})[policy] = estimate(name, logged, plain, clip, bootstrap, seed)
        for name, model in fitted.items():
            probs = model.click_probs(contexts[name], requests, slate)
            own = model.click_probs(contexts[name], requests, logged.items)
            target = TargetProbs.deterministic(logged, slate, probs, own)
            allowed = available_estimators(logged, target)
            for kind in [k for k in ("dr", "idr") if k in allowed]:
                est = estimate(kind, logged, target, clip, bootstrap, seed)
                out.setdefault(f"{kind}({name})", {})[policy] = est
    return out
