"""The click structure around the attractiveness: a PBM or a cascade with abandonment.

PBM: a position is examined with a probability of its own, fixed before the fit from the pairs
the logger showed at several positions (:func:`conditional_exam_logits`; learned with the
attractiveness only when the log does not identify it). Cascade: the user scans top-down until
the first click and leaves after a skipped item with a probability the fit learns and the
level calibration resets (:mod:`.calibration`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rankgym.encoders.pooling import UserPooling
from rankgym.envs.click_models.base import MAX_POSITIONS, logged_rankings
from rankgym.envs.click_models.fitted import _PairTable, conditional_examination
from rankgym.envs.click_models.neural.network import Scorer
from rankgym.envs.click_models.neural.settings import NeuralSettings
from rankgym.envs.click_models.neural.tables import Tables
from rankgym.logs import SessionLog


class RequestBatch:
    """A log's logged requests as dense ``[R, W]`` tensors, for request-level likelihoods: the
    inputs ``settings`` read (``tables``, the user states ``pooling`` makes), on ``device``.
    ``weights`` (one per request, 1 until a fit sets a member's bootstrap draw) weight each
    request's likelihood."""

    def __init__(
        self,
        log: SessionLog,
        tables: Tables,
        pooling: UserPooling,
        settings: NeuralSettings,
        device: torch.device,
    ) -> None:
        rankings, clicks = logged_rankings(log)
        width = min(rankings.shape[1], MAX_POSITIONS)
        rankings, clicks = rankings[:, :width], clicks[:, :width]
        valid = rankings >= 0
        has_click = clicks.any(axis=1)
        first = np.where(has_click, np.argmax(clicks > 0, axis=1), width)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.width = width
        self.items, self.queries = t(tables.items), t(tables.queries)
        self.states = t(tables.request_states(log, pooling, settings.session_history))
        self.query = t(log.request_query.astype(np.int64))
        self.profiles = t(tables.user_profiles[log.request_user]) if settings.profile else None
        self.codes, self.valid = t(np.where(valid, rankings, 0)), t(valid)
        self.clicks = t(clicks.astype(np.float32))
        self.before = t((np.arange(width)[None, :] < first[:, None]) & valid)
        self.first, self.has_click = t(np.minimum(first, width - 1)), t(has_click)
        # the items' impression counts leave out the user session itself, as for a held-out one
        stats = tables.left_out_statistics(log, width) if settings.item_stats else None
        self.item_stat = None if stats is None else t(stats)
        self.weights = t(np.ones(log.n_requests, dtype=np.float32))

    def logits(self, module: Scorer, b: torch.Tensor) -> torch.Tensor:
        """``[len(b), W]`` attractiveness logits of the logged items of requests ``b``."""
        q, u = self.queries[self.query[b]], self.states[b]
        p = None if self.profiles is None else self.profiles[b]
        i = self.items[self.codes[b]]
        if self.item_stat is not None:  # the last item column (Tables.with_item_statistics)
            i = torch.cat([i[..., :-1], self.item_stat[b][..., None]], dim=-1)
        return module(q, u, i, self.codes[b], p)

    def log_likelihood(
        self, module: Scorer, structure: str, b: torch.Tensor, logit: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean log-likelihood per impression of requests ``b`` under ``structure`` (given their
        attractiveness ``logit``, or the module's), each request weighted by its weight."""
        w = self.width
        logit = self.logits(module, b) if logit is None else logit
        if structure == "pbm":
            ll = pbm_log_likelihood(logit, module.exam_logit[:w], self.clicks[b], self.valid[b])
        else:
            ll = cascade_log_likelihood(
                logit, module.abandon_logit, self.valid[b], self.before[b], self.first[b],
                self.has_click[b],
            )  # fmt: skip
        weight = self.weights[b]
        return (ll * weight).sum() / (self.valid[b].sum(dim=1) * weight).sum().clamp(min=1e-12)


def pbm_log_likelihood(
    logit: torch.Tensor, exam_logit: torch.Tensor, clicks: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``[B]`` log-likelihood of requests' clicks: independent positions, p = a * exam."""
    log_p = nn.functional.logsigmoid(logit) + nn.functional.logsigmoid(exam_logit)
    log_p = torch.clamp(log_p, max=-1e-6)
    log_not = torch.log(-torch.expm1(log_p))  # log(1 - p), stably
    return ((clicks * log_p + (1 - clicks) * log_not) * valid).sum(dim=1)


def cascade_log_likelihood(
    logit: torch.Tensor,
    abandon_logit: torch.Tensor,
    valid: torch.Tensor,
    before: torch.Tensor,
    first: torch.Tensor,
    has_click: torch.Tensor,
) -> torch.Tensor:
    """``[B]`` log-likelihood of requests under a cascade with abandonment.

    With a first click at ``c``: every item above was skipped without leaving, then ``c``
    clicked; what follows a click is not modelled (the cascade stops). Without a click:
    ``q_0``, from ``q_k = (1 - a_k)(s + (1 - s) q_{k+1})`` (``q = 1 - a`` at the last item).
    """
    log_skip_stay = nn.functional.logsigmoid(-logit) + nn.functional.logsigmoid(-abandon_logit)
    clicked = (log_skip_stay * before).sum(dim=1) + nn.functional.logsigmoid(
        logit.gather(1, first[:, None]).squeeze(1)
    )
    a, s = torch.sigmoid(logit), torch.sigmoid(abandon_logit)
    q = torch.ones(len(logit), dtype=logit.dtype, device=logit.device)
    width = logit.shape[1]
    for k in range(width - 1, -1, -1):
        has_next = valid[:, k + 1] if k + 1 < width else torch.zeros_like(valid[:, k])
        go = torch.where(has_next, s + (1 - s) * q, torch.ones_like(q))
        q = torch.where(valid[:, k], (1 - a[:, k]) * go, q)
    return torch.where(has_click, clicked, torch.log(q.clamp(min=1e-12)))


def conditional_exam_logits(train: SessionLog) -> torch.Tensor | None:
    """``[MAX_POSITIONS]`` PBM examination logits from the pairs ``train`` shows at several
    positions (:func:`~rankgym.envs.click_models.fitted.conditional_examination`, anchored at 1
    on top; positions below the last logged one take its value); ``None`` when no pair
    identifies them."""
    query = train.request_query[train.impression_request]
    _, inverse = _PairTable.index(query, train.item, train.n_items)
    pos = train.position.astype(np.int64)
    keep = pos < MAX_POSITIONS
    n_pos = int(pos[keep].max()) + 1
    theta = conditional_examination(
        pos[keep], train.click[keep].astype(np.float64), inverse[keep], n_pos
    )
    if theta is None:
        return None
    exam = np.full(MAX_POSITIONS, theta[-1])
    exam[:n_pos] = theta
    exam = np.clip(exam, 1e-4, 1 - 1e-4)
    return torch.from_numpy(np.log(exam / (1 - exam)))
