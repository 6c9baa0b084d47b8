"""Click models fitted on logged sessions: PBM (EM), cascade and DCM (counting MLE).

All three estimate an attractiveness per (query, item) pair, as in Chuklin, Markov and de Rijke,
*Click Models for Web Search* (2015), ch. 4. Most pairs of a realistic log are seen a handful of
times, so every estimate is smoothed hierarchically with ``prior_strength`` pseudo-observations
(a Beta prior whose mean is the level above):

* global mean ``g = sum(numerator) / sum(denominator)``;
* per item ``(sum_item(numerator) + m * g) / (sum_item(denominator) + m)``;
* per (query, item) pair ``(sum_pair(numerator) + m * item) / (sum_pair(denominator) + m)``.

A pair never logged falls back to its item's value, an item never logged to the global mean.
:class:`_PairTable` holds this logic once for the three models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rankgym.envs.click_models.base import MAX_POSITIONS, ClickModel, LogContext, log_fingerprint
from rankgym.logs import SessionLog


def _check_positive(name: str, value: Any, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise a ValueError naming the argument and the allowed values."""
    kind = "an int" if integer else "a number"
    bound = ">= 0" if allow_zero else "> 0"
    ok_type = (
        isinstance(value, int | np.integer)
        if integer
        else isinstance(value, int | float | np.integer | np.floating)
    )
    if isinstance(value, bool) or not ok_type or not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name}={value!r}: expected {kind} {bound}")


