"""Exact probabilities of a Plackett-Luce ranker, the synthetic world's logging policy.

A Plackett-Luce (PL) ranker with logits ``l`` draws position 0 with ``softmax(l)``, position 1
with the softmax of the rest, and so on (equivalently: sort by ``l + Gumbel noise``). Off-policy
estimators for rankings need three of its probabilities of a logged ranking ``a``:

* the **prefix** probability ``P(a_0, ..., a_k)``: a product of softmaxes, exact and cheap
  (:func:`prefix_probabilities`); at the last position it is the whole slate's probability;
* the **item-position marginal** ``P(item i at position k)``: a sum over every set of items that
  can fill positions ``0..k-1``. :func:`position_marginals` computes it exactly by dynamic
  programming over subsets (``2^L * L`` per request, vectorised over requests of one length) for
  lists of up to :data:`EXACT_MAX_LIST` items, and by Monte Carlo beyond, where the standard
  error is ``sqrt(p (1 - p) / draws)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXACT_MAX_LIST", "position_marginals", "prefix_probabilities"]

EXACT_MAX_LIST = 14  # 2^14 subsets per request: exact below, Monte Carlo above
_CHUNK_CELLS = 4_000_000  # subsets x requests held at once by the subset DP


def prefix_probabilities(logits: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``P(order[:k+1] drawn first, in that order)`` for every ``k``, per request.

    Args:
        logits: ``float64[R, L]`` PL logits of each request's items (``-inf``: padding, never
            drawn).
        order: ``int64[R, L]`` the logged ranking as column indices of ``logits``
            (``-1`` after the request's last position).

    Returns:
        ``float64[R, L]``: the prefix probabilities (NaN where ``order`` is ``-1``).
    """
    logits = np.asarray(logits, dtype=np.float64)
    valid = order >= 0
    shifted = logits - logits.max(axis=1, keepdims=True)
    weight = np.where(np.isfinite(shifted), np.exp(shifted), 0.0)
    drawn = np.take_along_axis(weight, np.maximum(order, 0), axis=1) * valid
    left = weight.sum(axis=1, keepdims=True) - np.cumsum(drawn, axis=1) + drawn  # before step k
    step = np.where(valid, drawn / np.where(valid, left, 1.0), 1.0)
    return np.where(valid, np.cumprod(step, axis=1), np.nan)


def position_marginals(
    logits: np.ndarray,
    lengths: np.ndarray,
    samples: int = 200,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``P(item i at position k)`` under PL, ``float64[R, L, L]`` (item, position).

    Exact for requests of at most :data:`EXACT_MAX_LIST` items; longer ones are estimated from
    ``samples`` Monte Carlo draws (standard error ``sqrt(p (1 - p) / samples)``).

    Args:
        logits: ``float64[R, L]`` logits, the first ``lengths[r]`` columns of row ``r`` used.
        lengths: ``int64[R]`` items per request (every one is ranked).
        samples: Monte Carlo draws per request for lists longer than the exact limit.
        rng: the generator of those draws.
    """
    logits = np.asarray(logits, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n, width = logits.shape
    out = np.zeros((n, width, width))
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        block = logits[rows, :length]
        if length <= EXACT_MAX_LIST:
            step = max(1, _CHUNK_CELLS // (1 << length))
            parts = [_exact(block[s : s + step]) for s in range(0, len(rows), step)]
            out[rows, :length, :length] = np.concatenate(parts)
        else:
            rng = rng if rng is not None else np.random.default_rng(0)
            out[rows, :length, :length] = _monte_carlo(block, samples, rng)
    return out


def _exact(logits: np.ndarray) -> np.ndarray:
    """Subset DP for ``R`` requests of one length ``L``: ``[R, L, L]`` marginals.

    ``F[S]`` is the probability that the first ``|S|`` draws are the set ``S`` (in any order):
    ``F[S] = sum_{j in S} F[S - j] * w_j / (W - W(S - j))``; then item ``i`` lands at position
    ``k`` with probability ``sum_{|S| = k, i not in S} F[S] * w_i / (W - W(S))``. Arrays are
    ``[subset, request]`` so that every gather reads whole rows.
    """
    n, length = logits.shape
    weight = np.exp(logits - logits.max(axis=1, keepdims=True)).T.copy()  # [L, R]
    subsets = np.arange(1 << length)
    bits = ((subsets[:, None] >> np.arange(length)) & 1).astype(np.float64)  # [2^L, L]
    size = bits.sum(axis=1).astype(np.int64)
    total = weight.sum(axis=0)
    left = total[None, :] - bits @ weight  # weight not yet drawn after S, [2^L, R]
    ratio = np.zeros((1 << length, n))  # F[S] / left[S]: the factor of the next draw
    ratio[0] = 1.0 / total
    out = np.zeros((length, length, n))  # [item, position, request]
    for k in range(length):
        level = np.flatnonzero(size == k)
        if k > 0:
            f = np.zeros((len(level), n))
            for j in range(length):  # S = parent + j for every parent without j
                has = np.flatnonzero((level >> j) & 1)
                f[has] += ratio[level[has] ^ (1 << j)] * weight[j]
            ratio[level] = f / left[level]
        # item i at position k: sum over |S| = k without i of F[S] w_i / left[S]
        out[:, k, :] = weight * ((1.0 - bits[level]).T @ ratio[level])
    return out.transpose(2, 0, 1)


def _monte_carlo(logits: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Empirical item-position frequencies of ``samples`` PL draws per request."""
    n, length = logits.shape
    counts = np.zeros((n, length, length))
    rows = np.arange(n)[:, None]
    slots = np.arange(length)[None, :]
    for _ in range(samples):
        order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)
        counts[rows, order, slots] += 1.0
    return counts / samples
