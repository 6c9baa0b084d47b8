"""A neural click model: attractiveness from query, user and item text features, under a PBM or
a cascade with abandonment (chosen by held-out likelihood).

``attractiveness = sigmoid(MLP([q, u, i, q * i, u * i, p, p * i]) + bias[item])`` where ``q``,
``u``, ``i``, ``p`` are text vectors of the request's query, the user's state, the item and the
user's profile (``profile``; without it the last two inputs are absent); with ``match`` the
dot products ``q.i, u.i, p.i`` follow. Unlike the pair-counting models it generalises to
(query, item) pairs never logged, and it reacts to the user's state and taste.

Text features (``features``): ``lexical`` (default) embeds the log's texts with the
:class:`~rankgym.encoders.hashing.HashingEncoder` (hashed words and character n-grams), whatever
encoder the policy observes; ``encoder`` uses the run's text embeddings
(:class:`rankgym.encoders.encoded_log.EncodedLog`). The simulator is then one fixed object that
policies with different encoders are compared in, and lexical matches (brand names, colours, exact
product words) rank policies closer to the truth than MiniLM's embeddings do (BENCHMARKS.md).

Item statistics (``item_stats``): how often the log showed each item joins its inputs.

Feature columns (``use_features``): the dataset's item and user features
(:mod:`rankgym.encoders.features`) join the text vectors, so datasets described by features (OBD)
are modelled from them, not from fake sentences.

User state: the user's history pooled with a :class:`~rankgym.encoders.pooling.UserPooling` given to
:meth:`NeuralClickModel.fit` (the run setup passes the environment's), over the model's own item
vectors, with the clicks of the session's earlier requests appended as the environment appends
them: the model is fitted on the states it is served. The environment passes the current
history; without it the logged request's own history (from the log's
:class:`~rankgym.envs.click_models.base.LogContext`) is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rankgym.encoders.encoded_log import EncodedLog, encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.encoders.pooling import UserPooling, append_history, pad_histories
from rankgym.envs.click_models.base import (
    MAX_POSITIONS,
    ClickModel,
    LogContext,
    log_fingerprint,
    logged_rankings,
    positional_click_probs,
)
from rankgym.envs.click_models.fitted import _check_positive, _PairTable, conditional_examination
from rankgym.logs import SessionLog

DEVICES = ("cpu", "cuda", "auto")
EXAMINATION = ("conditional", "learned")
FEATURES = ("lexical", "encoder")
CALIBRATIONS = ("none", "level", "platt")
LEXICAL_ENCODER = HashingEncoder()  # the ``lexical`` text features (conf/encoder/hashing.yaml)
STRUCTURES = ("pbm", "cascade")
SELECTION_EPOCHS = 5  # structure="auto": the trial fits' epochs (at most)


def _first_layer_inputs(
    q: torch.Tensor,
    u: torch.Tensor,
    p: torch.Tensor | None,
    i: torch.Tensor,
    match: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer's input in two parts, in the column order of
    :meth:`_Scorer.first_layer`: ``[q, u(, p)]`` per request (``[B, 2|3 D]``) and
    ``[i, q*i, u*i(, p*i)]`` per candidate (``[B, W, 3|4 D]``); with ``match`` the per-candidate
    part ends with the products' sums, the dot products ``q.i, u.i(, p.i)``."""
    per_request = [q, u] if p is None else [q, u, p]
    products = [x[:, None, :] * i for x in per_request]
    per_candidate = [i, *products]
    if match:
        per_candidate.append(torch.stack([x.sum(-1) for x in products], dim=-1))
    return torch.cat(per_request, dim=-1), torch.cat(per_candidate, dim=-1)