class _PairTable:
    """Hierarchically smoothed rates per (query, item) pair, item and globally.

    Pairs are keyed ``query * n_items + item`` (int64), sorted, and looked up with
    :func:`numpy.searchsorted`.
    """

    def __init__(self, prior_strength: float) -> None:
        self.prior_strength = float(prior_strength)
        self.n_items = 0
        self.keys = np.zeros(0, dtype=np.int64)
        self.values = np.zeros(0, dtype=np.float64)
        self.item_values = np.zeros(0, dtype=np.float64)
        self.global_value = 0.0

    @staticmethod
    def index(query: np.ndarray, item: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct pair keys of impressions and each impression's index into them."""
        keys = np.asarray(query, dtype=np.int64) * n_items + np.asarray(item, dtype=np.int64)
        return np.unique(keys, return_inverse=True)

    def fit(
        self,
        keys: np.ndarray,
        inverse: np.ndarray,
        numerator: np.ndarray,
        denominator: np.ndarray,
        n_items: int,
    ) -> _PairTable:
        """Smoothed ``numerator / denominator`` per pair (impression-level arrays)."""
        m = self.prior_strength
        self.n_items = int(n_items)
        self.keys = keys
        total = float(denominator.sum())
        self.global_value = float(numerator.sum()) / total if total > 0 else 0.5
        pair_item = keys % n_items
        pair_num = np.bincount(inverse, weights=numerator, minlength=len(keys))
        pair_den = np.bincount(inverse, weights=denominator, minlength=len(keys))
        item_num = np.bincount(pair_item, weights=pair_num, minlength=n_items)
        item_den = np.bincount(pair_item, weights=pair_den, minlength=n_items)
        self.item_values = (item_num + m * self.global_value) / np.maximum(item_den + m, 1e-12)
        self.item_values[item_den + m <= 0] = self.global_value
        prior = self.item_values[pair_item]
        self.values = np.where(
            pair_den + m > 0, (pair_num + m * prior) / np.maximum(pair_den + m, 1e-12), prior
        )
        return self

    def lookup(self, query: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``float64`` values of ``(query[:, None], items)``; 0 where ``items < 0``."""
        query, items = np.broadcast_arrays(
            np.asarray(query, dtype=np.int64), np.asarray(items, dtype=np.int64)
        )
        valid = (items >= 0) & (items < self.n_items)
        safe = np.where(valid, items, 0)
        keys = query * self.n_items + safe
        out = self.item_values[safe] if self.n_items else np.zeros(items.shape)
        if len(self.keys):
            at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            hit = self.keys[at] == keys
            out = np.where(hit, self.values[at], out)
        out = np.where(items >= self.n_items, self.global_value, out)
        return np.where(items >= 0, out, 0.0).astype(np.float64)

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}keys": self.keys,
            f"{prefix}values": self.values,
            f"{prefix}item_values": self.item_values,
            f"{prefix}global": np.array([self.global_value, self.n_items], dtype=np.float64),
        }

    def load_state(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        self.keys = np.asarray(arrays[f"{prefix}keys"], dtype=np.int64)
        self.values = np.asarray(arrays[f"{prefix}values"], dtype=np.float64)
        self.item_values = np.asarray(arrays[f"{prefix}item_values"], dtype=np.float64)
        self.global_value = float(arrays[f"{prefix}global"][0])
        self.n_items = int(arrays[f"{prefix}global"][1])


def _request_click_bounds(log: SessionLog) -> tuple[np.ndarray, np.ndarray]:
    """Per-request (first, last) clicked position; ``first = +inf``, ``last = -1`` if no click."""
    req = log.impression_request
    clicked = log.click == 1
    big = np.iinfo(np.int64).max
    first = np.full(log.n_requests, big, dtype=np.int64)
    last = np.full(log.n_requests, -1, dtype=np.int64)
    np.minimum.at(first, req[clicked], log.position[clicked].astype(np.int64))
    np.maximum.at(last, req[clicked], log.position[clicked].astype(np.int64))
    return first, last


class _PairClickModel(ClickModel):
    """Shared parts: the attractiveness pair table, its lookup and its persistence."""

    def __init__(self, prior_strength: float = 20.0) -> None:
        super().__init__()
        _check_positive("prior_strength", prior_strength, allow_zero=True)
        self.prior_strength = float(prior_strength)
        self.table = _PairTable(self.prior_strength)
        self.train_log_likelihood: float | None = None

    def _start_fit(self, train: SessionLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if train.n_impressions == 0:
            raise ValueError(f"reward model {self.name!r}: the training log has no impressions")
        query = train.request_query[train.impression_request]
        keys, inverse = _PairTable.index(query, train.item, train.n_items)
        return query, keys, inverse

    def _finish_fit(self, train: SessionLog) -> None:
        self.dataset = log_fingerprint(train)
        self.train_log_likelihood = self.log_likelihood(train)

    def attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """Smoothed attractiveness of ``(query of request, item)``; see the module docstring."""
        items = np.atleast_2d(np.asarray(items, dtype=np.int64))
        query = context.log.request_query[np.asarray(requests, dtype=np.int64)]
        return self.table.lookup(query[:, None], items)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), **self.table.state("attr_")}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        self.table.load_state(arrays, "attr_")

    def config(self) -> dict[str, Any]:
        return {"prior_strength": self.prior_strength}


POSITION_BIAS = ("conditional", "em")


def conditional_examination(
    pos: np.ndarray, click: np.ndarray, inverse: np.ndarray, n_pos: int, iterations: int = 200
) -> np.ndarray | None:
    """Examination ratios from the variation of each pair's position, pair effects removed.

    With clicks approximately Poisson(``theta[k] * alpha_pair``), the clicks of a pair given its
    total are multinomial with probabilities ``theta[k_i] / sum_j theta[k_j]``, free of
    ``alpha_pair`` (the fixed-effects conditional likelihood). It is maximised by the MM update
    ``theta[k] = clicks_k / sum_i(clicks_pair(i) / sum_pair(theta))`` over impressions of pairs
    shown at least twice with at least one click. Only these pairs carry information on
    ``theta`` once every pair has its own attractiveness, which is why plain EM (where clicked
    pairs seen once pull every ``theta`` towards 1) flattens the curve. Returns
    ``theta / theta[0]`` clipped to ``(0, 1]``, ``None`` when no pair qualifies.
    """
    n_pairs = int(inverse.max()) + 1 if len(inverse) else 0
    shown = np.bincount(inverse, minlength=n_pairs)
    clicks = np.bincount(inverse, weights=click, minlength=n_pairs)
    use = (shown[inverse] >= 2) & (clicks[inverse] > 0)
    if not use.any():
        return None
    pos, inv, click = pos[use], inverse[use], click[use]
    clicks_at = np.bincount(pos, weights=click, minlength=n_pos)
    if clicks_at[0] <= 0:
        return None
    theta = np.ones(n_pos)
    for _ in range(iterations):
        total = np.bincount(inv, weights=theta[pos], minlength=n_pairs)
        exposure = np.bincount(pos, weights=clicks[inv] / total[inv], minlength=n_pos)
        new = np.where(exposure > 0, clicks_at / np.maximum(exposure, 1e-300), np.nan)
        new = new / new[0]
        # positions without usable clicks take the value of the position above
        for k in range(1, n_pos):
            if not np.isfinite(new[k]) or new[k] <= 0:
                new[k] = new[k - 1]
        new = np.clip(new, 1e-6, 1.0)
        done = np.max(np.abs(new - theta)) < 1e-9
        theta = new
        if done:
            break
    return theta


class PBMClickModel(_PairClickModel):
    """Position-based model fitted by expectation-maximisation (Chuklin et al. 2015, ch. 4).

    ``P(click at k) = examination[k] * attractiveness(query, item)``. E-step, for a skipped
    impression: ``P(E=1 | C=0) = t (1 - a) / (1 - t a)`` and ``P(A=1 | C=0) = (1 - t) a / (1 -
    t a)``; a click sets both to 1. M-step: ``examination[k]`` is the mean of ``P(E=1 | .)`` over
    impressions at ``k``; attractiveness is the smoothed mean of ``P(A=1 | .)`` per pair.

    Most (query, item) pairs of a log are seen once or twice, and a free attractiveness per pair
    makes joint EM biased (the incidental-parameter problem): a pair seen once and clicked is
    explained by ``attractiveness = 1`` and pulls every ``examination[k]`` towards 1, while
    strong smoothing towards the item mean attributes the logging ranker's relevance to the
    position instead. ``position_bias="conditional"`` (default) therefore estimates the
    examination curve from pairs shown at several positions with the pair effect conditioned
    away (see :func:`conditional_examination`), then runs EM on the attractiveness with the
    curve fixed; ``"em"`` is the textbook joint EM.

    The product ``examination * attractiveness`` is what the data identify: scaling
    ``examination`` by ``c`` and attractiveness by ``1/c`` changes no click probability.
    ``"conditional"`` anchors ``examination[0] = 1`` (attractiveness = click probability at the
    top); under ``"em"`` only ratios ``examination[k] / examination[0]`` are meaningful.
    Positions deeper than the log keep the deepest logged position's examination.

    Args:
        prior_strength: pseudo-observations of the Beta prior (pair -> item -> global), >= 0.
        iterations: maximum number of EM iterations, >= 1.
        tol: stop when the mean training log-likelihood per impression improves by less, >= 0.
        position_bias: ``conditional`` or ``em`` (how the examination curve is estimated).
    """

    name = "pbm"
    structure = "pbm"

    def __init__(
        self,
        prior_strength: float = 20.0,
        iterations: int = 50,
        tol: float = 1e-6,
        position_bias: str = "conditional",
    ):
        super().__init__(prior_strength)
        _check_positive("iterations", iterations, integer=True)
        _check_positive("tol", tol, allow_zero=True)
        if position_bias not in POSITION_BIAS:
            raise ValueError(
                f"position_bias={position_bias!r}: expected one of {', '.join(POSITION_BIAS)}"
            )
        self.iterations = int(iterations)
        self.tol = float(tol)
        self.position_bias = position_bias
        self.n_iterations = 0

    def fit(self, train: SessionLog, **context: Any) -> PBMClickModel:
        """Run EM on ``train``'s impressions; returns self."""
        _, keys, inverse = self._start_fit(train)
        pos = train.position.astype(np.int64)
        click = train.click.astype(np.float64)
        n_pos = min(int(pos.max()) + 1, MAX_POSITIONS)
        keep = pos < n_pos
        pos, click, inverse = pos[keep], click[keep], inverse[keep]
        per_position = np.bincount(pos, minlength=n_pos).astype(np.float64)
        ones = np.ones(len(pos))
        fixed = None
        if self.position_bias == "conditional":
            fixed = conditional_examination(pos, click, inverse, n_pos)
        theta = fixed if fixed is not None else np.full(n_pos, 0.5)
        alpha = np.full(len(pos), 0.5)
        previous = -np.inf
        for it in range(self.iterations):
            t = theta[pos]
            p = np.clip(t * alpha, 1e-10, 1 - 1e-10)
            ll = float(np.mean(click * np.log(p) + (1 - click) * np.log1p(-p)))
            self.n_iterations = it + 1
            if ll - previous < self.tol:
                break
            previous = ll
            skip = 1.0 - click
            if fixed is None:
                post_e = click + skip * t * (1 - alpha) / (1 - p)
                theta = np.bincount(pos, weights=post_e, minlength=n_pos) / np.maximum(
                    per_position, 1
                )
            post_a = click + skip * (1 - t) * alpha / (1 - p)
            self.table.fit(keys, inverse, post_a, ones, train.n_items)
            alpha = self.table.values[inverse]
        exam = np.empty(MAX_POSITIONS)
        exam[:n_pos] = theta
        exam[n_pos:] = theta[-1]
        self.examination = exam
        self._finish_fit(train)
        return self

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "iterations": self.iterations,
            "tol": self.tol,
            "position_bias": self.position_bias,
        }


class CascadeClickModel(_PairClickModel):
    """Cascade model with abandonment, maximum likelihood (Chuklin et al. 2015, ch. 4).

    The user scans top-down, stops at the first click, and leaves after a skipped item with
    probability ``abandonment`` (one value for all positions). Without abandonment an
    impression is examined iff it is at or above its request's first click (every impression
    when nothing was clicked) and attractiveness is smoothed ``clicks / examinations`` per pair
    (counting). With it, a request without a click may have been left early, so which of its
    items were examined is latent: EM weighs each by its posterior probability of examination
    and re-estimates the abandonment from the expected departures.

    Args:
        prior_strength: pseudo-observations of the Beta prior (pair -> item -> global), >= 0.
        abandonment: ``em`` (estimate it) or ``none`` (fix it at 0: plain counting).
        iterations: EM iterations (``em``), >= 1.
    """

    name = "cascade"
    structure = "cascade"

    def __init__(
        self, prior_strength: float = 20.0, abandonment: str = "em", iterations: int = 30
    ) -> None:
        super().__init__(prior_strength)
        if abandonment not in ("em", "none"):
            raise ValueError(f"abandonment={abandonment!r}: expected one of em, none")
        _check_positive("iterations", iterations, integer=True)
        self.abandonment_mode, self.iterations = abandonment, int(iterations)

    def fit(self, train: SessionLog, **context: Any) -> CascadeClickModel:
        """Count (or run EM on) clicks and examinations of ``train``; returns self."""
        _, keys, inverse = self._start_fit(train)
        first, _ = _request_click_bounds(train)
        req, pos = train.impression_request, train.position.astype(np.int64)
        click = train.click.astype(np.float64)
        examined = (pos <= first[req]).astype(np.float64)  # all, where nothing was clicked
        self.table.fit(keys, inverse, click * examined, examined, train.n_items)
        if self.abandonment_mode == "em":
            self._em(train, keys, inverse, req, pos, click, first)
        self._finish_fit(train)
        return self

    def _em(self, train, keys, inverse, req, pos, click, first) -> None:
        width = int(pos.max()) + 1
        length = np.zeros(train.n_requests, dtype=np.int64)
        np.maximum.at(length, req, pos + 1)
        no_click = first[req] == np.iinfo(np.int64).max
        inside = np.arange(width)[None, :] < length[:, None]
        s = 0.1
        for _ in range(self.iterations):
            a = np.zeros((train.n_requests, width))
            a[req, pos] = self.table.values[inverse]
            stay = np.where(inside, 1 - s, 1.0)
            # r_k: reach k with no click; q_k: no click from k on, given k is examined
            reach = np.concatenate(
                [np.ones((len(a), 1)), np.cumprod((1 - a) * stay, axis=1)[:, :-1]], axis=1
            )
            q = np.ones((len(a), width + 1))
            for k in range(width - 1, -1, -1):
                last = ~(k + 1 < length)  # nothing after k: leaving or not looks the same
                go = np.where(last, 1.0, s + (1 - s) * q[:, k + 1])
                q[:, k] = np.where(inside[:, k], (1 - a[:, k]) * go, 1.0)
            p_none = np.maximum(q[:, 0], 1e-300)
            seen = reach * q[:, :width] / p_none[:, None]  # P(examined k | no click)
            leave = reach * (1 - a) * s / p_none[:, None]  # P(leave after k | no click)
            weight = np.where(no_click, seen[req, pos], (pos <= first[req]).astype(float))
            self.table.fit(keys, inverse, click * weight, weight, train.n_items)
            has_next = pos + 1 < length[req]
            leaves = np.where(no_click & has_next, leave[req, pos], 0.0).sum()
            skips = np.where(has_next & (click == 0), weight, 0.0).sum()
            s = float(np.clip(leaves / max(skips, 1e-12), 0.0, 0.99))
        self.abandonment = np.full(MAX_POSITIONS, s)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "abandonment": self.abandonment_mode,
            "iterations": self.iterations,
        }


