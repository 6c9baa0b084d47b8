"""A user-response model learned from logs: continuation, satiation and return.

A click model fitted to a log says what a user clicks in one request; in a sequential world
(``dataset.dynamics``) what a user is shown also decides whether the session goes on, how
tired they are of a category and whether they come back. :func:`fit_user_dynamics` learns
those three from the log alone (what was shown, the clicks, the session structure and the
timestamps) on top of a fitted click model, and returns a :class:`FittedUserDynamics` that the
replay engine runs exactly as it runs the truth's (the click model then serves it through
:meth:`~rankgym.envs.click_models.base.ClickModel.user_dynamics`).

The model has the functional forms of :mod:`rankgym.logs.dynamics`, each fitted by maximum
likelihood:

* **Satiation.** Each impression's satiation level is computed from the slates the user was
  shown before it (decay per request, half-life in days from the timestamps). Clicks are then
  ``examination * sigmoid(logit(a) + shift - weight * level)`` with ``a`` the click model's
  attractiveness; ``shift`` and ``weight`` by likelihood, the decay and half-life on a grid.
* **Continuation.** Whether another request followed, Bernoulli in ``base + slope * S -
  disappointment * (C - S)``, with ``C`` the slate's expected clicks and ``S`` its expected
  satisfying clicks. An item's satisfaction is ``sigmoid(theta . features)``: an intercept,
  the item's numeric columns (the synthetic world's ``price_band``), its appeal and how often
  the logger showed it. The appeal is the click model's attractiveness logit averaged over one
  fixed sample of the log's requests, the same for every item: averaged over the logger's own
  impressions it would also say where the logger chose to show the item. The satisfaction the
  log cannot show (the synthetic world's hidden quality) is seen only as far as it moves
  clicks.
* **Return.** Whether the user's following session came, Bernoulli in ``base + slope * session
  satisfaction``; the gap, exponential with mean ``gap_days * exp(-gap_slope * satisfaction)``.

Censoring: on a sequential world's timeline (``reached`` given) a request is at risk of a
continuation when its latent session has a further request, and a session at risk of a return
when its user has a further latent session, the same opportunities the replay offers. On a
plain log the longest session length caps sessions, and a user's final session counts as a
departure only when it ended more than the 95th percentile of the observed gaps before the
log's end.

A log that cannot identify a dynamic is refused with one line naming what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize, minimize_scalar

from rankgym.envs.click_models.base import ClickModel, LogContext, logged_rankings
from rankgym.logs import SessionLog
from rankgym.logs.dynamics import (
    SECONDS_PER_DAY,
    DynamicsParams,
    UserDynamics,
    play_sessions,
)

GROUP_COLUMN = "category"  # the item column whose values are the satiation groups
DECAYS = (0.5, 0.65, 0.8, 0.9)  # satiation decay per request, searched
HALF_LIVES = (1.0, 3.0, 7.0)  # satiation half-life in days, searched
CAP = 0.99  # the largest continuation and return probability
APPEAL_REQUESTS = 256  # the requests over which an item's appeal is averaged (fewer: see below)
APPEAL_PAIRS = 1 << 21  # at most this many (request, item) pairs for the appeal
APPEAL_CHUNK = 1 << 15  # (request, item) pairs per attractiveness call
EPS = 1e-4


class FittedUserDynamics(UserDynamics):
    """:class:`UserDynamics` fitted to a log: the click model's attractiveness logit is moved
    by ``shift`` (its average over satiation levels recentred) before satiation lowers it.

    Attributes:
        report: what the fit saw and found (at-risk counts, log-likelihoods, the grid's pick).
    """

    def __init__(
        self,
        params: DynamicsParams,
        item_group: np.ndarray,
        item_satisfaction: np.ndarray,
        shift: float = 0.0,
        report: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(params, item_group, item_satisfaction)
        self.shift = float(shift)
        self.report = dict(report or {})

    def satiate(self, attr: np.ndarray, items: np.ndarray, satiation: np.ndarray) -> np.ndarray:
        """Attractiveness ``[B, K]`` with the fitted shift, lowered by satiation."""
        p = np.clip(attr, 1e-9, 1 - 1e-9)
        shifted = 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p) + self.shift)))
        return super().satiate(np.where(items >= 0, shifted, attr), items, satiation)


@dataclass
class _Timeline:
    """The reached requests of a log in each user's time order, and the censoring."""

    reached: np.ndarray  # bool[R]
    session: np.ndarray  # int[R] session code of each request
    continues: np.ndarray  # bool[R] the session's next request was reached
    cont_risk: np.ndarray  # bool[R] reached, and the session could have gone on
    order: np.ndarray  # reached request codes, by (user, time)
    user_offsets: np.ndarray  # offsets of each user's run in ``order``
    gap_before: np.ndarray  # float[R] days since the user's preceding session (NaN: none)


def _refuse(source: str, missing: str) -> ValueError:
    return ValueError(f"{source}: cannot fit a user-response model: {missing}")


def check_identifiable(log: SessionLog, group_column: str = GROUP_COLUMN) -> None:
    """Raise a one-line ``ValueError`` naming what ``log`` lacks to identify a dynamic:
    timestamps (return gaps, satiation recovery), sessions of several requests (continuation),
    users with several sessions (return), an item group column (satiation)."""
    source = str(log.meta.get("source", "log"))
    if log.n_requests == 0:
        raise _refuse(source, "the log has no requests")
    if np.ptp(log.request_timestamp) == 0:
        raise _refuse(source, "no timestamps (every request has the same time): return gaps")
    if int(np.diff(log.session_offsets).max()) < 2:
        raise _refuse(source, "every session has one request: continuation is not identified")
    session_user = log.request_user[log.session_offsets[:-1]]
    if np.bincount(session_user).max(initial=0) < 2:
        raise _refuse(source, "no user has two sessions: return is not identified")
    if group_column not in log.item_features:
        columns = ", ".join(sorted(log.item_features)) or "none"
        raise _refuse(
            source,
            f"no item column {group_column!r} for satiation groups (item columns: {columns})",
        )


def _timeline(log: SessionLog, reached: np.ndarray | None) -> _Timeline:
    n_r = log.n_requests
    session = log.request_session.astype(np.int64)
    index = np.arange(n_r) - log.session_offsets[session]
    length = np.diff(log.session_offsets)[session]
    last_in_session = index + 1 >= length
    if reached is None:  # a plain log: the longest session caps the others
        reached = np.ones(n_r, dtype=bool)
        cont_risk = index + 1 < int(length.max())
    else:  # a timeline: a request could go on where its latent session has another
        cont_risk = ~last_in_session
    nxt = np.minimum(np.arange(n_r) + 1, n_r - 1)
    continues = ~last_in_session & reached[nxt]
    rows = np.flatnonzero(reached)
    order = rows[np.lexsort((log.request_timestamp[rows], log.request_user[rows]))]
    counts = np.bincount(log.request_user[order], minlength=log.n_users)
    gap = np.full(n_r, np.nan)  # days since the user's previous reached request (new sessions)
    same_user = log.request_user[order[1:]] == log.request_user[order[:-1]]
    new_session = session[order[1:]] != session[order[:-1]]
    step = (log.request_timestamp[order[1:]] - log.request_timestamp[order[:-1]]) / SECONDS_PER_DAY
    follows = same_user & new_session
    gap[order[1:][follows]] = np.maximum(step[follows], 0.0)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return _Timeline(reached, session, continues, reached & cont_risk, order, offsets, gap)


def _satiation_levels(
    log: SessionLog,
    t: _Timeline,
    ranking: np.ndarray,
    item_group: np.ndarray,
    decay: float,
    half_life: float,
) -> np.ndarray:
    """``float64[R, W]`` each shown item's group satiation before its request, from the slates
    its user was shown earlier (decay per request, half-life in days between sessions)."""
    params = DynamicsParams(satiation_decay=decay, satiation_half_life_days=half_life)
    dyn = UserDynamics(params, item_group, np.zeros(len(item_group)))
    counts = np.diff(t.user_offsets)
    users = np.flatnonzero(counts > 0)
    state = dyn.initial_satiation(len(users))
    levels = np.zeros(ranking.shape)
    for k in range(int(counts.max(initial=0))):
        has = np.flatnonzero(counts[users] > k)
        req = t.order[t.user_offsets[users[has]] + k]
        gap = t.gap_before[req]
        back = ~np.isnan(gap)
        if back.any():
            state[has[back]] = dyn.recover(state[has[back]], gap[back])
        shown = ranking[req]
        group = item_group[np.maximum(shown, 0)]
        levels[req] = np.where(shown >= 0, np.take_along_axis(state[has], group, axis=1), 0.0)
        state[has] = dyn.expose(state[has], shown)
    return levels


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def _bernoulli_nll(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum())


def _fit_satiation(
    logit: np.ndarray, exam: np.ndarray, click: np.ndarray, level: np.ndarray
) -> tuple[float, float, float]:
    """``(shift, weight, nll)`` of clicks ``~ exam * sigmoid(logit + shift - weight * level)``.

    The weight by likelihood; the shift, for each weight, keeps the expected clicks equal to
    the logged ones (a free shift fixes the click model's calibration in logit space instead,
    and lost a quarter of the clicks of a neural model's fit)."""

    def clicks(shift: float, weight: float) -> np.ndarray:
        return exam / (1.0 + np.exp(-(logit + shift - weight * level)))

    target = click.sum()

    def shift_for(weight: float) -> float:
        return brentq(lambda k: clicks(k, weight).sum() - target, -20.0, 20.0)

    def nll(weight: float) -> float:
        return _bernoulli_nll(clicks(shift_for(weight), weight), click)

    res = minimize_scalar(nll, bounds=(0.0, 5.0), method="bounded", options={"xatol": 1e-4})
    weight = float(res.x) if res.fun < nll(0.0) else 0.0
    return shift_for(weight), weight, nll(weight)


def _level(probability: Callable[[float], np.ndarray], outcome: np.ndarray, base: float) -> float:
    """The base (in ``[0, 1]``) at which ``probability(base)`` (clipped to ``[0, CAP]``)
    averages to the outcomes' rate: a likelihood fit of a clipped linear probability does
    not keep the rate (it cost 5% of the logged session length), so its level is reset,
    as the neural click model's is (``calibrate: level``)."""

    def gap(b: float) -> float:
        return float(np.clip(probability(b), 0.0, CAP).mean() - outcome.mean())

    if gap(0.0) >= 0 or gap(1.0) <= 0:
        return base
    return float(brentq(gap, 0.0, 1.0, xtol=1e-6))


def _appeal(model: ClickModel, context: LogContext, reached: np.ndarray) -> tuple[np.ndarray, int]:
    """``(float64[I], n)``: each item's attractiveness logit under ``model``, averaged over
    one seeded sample of ``n`` reached requests of ``context.log``, the same for every item.

    The logger shows an item where it fits the request, so an item's mean logit over its own
    impressions says as much about the logger's targeting as about the item: that measure
    left the fitted satisfaction correlated 0.76-0.79 with the truth's, this one 0.96-0.98
    (docs/decisions.md). ``n`` is at most :data:`APPEAL_REQUESTS`, fewer for a catalogue so
    large that :data:`APPEAL_PAIRS` pairs would be exceeded (at least 16)."""
    log = context.log
    candidates = np.flatnonzero(reached)
    n = min(len(candidates), max(16, min(APPEAL_REQUESTS, APPEAL_PAIRS // max(log.n_items, 1))))
    rows = np.sort(np.random.default_rng(0).choice(candidates, n, replace=False))
    total = np.zeros(log.n_items)
    items, step = np.arange(log.n_items), max(1, APPEAL_CHUNK // n)
    for start in range(0, log.n_items, step):
        part = items[start : start + step]
        attr = model.attractiveness(context, rows, np.broadcast_to(part, (n, len(part))))
        total[part] = _logit(attr).sum(axis=0)
    return total / n, n


def _item_features(
    log: SessionLog, group_column: str, appeal: np.ndarray, shown: np.ndarray
) -> np.ndarray:
    """``float64[I, F]``: an intercept, the standardised numeric item columns, the appeal and
    how often the logger showed the item (``log1p``; a logger shows more often what it ranks
    higher)."""
    columns = [np.ones(log.n_items)]
    for name in sorted(log.item_features):
        values = np.asarray(log.item_features[name])
        if name == group_column or values.dtype.kind not in "biuf":
            continue
        columns.append(values.astype(np.float64))
    columns += [appeal, np.log1p(shown)]
    x = np.stack(columns, axis=1)
    scale = x[:, 1:].std(axis=0)
    x[:, 1:] = (x[:, 1:] - x[:, 1:].mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return x


def fit_user_dynamics(
    log: SessionLog,
    model: ClickModel,
    reached: np.ndarray | None = None,
    group_column: str = GROUP_COLUMN,
) -> FittedUserDynamics:
    """Fit continuation, satiation and return to ``log`` on top of the fitted ``model``.

    Args:
        log: the training log; with ``reached``, a sequential world's latent timeline of
            which only the ``reached`` requests (``bool[R]``) were logged (the others carry
            no clicks and are never read, except as the opportunities they offered).
        model: a click model fitted to the same requests (PBM structure).
        reached: see ``log``; ``None``: every request of ``log`` was logged.
        group_column: the item column whose values are the satiation groups.
    """
    check_identifiable(log if reached is None else log.select_requests(reached), group_column)
    source = str(log.meta.get("source", "log"))
    if model.structure != "pbm":
        raise _refuse(source, f"the click model has structure {model.structure!r}; needs pbm")
    t = _timeline(log, None if reached is None else np.asarray(reached, dtype=bool))
    groups, item_group = np.unique(np.asarray(log.item_features[group_column]).astype(str),
                                   return_inverse=True)  # fmt: skip
    ranking, click = logged_rankings(log)
    width = ranking.shape[1]
    rows = np.flatnonzero(t.reached)
    shown = ranking[rows] >= 0
    attr = np.zeros(ranking.shape)
    context = model.context(log)  # built once: a neural model pools every request's state
    attr[rows] = model.attractiveness(context, rows, ranking[rows])
    logit, exam = _logit(attr), model.examination[:width]

    # satiation: the grid's decay and half-life, the likelihood's shift and weight
    best = None
    for decay in DECAYS:
        for half_life in HALF_LIVES:
            level = _satiation_levels(log, t, ranking, item_group, decay, half_life)
            shift, weight, nll = _fit_satiation(
                logit[rows][shown], np.broadcast_to(exam, shown.shape)[shown],
                click[rows][shown], level[rows][shown],
            )  # fmt: skip
            if best is None or nll < best[-1]:
                best = (decay, half_life, shift, weight, level, nll)
    decay, half_life, shift, weight, level, sat_nll = best
    sig = 1.0 / (1.0 + np.exp(-(logit + shift - weight * level)))
    probs = np.where(ranking >= 0, exam * sig, 0.0)

    # an item's appeal over one sample of requests, and how often the logger showed it
    appeal, appeal_requests = _appeal(model, context, t.reached)
    n_seen = np.bincount(ranking[rows][shown], minlength=log.n_items)
    features = _item_features(log, group_column, appeal, n_seen)

    # continuation: Bernoulli in base + slope * S - disappointment * (C - S)
    risk = np.flatnonzero(t.cont_risk)
    if len(risk) == 0 or t.continues[risk].all():
        raise _refuse(source, "no session ended before its longest length: continuation")
    y_cont = t.continues[risk].astype(np.float64)
    p_risk, items_risk = probs[risk], np.maximum(ranking[risk], 0)
    expected = p_risk.sum(axis=1)

    def satisfaction(theta: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(features @ theta)))

    def cont_nll(x: np.ndarray) -> float:
        s = (p_risk * satisfaction(x[3:])[items_risk]).sum(axis=1)
        p = np.clip(x[0] + x[1] * s - x[2] * (expected - s), EPS, CAP)
        return _bernoulli_nll(p, y_cont) + 1e-3 * float(x[3:] @ x[3:])

    start = np.concatenate([[y_cont.mean(), 0.0, 0.0], np.zeros(features.shape[1])])
    bounds = [(0.0, 1.0), (0.0, 20.0), (0.0, 20.0)] + [(-10.0, 10.0)] * features.shape[1]
    res = minimize(cont_nll, start, method="L-BFGS-B", bounds=bounds)
    base, slope, disappointment = (float(v) for v in res.x[:3])
    item_sat = satisfaction(res.x[3:])
    s_risk = (p_risk * item_sat[items_risk]).sum(axis=1)
    base = _level(lambda b: b + slope * s_risk - disappointment * (expected - s_risk), y_cont, base)

    # return: per session, from its satisfaction; the gap's exponential mean
    pleased = (probs * item_sat[np.maximum(ranking, 0)]).sum(axis=1) * t.reached
    y_ret, s_ret, gaps, s_gap = _returns(log, t, pleased, reached is not None)
    if len(gaps) == 0 or y_ret.all():
        raise _refuse(source, "no user both came back and stayed away: return is not identified")

    def ret_nll(x: np.ndarray) -> float:
        return _bernoulli_nll(np.clip(x[0] + x[1] * s_ret, EPS, CAP), y_ret)

    res_ret = minimize(ret_nll, [y_ret.mean(), 0.0], method="L-BFGS-B",
                       bounds=[(0.0, 1.0), (0.0, 20.0)])  # fmt: skip
    return_slope = float(res_ret.x[1])
    return_base = _level(lambda b: b + return_slope * s_ret, y_ret, float(res_ret.x[0]))

    def gap_nll(x: np.ndarray) -> float:
        log_mean = x[0] - x[1] * s_gap
        return float((log_mean + gaps * np.exp(-log_mean)).sum())

    res_gap = minimize(gap_nll, [np.log(gaps.mean()), 0.0], method="L-BFGS-B",
                       bounds=[(-10.0, 10.0), (0.0, 20.0)])  # fmt: skip
    gap_days, gap_slope = float(np.exp(res_gap.x[0])), float(res_gap.x[1])
    params = DynamicsParams(
        satiation_weight=weight, satiation_decay=decay, satiation_half_life_days=half_life,
        satisfaction_slope=0.0, satisfaction_price=0.0,  # satisfaction is per item, fitted
        continue_base=base, continue_slope=slope, disappointment=disappointment,
        continue_max=CAP, return_base=return_base, return_slope=return_slope,
        return_max=CAP, gap_days=gap_days, gap_slope=gap_slope,
    )  # fmt: skip
    report = {
        "groups": len(groups),
        "impressions": int(shown.sum()),
        "appeal_requests": appeal_requests,
        "continuation_at_risk": len(risk),
        "continuation_rate": float(y_cont.mean()),
        "return_at_risk": len(y_ret),
        "return_rate": float(y_ret.mean()),
        "gaps": len(gaps),
        "mean_gap_days": float(gaps.mean()),
        "satiation_nll": sat_nll,
        "continuation_nll": float(res.fun),
        "return_nll": float(res_ret.fun),
        "satisfaction_theta": [float(v) for v in res.x[3:]],
    }
    return FittedUserDynamics(params, item_group, item_sat, shift, report)


def _returns(
    log: SessionLog, t: _Timeline, pleased: np.ndarray, timeline: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per session at risk of a return: ``(returned, satisfaction)``; per return: ``(gap
    days, satisfaction)``."""
    n_s = log.n_sessions
    session_pleased = np.bincount(t.session, pleased, n_s)
    reached_session = np.bincount(t.session, t.reached, n_s) > 0
    prev, following = _following_sessions(log, log.request_timestamp[log.session_offsets[:-1]])
    nxt = np.full(n_s, -1)
    nxt[prev] = following
    if timeline:  # at risk where a further latent session exists; returned if it was reached
        risk = reached_session & (nxt >= 0)
        returned = risk & reached_session[np.maximum(nxt, 0)]
    else:  # a plain log: the user's final session is at risk once the gaps could have passed
        gap_days = t.gap_before[~np.isnan(t.gap_before)]
        horizon = np.quantile(gap_days, 0.95) * SECONDS_PER_DAY if len(gap_days) else 0.0
        last = np.maximum.reduceat(log.request_timestamp, log.session_offsets[:-1])
        returned = nxt >= 0
        risk = returned | (last + horizon <= log.request_timestamp.max())
    # the gap: from a session's last reached request to the following session's first
    gaps = t.gap_before[log.session_offsets[:-1][nxt[returned]]]
    return (
        returned[risk].astype(np.float64),
        session_pleased[risk],
        np.maximum(gaps, 1e-3),
        session_pleased[returned],
    )


def _following_sessions(log: SessionLog, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(session, following)`` pairs: each session that its user follows with another (by
    ``start``), and the one that follows it."""
    user = log.request_user[log.session_offsets[:-1]]
    order = np.lexsort((start, user))
    same = user[order[1:]] == user[order[:-1]]
    return order[:-1][same], order[1:][same]


def session_outcomes(
    log: SessionLog, reached: np.ndarray, time: np.ndarray
) -> dict[str, np.ndarray]:
    """What the users of a latent timeline did: each reached session's length (requests), and
    each return's gap in days (from a session's last reached request to the user's following
    session), and per session with a following latent session whether the user came back."""
    n_s = log.n_sessions
    session = log.request_session.astype(np.int64)
    length = np.bincount(session, reached, n_s).astype(np.int64)
    last = np.full(n_s, np.iinfo(np.int64).min)
    np.maximum.at(last, session[reached], time[reached])
    start = time[log.session_offsets[:-1]]
    prev, nxt = _following_sessions(log, start)
    at_risk = length[prev] > 0
    back = at_risk & (length[nxt] > 0)
    gaps = (start[nxt[back]] - last[prev[back]]) / SECONDS_PER_DAY
    return {
        "session_length": length[length > 0],
        "gap_days": gaps,
        "returned": back[at_risk],
    }


def response_fidelity(
    model: ClickModel,
    log: SessionLog,
    reached: np.ndarray,
    draws: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """How well ``model`` (a click model with a user-response model) predicts what the
    logging policy's users did on held-out sessions.

    The logged slates of ``log`` (a latent timeline, of which ``reached`` was logged) are
    played forward ``draws`` times under the model (:func:`~rankgym.logs.dynamics.play_sessions`)
    and the predicted session lengths, return gaps and return rate are set against the logged
    ones: means, their relative errors, the observed means' standard errors and the
    two-sample Kolmogorov-Smirnov distance of the distributions.
    """
    from scipy.stats import ks_2samp

    dynamics = model.user_dynamics()
    if dynamics is None:
        raise ValueError(f"reward model {model.name} has no user-response model to check")
    reached = np.asarray(reached, dtype=bool)
    observed = session_outcomes(log, reached, log.request_timestamp)
    ranking, _ = logged_rankings(log)
    attr = model.attractiveness(model.context(log), np.arange(log.n_requests), ranking)
    starts = log.session_offsets[:-1]
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(draws):
        played, _, time = play_sessions(
            dynamics, lambda rows, items: attr[rows], model.examination, ranking,
            log.session_offsets, log.request_user[starts], log.request_timestamp[starts], rng,
        )  # fmt: skip
        runs.append(session_outcomes(log, played, time))
    out: dict[str, float] = {}
    for key in ("session_length", "gap_days", "returned"):
        seen = observed[key].astype(np.float64)
        predicted = np.concatenate([r[key] for r in runs]).astype(np.float64)
        out[f"{key}_logged"] = float(seen.mean())
        out[f"{key}_logged_se"] = float(seen.std(ddof=1) / np.sqrt(len(seen)))
        out[f"{key}_predicted"] = float(predicted.mean())
        out[f"{key}_rel_error"] = float(predicted.mean() / seen.mean() - 1)
        if key != "returned":
            out[f"{key}_ks"] = float(ks_2samp(seen, predicted).statistic)
        out[f"{key}_n"] = len(seen)
    return out
