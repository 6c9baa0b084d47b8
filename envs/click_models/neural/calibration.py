"""The level of what the log never showed, set on held-out sessions (``calibrate: level``).

A fit that memorises its training pairs predicts less for the pairs it never saw, so every
member is fitted on 90% of the training sessions and its attractiveness logit shifted until its
expected clicks of the other 10%'s logged rankings equal their clicks (:func:`match_level`).
With ``crossfit`` each member holds out its own tenth (:func:`member_splits`). Under the cascade
structure the abandonment is set there too (:func:`calibrate_abandonment`).
"""

from __future__ import annotations

import numpy as np
import torch

from rankgym.envs.click_models.base import MAX_POSITIONS, ClickModel, positional_click_probs
from rankgym.envs.click_models.neural.network import Scorer
from rankgym.envs.click_models.neural.settings import NeuralSettings
from rankgym.envs.click_models.neural.structure import RequestBatch
from rankgym.logs import SessionLog


def member_splits(
    train: SessionLog, settings: NeuralSettings
) -> list[tuple[SessionLog, SessionLog]]:
    """``(fit on, calibrate on)`` per member: one 90/10 split shared by all, or with
    ``crossfit`` member ``m`` holding out the ``m``-th of ``max(10, ensemble)`` folds of one
    shuffle of the sessions (disjoint calibration sets: the level of one tenth, ~250 sessions on
    the default world, is off by its sampling error of a few percent)."""
    if not settings.crossfit:
        fit_on, held = train.split(0.1, seed=settings.seed)
        return [(fit_on, held)] * settings.ensemble
    order = np.random.default_rng(settings.seed).permutation(train.n_sessions)
    folds = np.array_split(order, max(10, settings.ensemble))
    splits = []
    for m in range(settings.ensemble):
        rest = np.concatenate([f for k, f in enumerate(folds) if k != m])
        splits.append(
            (train.select_sessions(np.sort(rest)), train.select_sessions(np.sort(folds[m])))
        )
    return splits


def calibrate(model: ClickModel, pairs: list[tuple[Scorer, RequestBatch]]) -> None:
    """Shift each member's attractiveness logit to match the clicks of its held-out requests
    (and, under ``model``'s cascade structure, set the abandonment on them)."""
    if model.structure == "cascade":
        calibrate_abandonment(model, pairs)  # matches the levels too
        return
    for module, batch in pairs:
        match_level(model, module, batch, torch.arange(len(batch.query)))


def calibrate_abandonment(model: ClickModel, pairs: list[tuple[Scorer, RequestBatch]]) -> None:
    """The cascade's abandonment that maximises the held-out likelihood, the members' levels
    matched at each candidate (a profile likelihood over one shared parameter).

    Fitted jointly with memorised training pairs, a skip is explained by a low attractiveness
    more than by leaving: the fit's abandonment was 0.22 on the cascade world, whose users leave
    after a skip with probability 0.3 (BENCHMARKS.md).
    """
    base = []  # each member's unshifted logits: the search moves only the shift
    for module, batch in pairs:
        with torch.no_grad():
            module.shift.fill_(0.0)
            base.append(batch.logits(module, torch.arange(len(batch.query))))

    def held_out_ll(leave_logit: float) -> float:
        model.abandonment = np.full(MAX_POSITIONS, 1.0 / (1.0 + np.exp(-leave_logit)))
        total = 0.0
        for (module, batch), logit in zip(pairs, base, strict=True):
            rows = torch.arange(len(batch.query))
            match_level(model, module, batch, rows, logit)
            with torch.no_grad():
                module.abandon_logit.fill_(leave_logit)
                shifted = logit + module.shift
                mean = batch.log_likelihood(module, "cascade", rows, shifted)
            total += float(mean) * float(batch.valid.sum())
        return total

    low, high = -5.0, 2.0  # golden-section search over the logit (leave in 0.7%-88%)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = held_out_ll(a), held_out_ll(b)
    for _ in range(24):
        if fa > fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = held_out_ll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = held_out_ll(b)
    held_out_ll((low + high) / 2)  # leaves the model at the optimum


def match_level(
    model: ClickModel,
    module: Scorer,
    batch: RequestBatch,
    rows: torch.Tensor,
    unshifted: torch.Tensor | None = None,
) -> None:
    """Shift ``module``'s logit so that the expected clicks of ``rows``' logged rankings under
    ``model``'s structure equal their clicks (``unshifted``: the module's logits of ``rows``
    with no shift, when already known)."""
    observed = float(batch.clicks[batch.valid].sum())
    valid = batch.valid.numpy()
    with torch.no_grad():
        module.shift.fill_(0.0)
        if unshifted is None:
            unshifted = batch.logits(module, rows)
        logit = unshifted.double().numpy()

    def expected(shift: float) -> float:
        attr = 1.0 / (1.0 + np.exp(-(logit + shift)))
        return float(positional_click_probs(attr, valid, model).sum())

    low, high = -8.0, 8.0  # expected clicks increase with the shift: bisection
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if expected(mid) < observed else (low, mid)
    with torch.no_grad():
        module.shift.fill_((low + high) / 2)
