"""A neural PBM: attractiveness from query, user and item embeddings, learned examination.

``P(click at k) = sigmoid(e_k) * sigmoid(MLP([q, u, i, q * i, u * i]))`` where ``q``, ``u``,
``i`` are the text embeddings of the request's query, the user's state and the item
(:class:`encoders.encoded_log.EncodedLog`). Unlike the pair-counting models it generalises to
(query, item) pairs never logged, and it reacts to the user's state.

User state: the user's history pooled with a :class:`~encoders.pooling.UserPooling` given to
:meth:`NeuralClickModel.fit` (the run setup passes the environment's, so the model is fitted on
the states it is served). Training uses the pre-log state for every logged request; the
environment passes the current pooled state as ``user_state``; without it the pre-log state of
the request's user (from the log's :class:`~envs.click_models.base.LogContext`) is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from encoders.encoded_log import EncodedLog
from encoders.pooling import UserPooling
from envs.click_models.base import MAX_POSITIONS, ClickModel, LogContext, log_fingerprint
from envs.click_models.fitted import _check_positive
from envs.logs import SessionLog

DEVICES = ("cpu", "cuda", "auto")


class _Scorer(nn.Module):
    """Attractiveness logit ``MLP([q, u, i, q*i, u*i])`` plus examination logits."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(5 * dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        self.exam_logit = nn.Parameter(torch.zeros(MAX_POSITIONS))

    def forward(self, q: torch.Tensor, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([q, u, i, q * i, u * i], dim=-1)).squeeze(-1)

    def reset(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from a local generator (PyTorch's default scheme)."""
        with torch.no_grad():
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / np.sqrt(layer.in_features)
                    for p in (layer.weight, layer.bias):
                        p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            self.exam_logit.zero_()


class NeuralClickModel(ClickModel):
    """Neural PBM on text embeddings, fitted with binary cross-entropy on logged impressions.

    Args:
        hidden: width of the MLP's two hidden layers, >= 1.
        epochs: passes over the training impressions, >= 1.
        lr: Adam learning rate of the MLP, > 0 (10x for the examination logits).
        batch_size: impressions per minibatch, >= 1.
        weight_decay: Adam weight decay, >= 0.
        seed: seeds initialisation and minibatch order (a local generator).
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    """

    name = "neural"
    structure = "pbm"
    needs_user_state = True

    def __init__(
        self,
        hidden: int = 64,
        epochs: int = 4,
        lr: float = 2e-3,
        batch_size: int = 512,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        for arg, value in (("hidden", hidden), ("epochs", epochs), ("batch_size", batch_size)):
            _check_positive(arg, value, integer=True)
        _check_positive("lr", lr)
        _check_positive("weight_decay", weight_decay, allow_zero=True)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"seed={seed!r}: expected an int")
        if device not in DEVICES:
            raise ValueError(f"device={device!r}: expected one of {', '.join(DEVICES)}")
        self.hidden, self.epochs, self.lr = int(hidden), int(epochs), float(lr)
        self.batch_size, self.weight_decay = int(batch_size), float(weight_decay)
        self.seed, self.device = int(seed), device
        self.items = np.zeros((0, 0), dtype=np.float32)
        self.queries = np.zeros((0, 0), dtype=np.float32)
        self.user_profiles = np.zeros((0, 0), dtype=np.float32)
        self.encoder_fingerprint: str | None = None
        self.module: _Scorer | None = None
        self.train_log_likelihood: float | None = None
        self.validation_log_likelihood: float | None = None

    # ------------------------------------------------------------------ helpers
    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _pre_log_states(self, log: SessionLog) -> np.ndarray:
        """``float32[U, d]`` pooled pre-log user states of ``log``'s users."""
        assert self.pooling is not None
        return self.pooling.pre_log_states(
            self.items, log.user_history_offsets, log.user_history_items, self.user_profiles
        )

    def _check_tables(self, log: SessionLog) -> None:
        EncodedLog(
            self.items, self.queries, self.user_profiles, "", self.encoder_fingerprint or ""
        ).check(log)

    def _apply_examination(self) -> None:
        assert self.module is not None
        self.examination = torch.sigmoid(self.module.exam_logit.detach().cpu()).double().numpy()

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train: SessionLog,
        encoded: EncodedLog | None = None,
        validation: SessionLog | None = None,
        pooling: UserPooling | None = None,
        **context: Any,
    ) -> NeuralClickModel:
        """Fit on ``train``'s impressions with the text embeddings ``encoded``; returns self.

        ``pooling`` is how user states are pooled (default :class:`UserPooling`); environments
        replaying with this model must pool the same way.

        Raises:
            ValueError: without ``encoded``, or when its tables do not fit ``train``.
        """
        if encoded is None:
            raise ValueError("reward=neural needs the text embeddings: fit(train, encoded=...)")
        encoded.check(train)
        if validation is not None:
            encoded.check(validation)
            if log_fingerprint(validation) != log_fingerprint(train):
                raise ValueError("the validation log is not a split of the training dataset")
        if train.n_impressions == 0:
            raise ValueError("reward model 'neural': the training log has no impressions")
        self.items = np.ascontiguousarray(encoded.items, dtype=np.float32)
        self.queries = np.ascontiguousarray(encoded.queries, dtype=np.float32)
        self.user_profiles = np.ascontiguousarray(encoded.user_profiles, dtype=np.float32)
        self.encoder_fingerprint = encoded.fingerprint
        self.dataset = log_fingerprint(train)
        self.pooling = pooling or UserPooling()
        states = self._pre_log_states(train)

        device = self._torch_device()
        gen = torch.Generator().manual_seed(self.seed)
        module = _Scorer(encoded.dim, self.hidden)
        module.reset(gen)
        module.to(device)
        items_t = torch.from_numpy(self.items).to(device)
        queries_t = torch.from_numpy(self.queries).to(device)
        states_t = torch.from_numpy(states).to(device)

        req = train.impression_request.astype(np.int64)
        keep = train.position < MAX_POSITIONS
        q_idx = torch.from_numpy(train.request_query[req][keep].astype(np.int64)).to(device)
        u_idx = torch.from_numpy(train.request_user[req][keep].astype(np.int64)).to(device)
        i_idx = torch.from_numpy(train.item[keep].astype(np.int64)).to(device)
        pos = torch.from_numpy(train.position[keep].astype(np.int64)).to(device)
        y = torch.from_numpy(train.click[keep].astype(np.float32)).to(device)

        # the 64 examination logits get a 10x learning rate: each sees a whole position's data
        opt = torch.optim.Adam(
            [
                {"params": module.mlp.parameters()},
                {"params": [module.exam_logit], "lr": 10 * self.lr, "weight_decay": 0.0},
            ],
            lr=self.lr,
            weight_decay=self.weight_decay,
        )
        n = len(y)
        module.train()
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, self.batch_size):
                b = order[start : start + self.batch_size]
                logit = module(queries_t[q_idx[b]], states_t[u_idx[b]], items_t[i_idx[b]])
                # log p = log sigmoid(attr) + log sigmoid(exam); log(1 - p) computed stably
                log_p = nn.functional.logsigmoid(logit) + nn.functional.logsigmoid(
                    module.exam_logit[pos[b]]
                )
                log_p = torch.clamp(log_p, max=-1e-6)
                log_not = torch.log(-torch.expm1(log_p))
                loss = -(y[b] * log_p + (1 - y[b]) * log_not).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        module.eval()
        self.module = module.cpu()
        self._apply_examination()
        self.train_log_likelihood = self.log_likelihood(train)
        if validation is not None:
            self.validation_log_likelihood = self.log_likelihood(validation)
        return self

    # ------------------------------------------------------------------ inference
    def context(self, log: SessionLog) -> LogContext:
        """Check ``log`` against the fitted tables; pool its users' pre-log states.

        Raises:
            ValueError: for a log of another dataset.
        """
        if self.module is None:
            raise RuntimeError("reward model 'neural' is not fitted; call fit() first")
        context = super().context(log)
        self._check_tables(log)
        context.arrays["user_states"] = self._pre_log_states(log)
        return context

    def attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        user_state: np.ndarray | None = None,
    ) -> np.ndarray:
        """``sigmoid(MLP(...))`` per candidate; 0 where ``items < 0``."""
        if self.module is None:
            raise RuntimeError("reward model 'neural' is not fitted; call fit() first")
        log = context.log
        requests = np.asarray(requests, dtype=np.int64)
        items = np.atleast_2d(np.asarray(items, dtype=np.int64))
        if user_state is None:
            user_state = context.arrays["user_states"][log.request_user[requests]]
        user_state = np.asarray(user_state, dtype=np.float32)
        if user_state.shape != (len(requests), self.items.shape[1]):
            raise ValueError(
                f"user_state has shape {user_state.shape}, expected "
                f"{(len(requests), self.items.shape[1])} (one pooled state per request)"
            )
        valid = items >= 0
        width = items.shape[1]
        q = torch.from_numpy(self.queries[log.request_query[requests]])
        u = torch.from_numpy(user_state)
        i = torch.from_numpy(self.items[np.where(valid, items, 0)])
        out = np.empty(items.shape, dtype=np.float64)
        rows = max(1, 65536 // max(1, width))
        with torch.no_grad():
            for s in range(0, len(requests), rows):
                qb, ub, ib = q[s : s + rows], u[s : s + rows], i[s : s + rows]
                qb = qb[:, None, :].expand(-1, width, -1)
                ub = ub[:, None, :].expand(-1, width, -1)
                out[s : s + rows] = torch.sigmoid(self.module(qb, ub, ib)).double().numpy()
        return np.where(valid, out, 0.0)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, np.ndarray]:
        if self.module is None:
            raise RuntimeError("reward model 'neural' is not fitted; nothing to save")
        weights = {
            f"weight.{k}": v.detach().cpu().numpy() for k, v in self.module.state_dict().items()
        }
        return {
            **super().state(),
            "items": self.items,
            "queries": self.queries,
            "user_profiles": self.user_profiles,
            "encoder_fingerprint": np.array(self.encoder_fingerprint or ""),
            **weights,
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        self.items = np.asarray(arrays["items"], dtype=np.float32)
        self.queries = np.asarray(arrays["queries"], dtype=np.float32)
        self.user_profiles = np.asarray(arrays["user_profiles"], dtype=np.float32)
        self.encoder_fingerprint = str(arrays["encoder_fingerprint"]) or None
        module = _Scorer(self.items.shape[1], self.hidden)
        module.load_state_dict(
            {
                k.removeprefix("weight."): torch.from_numpy(np.array(v))
                for k, v in arrays.items()
                if k.startswith("weight.")
            }
        )
        module.eval()
        self.module = module

    def config(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "device": self.device,
        }
