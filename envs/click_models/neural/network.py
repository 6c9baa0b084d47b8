"""The network of one member, and the members stacked into one pass for serving.

A member's attractiveness logit is ``MLP([q, u, i, q*i, u*i(, p, p*i)(, q.i, u.i(, p.i))]) +
bias[item] + shift``: ``q``, ``u``, ``i``, ``p`` are the vectors of the query, the user's state,
the item and the user's profile (:mod:`.tables`), the dot products follow with ``match``, and the
shift is the level calibration's (:mod:`.calibration`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rankgym.envs.click_models.base import MAX_POSITIONS


def first_layer_inputs(
    q: torch.Tensor,
    u: torch.Tensor,
    p: torch.Tensor | None,
    i: torch.Tensor,
    match: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer's input in two parts, in the column order of
    :meth:`Scorer.first_layer`: ``[q, u(, p)]`` per request (``[B, 2|3 D]``) and
    ``[i, q*i, u*i(, p*i)]`` per candidate (``[B, W, 3|4 D]``); with ``match`` the per-candidate
    part ends with the products' sums, the dot products ``q.i, u.i(, p.i)``."""
    per_request = [q, u] if p is None else [q, u, p]
    products = [x[:, None, :] * i for x in per_request]
    per_candidate = [i, *products]
    if match:
        per_candidate.append(torch.stack([x.sum(-1) for x in products], dim=-1))
    return torch.cat(per_request, dim=-1), torch.cat(per_candidate, dim=-1)


class Scorer(nn.Module):
    """One member: the attractiveness logit, and the click structure's parameters.

    With ``dropout`` each hidden unit is dropped after each hidden layer while the member is
    fitted (:meth:`_drop`); serving (eval mode) uses every unit.

    The per-item bias (``n_items > 0``) starts at 0, so an item never logged keeps the
    text-only estimate: a backoff from the item to its features.

    The first layer is one ``Linear`` over all inputs, computed in two parts: ``[q, u, p]``
    once per request and ``[i, q*i, u*i, p*i]`` (and the dot products) once per candidate
    (:meth:`first_layer`), so a request's own inputs are not repeated for each of its
    candidates.

    ``exam_logit`` (PBM, one per position) and ``abandon_logit`` (cascade) belong to the click
    structure (:mod:`.structure`); ``shift`` is added to the attractiveness logit.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_items: int = 0,
        profile: bool = False,
        match: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.noise: torch.Generator | None = None  # dropout masks' generator, while fitted
        self.item_bias = nn.Embedding(n_items, 1) if n_items > 0 else None
        self.profile, self.match, self.dim = profile, match, dim
        inputs = (7 if profile else 5) * dim  # [q, u, i, q*i, u*i] (+ [p, p*i])
        if match:  # [q.i, u.i] (+ [p.i])
            inputs += 3 if profile else 2
        self.mlp = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        self.exam_logit = nn.Parameter(torch.zeros(MAX_POSITIONS))
        self.abandon_logit = nn.Parameter(torch.tensor(-2.0))  # cascade structure only
        self.register_buffer("shift", torch.tensor(0.0))  # the calibrated level

    def first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's weight as ``(per_request [H, 2|3 D], per_candidate [H, 3|4 D])``:
        the columns that read ``[q, u(, p)]`` and those that read ``[i, q*i, u*i(, p*i)]``
        (with ``match``, followed by the 2|3 columns of the dot products)."""
        weight = self.mlp[0].weight
        n_blocks = 7 if self.profile else 5
        blocks = weight[:, : n_blocks * self.dim].split(self.dim, dim=1)
        request, candidate = ((0, 1, 5), (2, 3, 4, 6)) if self.profile else ((0, 1), (2, 3, 4))
        dots = weight[:, n_blocks * self.dim :]  # the match columns (none without ``match``)
        return (
            torch.cat([blocks[k] for k in request], dim=1),
            torch.cat([blocks[k] for k in candidate] + [dots], dim=1),
        )

    def forward(
        self,
        q: torch.Tensor,
        u: torch.Tensor,
        i: torch.Tensor,
        codes: torch.Tensor,
        p: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, W]`` attractiveness logits of candidates ``i`` (``[B, W, D]``, item ``codes``
        ``[B, W]``) for requests with query ``q``, user state ``u`` and, for ``profile``
        members, profile ``p`` (each ``[B, D]``)."""
        if self.profile and p is None:
            raise ValueError("a model fitted with profile=true needs the users' profiles")
        request, candidate = self.first_layer()
        per_request, per_candidate = first_layer_inputs(
            q, u, p if self.profile else None, i, self.match
        )
        hidden = per_request @ request.T + self.mlp[0].bias  # [B, H]
        hidden = per_candidate @ candidate.T + hidden[:, None, :]
        for layer in self.mlp[1:]:
            hidden = layer(hidden)
            if self.training and self.dropout > 0 and isinstance(layer, nn.ReLU):
                hidden = self._drop(hidden)  # after each hidden layer, while fitting
        logit = hidden.squeeze(-1)
        if self.item_bias is not None:
            logit = logit + self.item_bias(codes).squeeze(-1)
        return logit + self.shift

    def _drop(self, hidden: torch.Tensor) -> torch.Tensor:
        """Inverted dropout with masks from ``self.noise`` (the member's own generator, set
        while it is fitted: a seeded fit draws the same masks on every run)."""
        keep = torch.rand(hidden.shape, generator=self.noise, device=hidden.device)
        return hidden * (keep >= self.dropout) / (1.0 - self.dropout)

    def reset(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from a local generator (PyTorch's default scheme)."""
        with torch.no_grad():
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / np.sqrt(layer.in_features)
                    for p in (layer.weight, layer.bias):
                        p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            self.exam_logit.zero_()
            self.abandon_logit.fill_(-2.0)
            if self.item_bias is not None:
                self.item_bias.weight.zero_()