class DCMClickModel(_PairClickModel):
    """Dependent click model, simplified maximum likelihood (Chuklin et al. 2015, ch. 4).

    After a click at ``k`` the user goes on with probability ``continuation[k]`` (lambda), after
    a skip always. Impressions at or above a request's last click (all when nothing was clicked)
    count as examined; attractiveness is smoothed ``clicks / examinations`` per pair, and
    ``continuation[k] = 1 - (last clicks at k) / (clicks at k)``, smoothed towards the pooled
    ratio over all positions with ``prior_strength`` pseudo-clicks. Positions deeper than the
    log get the pooled ratio.

    Args:
        prior_strength: pseudo-observations of the Beta priors, >= 0.
    """

    name = "dcm"
    structure = "dcm"

    def fit(self, train: SessionLog, **context: Any) -> DCMClickModel:
        """Count clicks, last clicks and examinations on ``train``; returns self."""
        _, keys, inverse = self._start_fit(train)
        _, last = _request_click_bounds(train)
        req = train.impression_request
        no_click = last[req] < 0
        examined = no_click | (train.position <= last[req])
        click = train.click.astype(np.float64)
        self.table.fit(keys, inverse, click * examined, examined.astype(np.float64), train.n_items)

        pos = train.position.astype(np.int64)
        clicked = (click == 1) & (pos < MAX_POSITIONS)
        clicks_at = np.bincount(pos[clicked], minlength=MAX_POSITIONS)[:MAX_POSITIONS]
        is_last = clicked & (pos == last[req])
        last_at = np.bincount(pos[is_last], minlength=MAX_POSITIONS)[:MAX_POSITIONS]
        pooled = 1.0 - last_at.sum() / clicks_at.sum() if clicks_at.sum() else 0.5
        m = self.prior_strength
        denom = clicks_at + m
        self.continuation = np.where(
            denom > 0,
            (clicks_at - last_at + m * pooled) / np.maximum(denom, 1e-12),
            pooled,
        ).astype(np.float64)
        self._finish_fit(train)
        return self