class _Scorer(nn.Module):
    """Attractiveness logit ``MLP([q, u, i, q*i, u*i]) + bias[item]`` plus examination logits
    (with ``profile``, the user's profile vector ``p`` joins the inputs: ``[.., p, p*i]``; with
    ``match``, the dot products ``q.i, u.i(, p.i)`` end them).

    With ``dropout`` each hidden unit is dropped after each hidden layer while the member is
    fitted (:meth:`_drop`); serving (eval mode) uses every unit.

    The per-item bias (``n_items > 0``) learns what an item's text does not say (its quality);
    it starts at 0, so an item never logged keeps the text-only estimate: a backoff from the
    item to its features.

    The first layer is one ``Linear`` over all inputs, computed in two parts: ``[q, u, p]``
    once per request and ``[i, q*i, u*i, p*i]`` (and the dot products) once per candidate
    (:meth:`first_layer`), so a request's own inputs are not repeated for each of its
    candidates.
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
        # Platt scaling of the attractiveness logit, fitted on held-out sessions
        self.calibration = nn.Parameter(torch.tensor([1.0, 0.0]), requires_grad=False)

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
        models, profile ``p`` (each ``[B, D]``)."""
        if self.profile and p is None:
            raise ValueError("a model fitted with profile=true needs the users' profiles")
        request, candidate = self.first_layer()
        per_request, per_candidate = _first_layer_inputs(
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
        return self.calibration[0] * logit + self.calibration[1]

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


class _StackedEnsemble:
    """Every member's attractiveness in one pass, for serving (``NeuralClickModel.attractiveness``).

    The members' first layers (:meth:`_Scorer.first_layer`) side by side in one matrix, the
    other layers as one batched product over the members: one pass of large products instead
    of one small pass per member. Equal to the mean of the members' sigmoids up to float
    rounding (tested).
    """

    def __init__(self, modules: list[_Scorer]) -> None:
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
            self.scale = torch.stack([m.calibration for m in modules])  # [M, 2]
        self.members, self.hidden = len(modules), modules[0].mlp[0].out_features
        self.profile, self.match = modules[0].profile, modules[0].match

    def __call__(
        self,
        q: torch.Tensor,
        u: torch.Tensor,
        p: torch.Tensor | None,
        i: torch.Tensor,
        codes: torch.Tensor,
    ) -> torch.Tensor:
        """``[n, W]`` mean attractiveness; ``q, u, p``: ``[n, D]`` per request, ``i``:
        ``[n, W, D]`` and ``codes``: ``[n, W]`` per candidate."""
        n, w = codes.shape
        per_request, per_candidate = _first_layer_inputs(
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
        logit = self.scale[:, 0] * logit + self.scale[:, 1]
        return torch.sigmoid(logit).mean(-1)


class _RequestBatch:
    """A log's logged requests as dense ``[R, W]`` tensors, for request-level likelihoods."""

    def __init__(self, model: NeuralClickModel, log: SessionLog, device: torch.device) -> None:
        rankings, clicks = logged_rankings(log)
        width = min(rankings.shape[1], MAX_POSITIONS)
        rankings, clicks = rankings[:, :width], clicks[:, :width]
        valid = rankings >= 0
        has_click = clicks.any(axis=1)
        first = np.where(has_click, np.argmax(clicks > 0, axis=1), width)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.width = width
        self.items, self.queries = t(model.items), t(model.queries)
        self.states = t(model._request_states(log))
        self.query = t(log.request_query.astype(np.int64))
        self.profiles = t(model.user_profiles[log.request_user]) if model.profile else None
        self.codes, self.valid = t(np.where(valid, rankings, 0)), t(valid)
        self.clicks = t(clicks.astype(np.float32))
        self.before = t((np.arange(width)[None, :] < first[:, None]) & valid)
        self.first, self.has_click = t(np.minimum(first, width - 1)), t(has_click)
        weights = np.ones((log.n_requests, width), dtype=np.float32)
        if model.propensity_clip > 0:  # inverse propensity: as if the logger placed at random
            keep = log.position < width
            prop = np.nan_to_num(log.propensity[keep], nan=1.0)
            w = 1.0 / np.clip(prop, 1.0 / model.propensity_clip, 1.0)
            weights[log.impression_request[keep], log.position[keep]] = w / w.mean()
        self.weights = t(weights)
        # the items' impression counts leave this session out, as for a held-out one
        self.item_stat = t(model._session_left_out_stats(log, width)) if model.item_stats else None

    def logits(self, module: _Scorer, b: torch.Tensor) -> torch.Tensor:
        """``[len(b), W]`` attractiveness logits of the logged items of requests ``b``."""
        q, u = self.queries[self.query[b]], self.states[b]
        p = None if self.profiles is None else self.profiles[b]
        i = self.items[self.codes[b]]
        if self.item_stat is not None:  # the last item column (NeuralClickModel.item_stats)
            i = torch.cat([i[..., :-1], self.item_stat[b][..., None]], dim=-1)
        return module(q, u, i, self.codes[b], p)

    def log_likelihood(
        self, module: _Scorer, structure: str, b: torch.Tensor, logit: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean log-likelihood per impression of requests ``b`` under ``structure`` (given their
        attractiveness ``logit``, or the module's)."""
        w = self.width
        logit = self.logits(module, b) if logit is None else logit
        if structure == "pbm":
            ll = _pbm_log_likelihood(
                logit, module.exam_logit[:w], self.clicks[b], self.valid[b] * self.weights[b]
            )
        else:
            ll = _cascade_log_likelihood(
                logit, module.abandon_logit, self.valid[b], self.before[b], self.first[b],
                self.has_click[b],
            )  # fmt: skip
        return ll.sum() / self.valid[b].sum().clamp(min=1)


def _pbm_log_likelihood(
    logit: torch.Tensor, exam_logit: torch.Tensor, clicks: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``[B]`` log-likelihood of requests' clicks: independent positions, p = a * exam."""
    log_p = nn.functional.logsigmoid(logit) + nn.functional.logsigmoid(exam_logit)
    log_p = torch.clamp(log_p, max=-1e-6)
    log_not = torch.log(-torch.expm1(log_p))  # log(1 - p), stably
    return ((clicks * log_p + (1 - clicks) * log_not) * valid).sum(dim=1)


def _cascade_log_likelihood(
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


class NeuralClickModel(ClickModel):
    """Neural click model on text embeddings, fitted by maximum likelihood on logged requests.

    Args:
        hidden: width of the MLP's two hidden layers, >= 1.
        epochs: passes over the training impressions, >= 1.
        lr: Adam learning rate of the MLP, > 0 (10x for the examination logits).
        batch_size: impressions per minibatch, >= 1.
        weight_decay: Adam weight decay, >= 0.
        dropout: probability of dropping each hidden unit of the MLP while fitting, in [0, 1)
            (from each member's own seeded stream; none when serving).
        item_bias: learn a bias per item (backoff: an item never logged has bias 0).
        bias_decay: Adam weight decay of the item biases, >= 0 (shrinks rarely seen items).
        structure: ``pbm`` (examination per position), ``cascade`` (top-down until the first
            click, leaving after a skip with a learned probability) or ``auto`` (the one with
            the higher held-out likelihood, see :meth:`fit`).
        examination: ``learned`` jointly with the attractiveness, or ``conditional``: fixed
            from the pairs the logger showed at several positions (intervention harvesting,
            :func:`~rankgym.envs.click_models.fitted.conditional_examination`), anchored at 1 on
            top.
        calibrate: ``none``; ``level``: fit on 90% of the training sessions, then shift each
            member's attractiveness logit so that its expected clicks of the other 10%'s logged
            rankings equal their observed clicks (the level of pairs never logged is set by how
            far a fit memorises its training pairs); under the cascade structure the
            abandonment is also set there, to the value of highest held-out likelihood (the
            joint fit explains skips by memorised low attractiveness instead: 0.22 against the
            world's 0.3); ``platt``: fit on 90%, Platt-scale (slope and shift) to maximise the
            other 10%'s likelihood.
        crossfit: with ``calibrate``, each member holds out its own tenth of the training
            sessions (folds of one shuffle) and is calibrated there, so the ensemble's level is
            set on ``min(ensemble, 10)`` tenths rather than one (the level of one tenth, ~250
            sessions on the default world, is off by its sampling error of a few percent).
        item_stats: one more item input, the item's logged impressions in the training log
            (``log1p``, z-scored). The logger shows more often what it ranks higher, and an
            item too rarely shown for its own bias to be learned was otherwise valued like an
            average one. A training request sees the count without its own session's
            impressions, as a held-out request does (counting them made the simulator undervalue
            every policy by 1-14% on the PBM world).
        propensity_clip: > 0 weighs each logged impression of a PBM fit by its inverse logging
            propensity, clipped at this value (unbiased-learning-to-rank style); 0: unweighted.
        features: ``lexical`` (hashed words and n-grams of the log's texts) or ``encoder``
            (the run's text embeddings, given to :meth:`fit`).
        use_features: also read the dataset's item and user feature columns
            (:mod:`rankgym.encoders.features`; see :meth:`_set_tables`); no effect without them.
        ensemble: members fitted from seeds ``seed, seed + 1, ...`` (initialisation and
            minibatch order); the attractiveness is their mean. One fit's overall level moves
            by up to +-20% with the seed alone on the default world (BENCHMARKS.md).
        mlp_epochs: epochs after which the MLP stops learning while the item biases (and the
            examination or abandonment) go on for the rest of ``epochs`` (``None``: all of
            them). An MLP stopped early generalises better to the (query, item) pairs the
            log never showed, so the simulator's best policy is better in truth; the biases
            need the full fit to separate items (BENCHMARKS.md, issue 9).
        profile: also read the user's profile text (``users.parquet``'s ``text``, embedded with
            the other texts) as its own input beside the pooled history: ``[.., p, p * i]``.
            The profile says what a user likes (brands, price, categories), which a short
            history shows only in part.
        match: also the dot products ``q.i``, ``u.i`` (and ``p.i``) as inputs, after the
            others. The MLP could compute them from ``q*i`` etc., but only dimension by
            dimension for the words it saw clicked; as inputs they make a lexical match count
            for words the log never paired. On the cascade world the model's mean
            attractiveness of held-out (query, item) pairs never logged went from 1.09x the
            truth's to 1.05x, and its error over the zoo from 4.9% to 4.0% (BENCHMARKS.md).
        seed: seeds initialisation and minibatch order (a local generator).
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    """

    name = "neural"
    structure = "pbm"
    needs_history = True

    @property
    def reads_embeddings(self) -> bool:
        """Whether the fit depends on the run's text encoder (``features="encoder"``)."""
        return self.features == "encoder"

    def __init__(
        self,
        hidden: int = 128,
        epochs: int = 20,
        lr: float = 2e-3,
        batch_size: int = 512,
        weight_decay: float = 0.0,
        dropout: float = 0.0,
        item_bias: bool = True,
        bias_decay: float = 1e-4,
        structure: str = "auto",
        examination: str = "conditional",
        calibrate: str = "level",
        crossfit: bool = False,
        item_stats: bool = False,
        propensity_clip: float = 0.0,
        features: str = "lexical",
        use_features: bool = True,
        ensemble: int = 5,
        mlp_epochs: int | None = None,
        profile: bool = False,
        match: bool = False,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        for arg, value in (
            ("hidden", hidden), ("epochs", epochs), ("batch_size", batch_size),
            ("ensemble", ensemble),
        ):  # fmt: skip
            _check_positive(arg, value, integer=True)
        _check_positive("lr", lr)
        _check_positive("weight_decay", weight_decay, allow_zero=True)
        number = isinstance(dropout, int | float) and not isinstance(dropout, bool)
        if not number or not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout!r}: expected a probability in [0, 1)")
        self.dropout = float(dropout)
        _check_positive("bias_decay", bias_decay, allow_zero=True)
        if structure not in (*STRUCTURES, "auto"):
            raise ValueError(f"structure={structure!r}: expected one of pbm, cascade, auto")
        if examination not in EXAMINATION:
            raise ValueError(
                f"examination={examination!r}: expected one of {', '.join(EXAMINATION)}"
            )
        if features not in FEATURES:
            raise ValueError(f"features={features!r}: expected one of {', '.join(FEATURES)}")
        self.features = features
        self.use_features = bool(use_features)
        self.ensemble = int(ensemble)
        if mlp_epochs is not None:
            _check_positive("mlp_epochs", mlp_epochs, integer=True)
        self.mlp_epochs = None if mlp_epochs is None else int(mlp_epochs)
        if not isinstance(profile, bool):
            raise ValueError(f"profile={profile!r}: expected true or false")
        self.profile = profile
        if not isinstance(match, bool):
            raise ValueError(f"match={match!r}: expected true or false")
        self.match = match
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"seed={seed!r}: expected an int")
        if device not in DEVICES:
            raise ValueError(f"device={device!r}: expected one of {', '.join(DEVICES)}")
        self.hidden, self.epochs, self.lr = int(hidden), int(epochs), float(lr)
        self.batch_size, self.weight_decay = int(batch_size), float(weight_decay)
        self.seed, self.device = int(seed), device
        self.item_bias, self.bias_decay = bool(item_bias), float(bias_decay)
        self.examination_mode = examination
        self.structure_mode = structure
        if calibrate not in CALIBRATIONS:
            raise ValueError(
                f"calibrate={calibrate!r}: expected one of {', '.join(map(str, CALIBRATIONS))}"
            )
        self.calibrate = calibrate
        if not isinstance(crossfit, bool):
            raise ValueError(f"crossfit={crossfit!r}: expected true or false")
        self.crossfit = crossfit
        if not isinstance(item_stats, bool):
            raise ValueError(f"item_stats={item_stats!r}: expected true or false")
        self.item_stats = item_stats
        _check_positive("propensity_clip", propensity_clip, allow_zero=True)
        self.propensity_clip = float(propensity_clip)
        self.structure = "pbm" if structure == "auto" else structure
        self.selection_log_likelihood: dict[str, float] | None = None
        self.items = np.zeros((0, 0), dtype=np.float32)
        self.queries = np.zeros((0, 0), dtype=np.float32)
        self.user_profiles = np.zeros((0, 0), dtype=np.float32)
        self.user_features = np.zeros((0, 0), dtype=np.float32)
        self.shown = np.zeros(0, dtype=np.int64)  # item_stats: impressions per item in train
        self.encoder_fingerprint: str | None = None
        self.modules: list[_Scorer] = []
        # built from ``modules`` when served; rebuilt when they are replaced (fit, load_state)
        self._stacked: _StackedEnsemble | None = None
        self.train_log_likelihood: float | None = None
        self.validation_log_likelihood: float | None = None

    # ------------------------------------------------------------------ helpers
    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _request_states(self, log: SessionLog) -> np.ndarray:
        """``float32[R, d]`` each logged request's user state, built as the env builds it.

        The env starts a session from the user's pre-log history and appends the items clicked
        in each request before pooling the next one's state; so does this, with the logged
        clicks. (Fitting on pre-log states alone and serving in-session ones made the model
        overestimate every policy.)
        """
        assert self.pooling is not None
        initial = pad_histories(
            log.user_history_offsets, log.user_history_items, self.pooling.history_len
        )
        rankings, clicks = logged_rankings(log)
        clicked = np.where(clicks == 1, rankings, -1)
        starts = log.session_offsets[:-1].astype(np.int64)
        lengths = np.diff(log.session_offsets)
        history = initial[log.request_user[starts]]
        states = np.zeros((log.n_requests, self.items.shape[1]), dtype=np.float32)
        for j in range(int(lengths.max(initial=0))):  # the j-th request of every session
            alive = np.flatnonzero(lengths > j)
            req = starts[alive] + j
            states[req] = self._pool(history[alive], log.request_user[req])
            history[alive] = append_history(history[alive], clicked[req])
        return states

    def _set_tables(self, encoded: EncodedLog) -> None:
        """The model's own tables: texts and feature columns in one ``D``-wide space.

        ``D = d + F_i + F_u`` (less the dimensions no table uses): items are
        ``[text, item features, 0]``, queries and profiles ``[text, 0, 0]``, and a user's
        features ``[0, 0, user features]`` are added to the pooled state. So ``u * i`` pairs
        the history's features with the item's, and the user's own features reach the network
        through ``u``.
        """
        ifeat = encoded.item_features if self.use_features else encoded.item_features[:, :0]
        ufeat = encoded.user_features if self.use_features else encoded.user_features[:, :0]
        d, fi, fu = encoded.dim, ifeat.shape[1], ufeat.shape[1]
        pad = lambda a, left, right: np.pad(a, ((0, 0), (left, right)))  # noqa: E731
        as32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        tables = [
            pad(np.hstack([encoded.items, ifeat]), 0, fu),
            pad(encoded.queries, 0, fi + fu),
            pad(encoded.user_profiles, 0, fi + fu),
            pad(ufeat, d + fi, 0),
        ]
        # a dimension that is 0 in every table changes no input of the MLP: drop it (a log
        # without texts, such as OBD, keeps only its features; 10x less work per candidate)
        used = np.zeros(d + fi + fu, dtype=bool)
        for table in tables:
            used |= (table != 0).any(axis=0)
        self.items, self.queries, self.user_profiles, self.user_features = (
            as32(table[:, used]) for table in tables
        )

    def _add_item_statistics(self, train: SessionLog) -> None:
        """One more item column: the item's logged impressions in ``train``, ``log1p`` and
        z-scored. The logger shows what it ranks high, so how often an item was shown says
        something of it that its text does not, and most for items too rarely shown for their
        own bias to be learned."""
        self.shown = np.bincount(train.item.astype(np.int64), minlength=train.n_items)
        column = self._shown_column(self.shown)
        zeros = lambda a: np.zeros((len(a), 1), dtype=np.float32)  # noqa: E731
        self.items = np.hstack([self.items, column[:, None]])
        self.queries, self.user_profiles, self.user_features = (
            np.hstack([a, zeros(a)]) for a in (self.queries, self.user_profiles, self.user_features)
        )

    def _shown_column(self, shown: np.ndarray) -> np.ndarray:
        """``log1p(shown)`` z-scored by the training log's per-item counts (``self.shown``)."""
        ref = np.log1p(self.shown)
        return ((np.log1p(shown) - ref.mean()) / max(float(ref.std()), 1e-6)).astype(np.float32)

    def _session_left_out_stats(self, log: SessionLog, width: int) -> np.ndarray:
        """``float32[R, width]`` the item column of each logged slot of ``log`` (a part of the
        training log), its count without the slot's own session: so a fitted or calibrating
        request sees what a held-out one does, not its own impressions."""
        session = log.request_session[log.impression_request]
        key = session.astype(np.int64) * log.n_items + log.item.astype(np.int64)
        _, inverse, own = np.unique(key, return_inverse=True, return_counts=True)
        shown = self.shown[log.item.astype(np.int64)] - own[inverse]
        out = np.zeros((log.n_requests, width), dtype=np.float32)
        keep = log.position < width
        out[log.impression_request[keep], log.position[keep]] = self._shown_column(shown[keep])
        return out

    def _pool(self, history: np.ndarray, users: np.ndarray) -> np.ndarray:
        """``float32[B, D]`` user states of ``history`` over the model's own item vectors,
        plus the users' features."""
        assert self.pooling is not None
        state = self.pooling.pool(self.items, history, self.user_profiles[users])
        return state + self.user_features[users]

    def _new_scorer(self) -> _Scorer:
        """An unfitted member shaped by the model's tables and settings (fit and load alike)."""
        n_items = len(self.items) if self.item_bias else 0
        return _Scorer(
            self.items.shape[1], self.hidden, n_items, self.profile, self.match, self.dropout
        )

    def _check_tables(self, log: SessionLog) -> None:
        EncodedLog(
            self.items, self.queries, self.user_profiles, "", self.encoder_fingerprint or ""
        ).check(log)

    @staticmethod
    def _conditional_exam_logits(train: SessionLog) -> torch.Tensor | None:
        """Examination logits from the conditional estimate; ``None`` when not identified."""
        query = train.request_query[train.impression_request]
        _, inverse = _PairTable.index(query, train.item, train.n_items)
        pos = train.position.astype(np.int64)
        keep = pos < MAX_POSITIONS
        n_pos = int(pos[keep].max()) + 1
        theta = conditional_examination(
            pos[keep], train.click[keep].astype(np.float64), inverse[keep], n_pos
        )
        if theta is None:  # no pair shown at two positions with a click: learn it instead
            return None
        exam = np.full(MAX_POSITIONS, theta[-1])
        exam[:n_pos] = theta
        exam = np.clip(exam, 1e-4, 1 - 1e-4)
        return torch.from_numpy(np.log(exam / (1 - exam)))

    def _calibrate(self, helds: list[SessionLog]) -> None:
        """Calibrate member ``m``'s attractiveness logit on ``helds[m]`` (see ``calibrate``)."""
        batches: dict[int, _RequestBatch] = {}
        for held in helds:  # one batch per distinct log (members may share one)
            if id(held) not in batches:
                batches[id(held)] = _RequestBatch(self, held, torch.device("cpu"))
        pairs = [(m, batches[id(h)]) for m, h in zip(self.modules, helds, strict=True)]
        if self.calibrate == "level" and self.structure == "cascade":
            self._calibrate_abandonment(pairs)  # matches the levels too
            return
        for module, batch in pairs:
            everything = torch.arange(len(batch.query))
            if self.calibrate == "level":
                self._match_level(module, batch, everything)
                continue
            module.calibration.requires_grad_(True)
            opt = torch.optim.LBFGS([module.calibration], lr=0.5, max_iter=100)

            def closure(
                module: _Scorer = module,
                opt: torch.optim.LBFGS = opt,
                batch: _RequestBatch = batch,
                everything: torch.Tensor = everything,
            ) -> torch.Tensor:
                opt.zero_grad()
                loss = -batch.log_likelihood(module, self.structure, everything)
                loss.backward()
                return loss

            opt.step(closure)
            module.calibration.requires_grad_(False)

    def _calibrate_abandonment(self, pairs: list[tuple[_Scorer, _RequestBatch]]) -> None:
        """The cascade's abandonment that maximises the held-out likelihood, the members' levels
        matched at each candidate (a profile likelihood over one shared parameter).

        Fitted jointly with memorised training pairs, a skip is explained by a low
        attractiveness more than by leaving: the fit's abandonment was 0.22 on the cascade
        world, whose users leave after a skip with probability 0.3 (BENCHMARKS.md).
        """
        base = []  # each member's unshifted logits: the search moves only the shift
        for module, batch in pairs:
            with torch.no_grad():
                module.calibration[1] = 0.0
                base.append(batch.logits(module, torch.arange(len(batch.query))))

        def held_out_ll(leave_logit: float) -> float:
            self.abandonment = np.full(MAX_POSITIONS, 1.0 / (1.0 + np.exp(-leave_logit)))
            total = 0.0
            for (module, batch), logit in zip(pairs, base, strict=True):
                rows = torch.arange(len(batch.query))
                self._match_level(module, batch, rows, logit)
                with torch.no_grad():
                    module.abandon_logit.fill_(leave_logit)
                    shifted = logit + module.calibration[1]
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

    def _member_splits(self, train: SessionLog) -> list[tuple[SessionLog, SessionLog]]:
        """``(fit on, calibrate on)`` per member: one 90/10 split shared by all, or with
        ``crossfit`` member ``m`` holding out the ``m``-th of ``max(10, ensemble)`` folds of
        one shuffle of the sessions (disjoint calibration sets)."""
        if not self.crossfit:
            fit_on, held = train.split(0.1, seed=self.seed)
            return [(fit_on, held)] * self.ensemble
        order = np.random.default_rng(self.seed).permutation(train.n_sessions)
        folds = np.array_split(order, max(10, self.ensemble))
        splits = []
        for m in range(self.ensemble):
            rest = np.concatenate([f for k, f in enumerate(folds) if k != m])
            splits.append(
                (train.select_sessions(np.sort(rest)), train.select_sessions(np.sort(folds[m])))
            )
        return splits

    def _match_level(
        self,
        module: _Scorer,
        batch: _RequestBatch,
        rows: torch.Tensor,
        unshifted: torch.Tensor | None = None,
    ) -> None:
        """Shift the logit so the expected clicks of the logged rankings equal the observed
        (``unshifted``: the module's logits of ``rows`` with no shift, when already known)."""
        observed = float(batch.clicks[batch.valid].sum())
        valid = batch.valid.numpy()
        with torch.no_grad():
            module.calibration[1] = 0.0
            if unshifted is None:
                unshifted = batch.logits(module, rows)
            logit = unshifted.double().numpy()

        def expected(shift: float) -> float:
            attr = 1.0 / (1.0 + np.exp(-(logit + shift)))
            return float(positional_click_probs(attr, valid, self).sum())

        low, high = -8.0, 8.0  # expected clicks increase with the shift: bisection
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if expected(mid) < observed else (low, mid)
        with torch.no_grad():
            module.calibration[1] = (low + high) / 2

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train: SessionLog,
        encoded: EncodedLog | None = None,
        validation: SessionLog | None = None,
        pooling: UserPooling | None = None,
        **context: Any,
    ) -> NeuralClickModel:
        """Fit on ``train``'s logged requests with the text embeddings ``encoded``; returns self.

        ``pooling`` is how user states are pooled (default :class:`UserPooling`); environments
        replaying with this model must pool the same way. With ``structure="auto"`` one member
        of each structure is fitted on 90% of the training sessions for at most
        ``SELECTION_EPOCHS``, and the structure with the higher log-likelihood on the other 10%
        is kept. With ``calibrate`` other than ``none`` the model is fitted on the 90% and
        calibrated on the 10% (what values policies must be calibrated: a level error shifts
        every value); otherwise refitted on all sessions.

        Raises:
            ValueError: with ``features="encoder"`` and no ``encoded``, or when its tables do
                not fit ``train``.
        """
        if validation is not None and log_fingerprint(validation) != log_fingerprint(train):
            raise ValueError("the validation log is not a split of the training dataset")
        if train.n_impressions == 0:
            raise ValueError("reward model 'neural': the training log has no impressions")
        if self.features == "lexical":
            encoded = encode_log(train, LEXICAL_ENCODER, progress=False)
            self.encoder_fingerprint = None  # its own features: any env encoder will do
        elif encoded is None:
            raise ValueError(
                "reward=neural with features=encoder needs the text embeddings: "
                "fit(train, encoded=...)"
            )
        else:
            self.encoder_fingerprint = encoded.fingerprint
        encoded.check(train)
        self._set_tables(encoded)
        if self.item_stats:
            self._add_item_statistics(train)
        self.dataset = log_fingerprint(train)
        self.pooling = pooling or UserPooling()
        structure = self.structure_mode
        if structure == "auto":
            # chosen on one split, crossfit or not (a crossfit fold chose PBM on the cascade
            # world), by one member of each structure fitted for at most SELECTION_EPOCHS: a
            # short fit has the better held-out likelihood and the clearer margin (BENCHMARKS.md)
            fit_on, held = train.split(0.1, seed=self.seed)
            scores = {}
            trial_settings = {
                **self.config(), "calibrate": "none", "ensemble": 1,
                "epochs": min(self.epochs, SELECTION_EPOCHS),
            }  # fmt: skip
            for option in STRUCTURES:
                trial = NeuralClickModel(**{**trial_settings, "structure": option})
                trial.fit(fit_on, encoded, pooling=self.pooling)
                scores[option] = trial.log_likelihood(held)
            structure = max(scores, key=scores.__getitem__)
            self.selection_log_likelihood = scores
        if self.calibrate != "none":
            splits = self._member_splits(train)
            self._fit([f for f, _ in splits], structure)
            self._calibrate([h for _, h in splits])
            self._stacked = None  # the members' calibration changed in place
        else:
            self._fit([train] * self.ensemble, structure)
        self.train_log_likelihood = self.log_likelihood(train)
        if validation is not None:
            self.validation_log_likelihood = self.log_likelihood(validation)
        return self

    def _fit(self, parts: list[SessionLog], structure: str) -> None:
        """Fit member ``m`` on ``parts[m]``'s logged requests under ``structure``."""
        device = self._torch_device()
        conditional = structure == "pbm" and self.examination_mode == "conditional"
        desc = f"fitting neural click model ({structure})"
        shared: dict[int, tuple[_RequestBatch, torch.Tensor | None]] = {}
        self.modules, self._stacked = [], None
        with tqdm(total=self.ensemble * self.epochs, desc=desc, unit="epoch", disable=None) as bar:
            for m, part in enumerate(parts):
                if id(part) not in shared:  # built once for a log the members share
                    # the examination is estimated from the part and frozen in its members
                    exam = self._conditional_exam_logits(part) if conditional else None
                    shared = {id(part): (_RequestBatch(self, part, device), exam)}
                batch, exam = shared[id(part)]
                seed = self.seed + m
                self.modules.append(
                    self._fit_member(part, structure, batch, exam, seed, device, bar)
                )
        self.structure = structure
        if structure == "pbm":  # the members' mean (identical when fixed from the log)
            exam = [torch.sigmoid(m.exam_logit.detach()).double().numpy() for m in self.modules]
            self.examination = np.mean(exam, axis=0)
            self.abandonment = np.zeros(MAX_POSITIONS)
        else:
            self.examination = np.ones(MAX_POSITIONS)
            leave = np.mean([torch.sigmoid(m.abandon_logit).item() for m in self.modules])
            self.abandonment = np.full(MAX_POSITIONS, leave)

    def _fit_member(
        self,
        train: SessionLog,
        structure: str,
        batch: _RequestBatch,
        exam_logits: torch.Tensor | None,
        seed: int,
        device: torch.device,
        bar: tqdm,
    ) -> _Scorer:
        """One member: maximise the likelihood of ``batch`` from the initialisation of ``seed``
        (with the examination logits fixed at ``exam_logits`` when given)."""
        gen = torch.Generator().manual_seed(seed)
        module = self._new_scorer()
        module.reset(gen)
        if exam_logits is not None:
            with torch.no_grad():
                module.exam_logit.copy_(exam_logits)
            module.exam_logit.requires_grad_(False)
        module.to(device)
        groups: list[dict[str, Any]] = [{"params": module.mlp.parameters()}]
        if structure == "pbm" and module.exam_logit.requires_grad:
            # 64 logits, each seeing a whole position's data: a 10x learning rate
            groups.append({"params": [module.exam_logit], "lr": 10 * self.lr, "weight_decay": 0.0})
        if structure == "cascade":
            groups.append({"params": [module.abandon_logit], "lr": 10 * self.lr, "weight_decay": 0})
        if module.item_bias is not None:
            groups.append(
                {"params": module.item_bias.parameters(), "weight_decay": self.bias_decay}
            )
        opt = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
        n = train.n_requests
        rows = max(1, self.batch_size // batch.width)  # ~batch_size impressions
        if self.dropout > 0:  # its own stream, apart from the initialisation's and the order's
            module.noise = torch.Generator(device=device).manual_seed(seed + 2**31)
        module.train()
        for epoch in range(self.epochs):
            if epoch == self.mlp_epochs:  # the MLP stops; the item biases go on learning
                module.mlp.requires_grad_(False)
            order = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, rows):
                b = order[start : start + rows]
                loss = -batch.log_likelihood(module, structure, b)
                opt.zero_grad()
                loss.backward()
                opt.step()
            bar.update()
        module.eval()
        module.noise = None
        return module.cpu()

    # ------------------------------------------------------------------ inference
    def context(self, log: SessionLog) -> LogContext:
        """Check ``log`` against the fitted tables; pool its requests' user states.

        Raises:
            ValueError: for a log of another dataset.
        """
        if not self.modules:
            raise RuntimeError("reward model 'neural' is not fitted; call fit() first")
        context = super().context(log)
        self._check_tables(log)
        context.arrays["request_states"] = self._request_states(log)
        return context

    def attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """``sigmoid(MLP(...))`` per candidate, the members' mean; 0 where ``items < 0``."""
        q, u, p, i, codes, valid = self.serving_inputs(context, requests, items, history)
        if self._stacked is None or self._stacked.key != tuple(id(m) for m in self.modules):
            self._stacked = _StackedEnsemble(self.modules)
        out = np.empty(valid.shape, dtype=np.float64)
        rows = max(1, 16384 // max(1, valid.shape[1]))  # [rows * W, M * H] floats per pass
        with torch.no_grad():
            for s in range(0, len(valid), rows):
                part = slice(s, s + rows)
                pb = None if p is None else p[part]
                probs = self._stacked(q[part], u[part], pb, i[part], codes[part])
                out[part] = probs.double().numpy()
        return np.where(valid, out, 0.0)

    def serving_inputs(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The network's inputs for candidates ``items`` of ``requests``: ``q, u, p`` per
        request (``[n, D]``; ``p`` None without ``profile``), ``i`` and item ``codes`` per
        candidate (``[n, W, D]``, ``[n, W]``), and the ``valid`` mask (numpy).

        Raises:
            RuntimeError: before ``fit``.
            ValueError: for a ``history`` that is not one row per request.
        """
        if not self.modules:
            raise RuntimeError("reward model 'neural' is not fitted; call fit() first")
        log = context.log
        requests = np.asarray(requests, dtype=np.int64)
        items = np.atleast_2d(np.asarray(items, dtype=np.int64))
        if history is None:
            user_state = context.arrays["request_states"][requests]
        else:
            history = np.asarray(history)
            if history.ndim != 2 or len(history) != len(requests):
                raise ValueError(
                    f"history has shape {history.shape}, expected ({len(requests)}, H): one "
                    "right-aligned row of item codes per request"
                )
            user_state = self._pool(history, log.request_user[requests])
        valid = items >= 0
        q = torch.from_numpy(self.queries[log.request_query[requests]])
        u = torch.from_numpy(user_state)
        p = (
            torch.from_numpy(self.user_profiles[log.request_user[requests]])
            if self.profile
            else None
        )
        codes = np.where(valid, items, 0)
        return q, u, p, torch.from_numpy(self.items[codes]), torch.from_numpy(codes), valid

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, np.ndarray]:
        if not self.modules:
            raise RuntimeError("reward model 'neural' is not fitted; nothing to save")
        weights = {
            f"weight.{m}.{k}": v.detach().cpu().numpy()
            for m, module in enumerate(self.modules)
            for k, v in module.state_dict().items()
        }
        return {
            **super().state(),
            "items": self.items,
            "queries": self.queries,
            "user_profiles": self.user_profiles,
            "user_features": self.user_features,
            "encoder_fingerprint": np.array(self.encoder_fingerprint or ""),
            **weights,
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        self.items = np.asarray(arrays["items"], dtype=np.float32)
        self.queries = np.asarray(arrays["queries"], dtype=np.float32)
        self.user_profiles = np.asarray(arrays["user_profiles"], dtype=np.float32)
        # models saved before feature columns have none (zeros: no effect)
        self.user_features = np.asarray(
            arrays.get("user_features", np.zeros_like(self.user_profiles)), dtype=np.float32
        )
        self.encoder_fingerprint = str(arrays["encoder_fingerprint"]) or None
        self.modules, self._stacked = [], None
        for m in range(self.ensemble):
            module = self._new_scorer()
            prefix = f"weight.{m}."
            module.load_state_dict(
                {
                    k.removeprefix(prefix): torch.from_numpy(np.array(v))
                    for k, v in arrays.items()
                    if k.startswith(prefix)
                }
            )
            module.eval()
            self.modules.append(module)

    def config(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "dropout": self.dropout,
            "item_bias": self.item_bias,
            "bias_decay": self.bias_decay,
            "structure": self.structure_mode,
            "examination": self.examination_mode,
            "calibrate": self.calibrate,
            "crossfit": self.crossfit,
            "item_stats": self.item_stats,
            "propensity_clip": self.propensity_clip,
            "features": self.features,
            "use_features": self.use_features,
            "ensemble": self.ensemble,
            "mlp_epochs": self.mlp_epochs,
            "profile": self.profile,
            "match": self.match,
            "seed": self.seed,
            "device": self.device,
        }