class StackedEnsemble:
    """Every member's attractiveness in one pass, for serving.

    The members' first layers (:meth:`Scorer.first_layer`) side by side in one matrix, the
    other layers as one batched product over the members: one pass of large products instead
    of one small pass per member. Equal to the mean of the members' sigmoids up to float
    rounding (tested).
    """

    def __init__(self, modules: list[Scorer]) -> None:
        self.key = tuple(id(m) for m in modules)
        with torch.no_grad():
            parts = [m.first_layer() for m in modules]
            self.w_request = torch.cat([r for r, _ in parts]).T  # [2|3 D, M * H]
            self.w_candidate = torch.cat([c for _, c in parts]).T  # [3|4 D, M * H]
            self.b1 = torch.cat([m.mlp[0].bias for m in modules])  # [M * H]
            self.w2 = torch.stack([m.mlp[2].weight.T for m in modules])  # [M, H, H]
            self.b2 = torch.stack([m.mlp[2].bias for m in modules])[:, None, :]
            self.w3 = torch.stack([m.mlp[4].weight[0] for m in modules])  # [M, H]
            self.b3 = torch.cat([m.mlp[4].bias for m in modules])  # [M]
            self.bias = (
                torch.cat([m.item_bias.weight for m in modules], dim=1)  # [n_items, M]
                if modules[0].item_bias is not None
                else None
            )
            self.shift = torch.stack([m.shift for m in modules])  # [M]
        self.members, self.hidden = len(modules), modules[0].mlp[0].out_features
        self.profile, self.match = modules[0].profile, modules[0].match

    def __call__(
        self,
        q: torch.Tensor,
        u: torch.Tensor,
        p: torch.Tensor | None,
        i: torch.Tensor,
        codes: torch.Tensor,
        penalty: float = 0.0,
    ) -> torch.Tensor:
        """``[n, W]`` mean attractiveness, less ``penalty`` times the members' standard
        deviation (at least 0); ``q, u, p``: ``[n, D]`` per request, ``i``: ``[n, W, D]`` and
        ``codes``: ``[n, W]`` per candidate."""
        probs = self.member_probs(q, u, p, i, codes)
        if penalty == 0 or self.members < 2:
            return probs.mean(-1)
        return (probs.mean(-1) - penalty * probs.std(-1)).clamp(min=0.0)

    def member_probs(
        self,
        q: torch.Tensor,
        u: torch.Tensor,
        p: torch.Tensor | None,
        i: torch.Tensor,
        codes: torch.Tensor,
    ) -> torch.Tensor:
        """``[n, W, M]``: each member's attractiveness (inputs as for :meth:`__call__`)."""
        n, w = codes.shape
        per_request, per_candidate = first_layer_inputs(
            q, u, p if self.profile else None, i, self.match
        )
        h1 = per_request @ self.w_request + self.b1  # [n, M*H]
        h1 = per_candidate @ self.w_candidate + h1[:, None, :]
        h1 = torch.relu(h1).reshape(n * w, self.members, self.hidden).transpose(0, 1)
        h2 = torch.relu(torch.bmm(h1, self.w2) + self.b2)  # [M, n*W, H]
        logit = (h2 * self.w3[:, None, :]).sum(-1) + self.b3[:, None]  # [M, n*W]
        logit = logit.T.reshape(n, w, self.members)
        if self.bias is not None:
            logit = logit + self.bias[codes]
        return torch.sigmoid(logit + self.shift)
