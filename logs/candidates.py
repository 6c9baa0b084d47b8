"""Candidate sets: what a request could have shown, beyond what it did show.

An impression log keeps the items a system showed; the system chose them from a larger set (a
campaign's catalog, a retrieval stage's output). A policy trained on the shown items alone can
only reorder the logging policy's choice; with the larger set it ranks for real. Three modes
(``dataset.candidates``):

* ``logged``: the shown items only (the log as it is);
* ``catalog``: every item of the catalog (the items table) is a candidate of every request;
* ``logged+sampled``: the shown items plus ``negatives`` items drawn from the catalog without
  replacement, ``uniform`` or by ``popularity`` (impressions + 1), seeded: the usual negative
  sampling for impression logs.

Candidates that were never shown have no logged click: their reward comes from a reward model
(the truth or one fitted on the shown items), and ``reward=logged`` refuses such a log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from rankgym.logs.session_log import SessionLog
from rankgym.logs.validation import CANDIDATES_FILE, _offsets

__all__ = [
    "CANDIDATES_FILE",
    "CANDIDATE_MODES",
    "NEGATIVE_SAMPLING",
    "CandidateOptions",
    "add_candidates",
]

CANDIDATE_MODES = ("logged", "catalog", "logged+sampled")
NEGATIVE_SAMPLING = ("uniform", "popularity")
_CHUNK_CELLS = 4_000_000  # requests x items scored at once when sampling


@dataclass
class CandidateOptions:
    """The candidate-set options every real-log adapter shares (``dataset.candidates`` ...).

    Attributes:
        candidates: ``logged``, ``catalog`` or ``logged+sampled``.
        negatives: unshown items drawn per request (``logged+sampled`` only), >= 1.
        negative_sampling: ``uniform`` or ``popularity`` (``logged+sampled`` only).
        negative_seed: seed of the draw.
    """

    candidates: str = "logged"
    negatives: int = 0
    negative_sampling: str = "uniform"
    negative_seed: int = 0

    def check_candidate_options(self) -> None:
        """Raise ``ValueError`` naming the ``dataset.`` key and its allowed values."""
        if self.candidates not in CANDIDATE_MODES:
            raise ValueError(
                f"dataset.candidates={self.candidates!r}; allowed: {', '.join(CANDIDATE_MODES)}"
            )
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(
                f"dataset.negative_sampling={self.negative_sampling!r}; "
                f"allowed: {', '.join(NEGATIVE_SAMPLING)}"
            )
        sampled = self.candidates == "logged+sampled"
        if sampled and self.negatives < 1:
            raise ValueError(
                f"dataset.negatives={self.negatives} with candidates=logged+sampled; allowed: >= 1"
            )
        if not sampled and self.negatives != 0:
            raise ValueError(
                f"dataset.negatives={self.negatives} is used only by "
                "dataset.candidates=logged+sampled; allowed here: 0"
            )

    def with_candidates(self, log: SessionLog) -> SessionLog:
        """``log`` with this source's candidate sets."""
        return add_candidates(
            log, self.candidates, self.negatives, self.negative_sampling, self.negative_seed
        )


def add_candidates(
    log: SessionLog,
    mode: str,
    negatives: int = 0,
    sampling: str = "uniform",
    seed: int = 0,
) -> SessionLog:
    """A copy of ``log`` whose requests get unshown candidates by ``mode`` (see the module).

    Every request draws from the whole catalog (the items table), so an adapter whose requests
    have different catalogs builds one log per catalog (OBD: one campaign per log).
    """
    if mode == "logged":
        return replace(log, unshown_offsets=None, unshown_items=None)
    popularity = np.bincount(log.item, minlength=log.n_items).astype(np.float64) + 1.0
    weight = np.log(popularity) if sampling == "popularity" else np.zeros(log.n_items)
    n = min(negatives, log.n_items)
    rng = np.random.default_rng(seed)
    sizes, chunks = [], []
    step = max(1, _CHUNK_CELLS // log.n_items)
    for start in range(0, log.n_requests, step):  # requests x items at a time, bounded memory
        stop = min(start + step, log.n_requests)
        rows = np.arange(log.request_offsets[start], log.request_offsets[stop])
        shown = np.zeros((stop - start, log.n_items), dtype=bool)
        shown[log.impression_request[rows] - start, log.item[rows]] = True
        if mode == "catalog":
            req, item = np.nonzero(~shown)
        else:
            # Gumbel top-k: keys log(weight) + Gumbel noise; shown items can never win
            keys = weight + rng.gumbel(size=shown.shape)
            keys[shown] = -np.inf
            top = np.argsort(-keys, axis=1, kind="stable")[:, :n]
            ok = np.take_along_axis(keys, top, axis=1) > -np.inf
            req, item = np.nonzero(ok)[0], top[ok]
        sizes.append(np.bincount(req, minlength=stop - start))
        chunks.append(item.astype(np.int32))
    offsets = _offsets(np.concatenate(sizes))
    return replace(log, unshown_offsets=offsets, unshown_items=np.concatenate(chunks))
