"""The fitting loop: each member maximises the likelihood of its logged requests with Adam.

Every random draw comes from the member's own generators (seeded ``seed + m``: initialisation,
minibatch order and, with ``bootstrap``, its session weights; ``seed + m + 2**31``: dropout
masks), so a seeded fit is the same on every run on CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rankgym import threads
from rankgym.encoders.pooling import UserPooling
from rankgym.envs.click_models.neural.network import Scorer
from rankgym.envs.click_models.neural.settings import NeuralSettings
from rankgym.envs.click_models.neural.structure import RequestBatch, conditional_exam_logits
from rankgym.envs.click_models.neural.tables import Tables
from rankgym.logs import SessionLog


def new_member(tables: Tables, settings: NeuralSettings) -> Scorer:
    """An unfitted member shaped by ``tables`` and ``settings`` (fit and load alike)."""
    n_items = len(tables.items) if settings.item_bias else 0
    dim = tables.items.shape[1]
    return Scorer(dim, settings.hidden, n_items, settings.profile, settings.match, settings.dropout)


def bootstrap_weights(log: SessionLog, seed: int, variance: float = 1.0) -> np.ndarray:
    """``float32[R]`` request weights of one weighted-bootstrap draw over ``log``'s sessions:
    each session's weight is gamma with mean 1 and ``variance`` (1: exponential, the Bayesian
    bootstrap), shared by its requests. A fit on these weights is a fit on another log the same
    sessions could have given, without discarding sessions as a resample with replacement
    does."""
    rng = np.random.default_rng(seed)
    per_session = rng.gamma(1.0 / variance, variance, log.n_sessions)
    return per_session[log.request_session].astype(np.float32)


def fit_members(
    parts: list[SessionLog],
    structure: str,
    settings: NeuralSettings,
    tables: Tables,
    pooling: UserPooling,
    device: torch.device,
) -> list[Scorer]:
    """Member ``m`` fitted on ``parts[m]``'s logged requests under ``structure``, from seed
    ``settings.seed + m`` (with ``settings.bootstrap``, on its own :func:`bootstrap_weights`);
    under PBM with the examination fixed from its part when the part identifies it."""
    desc = f"fitting neural click model ({structure})"
    shared: dict[int, tuple[RequestBatch, torch.Tensor | None]] = {}
    members = []
    with tqdm(total=len(parts) * settings.epochs, desc=desc, unit="epoch", disable=None) as bar:
        for m, part in enumerate(parts):
            seed = settings.seed + m
            if id(part) not in shared:  # built once for a log the members share
                exam = conditional_exam_logits(part) if structure == "pbm" else None
                shared = {id(part): (RequestBatch(part, tables, pooling, settings, device), exam)}
            batch, exam = shared[id(part)]
            if settings.bootstrap > 0:
                weights = bootstrap_weights(part, seed, settings.bootstrap)
                batch.weights = torch.from_numpy(weights).to(device)
            module = new_member(tables, settings)
            members.append(fit_member(module, batch, structure, exam, settings, seed, bar))
    return members


def fit_member(
    module: Scorer,
    batch: RequestBatch,
    structure: str,
    exam_logits: torch.Tensor | None,
    settings: NeuralSettings,
    seed: int,
    bar: tqdm | None = None,
) -> Scorer:
    """``module`` (unfitted) fitted to maximise the likelihood of ``batch`` from the
    initialisation of ``seed``, on ``batch``'s device; returned on the CPU, in eval mode.

    ``exam_logits``: the PBM examination, fixed (``None``: learned with the attractiveness).
    """
    device = batch.clicks.device
    gen = torch.Generator().manual_seed(seed)
    module.reset(gen)
    if exam_logits is not None:
        with torch.no_grad():
            module.exam_logit.copy_(exam_logits)
        module.exam_logit.requires_grad_(False)
    module.to(device)
    lr = settings.lr
    groups: list[dict[str, Any]] = [{"params": module.mlp.parameters()}]
    if structure == "pbm" and module.exam_logit.requires_grad:
        groups.append({"params": [module.exam_logit], "lr": 10 * lr})
    if structure == "cascade":
        groups.append({"params": [module.abandon_logit], "lr": 10 * lr})
    if module.item_bias is not None:
        groups.append(
            {"params": module.item_bias.parameters(), "weight_decay": settings.bias_decay}
        )
    opt = torch.optim.Adam(groups, lr=lr)
    n = len(batch.query)
    rows = max(1, settings.batch_size // batch.width)  # ~batch_size impressions
    if settings.dropout > 0:  # its own stream, apart from the initialisation's and the order's
        module.noise = torch.Generator(device=device).manual_seed(seed + 2**31)
    module.train()
    for epoch in range(settings.epochs):
        if epoch == settings.mlp_epochs:  # the MLP stops; the item biases go on learning
            module.mlp.requires_grad_(False)
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, rows):
            threads.tick()  # torch's threads follow the machine's load (rankgym.threads)
            b = order[start : start + rows]
            loss = -batch.log_likelihood(module, structure, b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if bar is not None:
            bar.update()
    module.eval()
    module.noise = None
    return module.cpu()
