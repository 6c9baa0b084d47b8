"""Ranking metrics of slates, in one place: the environments' request infos and the evaluation
protocol (:mod:`rankgym.agents.evaluation`) both compute them here."""

from __future__ import annotations

import numpy as np


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


def first_click_probs(
    click_probs: np.ndarray,
    structure: str,
    attractiveness: np.ndarray | None = None,
    abandonment: np.ndarray | None = None,
) -> np.ndarray:
    """``float64[N, L]`` probability that position ``i`` holds the first click of the slate.

    Args:
        click_probs: ``[N, L]`` click probability per position (0 past a slate's end).
        structure: the click model's structure (``pbm``, ``cascade``, ``dcm``, ``independent``).
        attractiveness: ``[N, L]`` attractiveness of the placed items, needed for ``dcm``.
        abandonment: ``[L]`` probability of leaving after a skip at each position (``dcm``).

    ``cascade`` and ``dcm`` users scan top-down and go on after a skip unless they leave, so
    the first click is at ``i`` with probability ``a_i * prod_{j<i} (1 - a_j)(1 - s_j)`` (for
    ``cascade`` this is the click probability itself); for ``pbm`` and ``independent``
    positions are independent: ``p_i * prod_{j<i} (1 - p_j)``.
    """
    p = np.asarray(click_probs, dtype=np.float64)
    if structure == "cascade":
        return p
    if structure == "dcm":
        if attractiveness is None:
            raise ValueError("first-click probabilities under dcm need the attractiveness")
        p = np.asarray(attractiveness, dtype=np.float64)
        stay = 1.0 if abandonment is None else 1.0 - np.asarray(abandonment)[: p.shape[1]]
        none_above = np.cumprod((1.0 - p) * stay, axis=1)
        none_above = np.concatenate([np.ones((len(p), 1)), none_above[:, :-1]], axis=1)
        return p * none_above
    none_above = np.cumprod(1.0 - p, axis=1)
    none_above = np.concatenate([np.ones((len(p), 1)), none_above[:, :-1]], axis=1)
    return p * none_above


def expected_reciprocal_rank(
    click_probs: np.ndarray,
    structure: str,
    attractiveness: np.ndarray | None = None,
    abandonment: np.ndarray | None = None,
) -> np.ndarray:
    """``float64[N]`` expected reciprocal rank of the first click (0 without a click).

    Arguments as for :func:`first_click_probs`.
    """
    first = first_click_probs(click_probs, structure, attractiveness, abandonment)
    return first @ (1.0 / np.arange(1, first.shape[1] + 1))
