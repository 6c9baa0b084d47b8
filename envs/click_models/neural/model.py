"""The neural click model: its tables, network, click structure, calibration and fitting loop
composed into a :class:`~rankgym.envs.click_models.base.ClickModel`."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np
import torch

from rankgym.encoders.encoded_log import EncodedLog, encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.encoders.pooling import UserPooling
from rankgym.envs.click_models.base import (
    MAX_POSITIONS,
    ClickModel,
    LogContext,
    log_fingerprint,
    positional_click_probs,
)
from rankgym.envs.click_models.neural.calibration import calibrate, member_splits
from rankgym.envs.click_models.neural.fitting import fit_members, new_member
from rankgym.envs.click_models.neural.network import Scorer, StackedEnsemble
from rankgym.envs.click_models.neural.settings import STRUCTURES, NeuralSettings
from rankgym.envs.click_models.neural.structure import RequestBatch
from rankgym.envs.click_models.neural.tables import Tables
from rankgym.logs import SessionLog

LEXICAL_ENCODER = HashingEncoder()  # the ``lexical`` text features (conf/encoder/hashing.yaml)
SELECTION_EPOCHS = 5  # structure="auto": the trial fits' epochs (at most)


class NeuralClickModel(ClickModel):
    """Neural click model on text features, fitted by maximum likelihood on logged requests.

    Keyword arguments are the fields of :class:`NeuralSettings` (its defaults, the measured
    ones, where left out); ``model.settings`` holds them. ``NeuralClickModel()`` is the model
    ``reward=neural`` builds; ``NeuralClickModel(ensemble=1, epochs=5)`` a quicker one;
    ``NeuralClickModel(**dataclasses.asdict(settings))`` one of a ``NeuralSettings``.

    Attributes:
        settings: what the model was built with.
        modules: the fitted members (:class:`~.network.Scorer`).
        tables: the model's own input vectors (:class:`~.tables.Tables`; ``None`` before fit).
        selection_log_likelihood: with ``structure="auto"``, each structure's held-out
            log-likelihood per impression.
        train_log_likelihood, validation_log_likelihood: per impression, after :meth:`fit`.
    """

    name = "neural"
    structure = "pbm"
    needs_history = True
    serving_keys = ("penalty",)

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = NeuralSettings(**settings)
        self.structure = "pbm" if self.settings.structure == "auto" else self.settings.structure
        self.selection_log_likelihood: dict[str, float] | None = None
        self.tables: Tables | None = None
        self.modules: list[Scorer] = []
        # built from ``modules`` when served; rebuilt when they are replaced (fit, load_state)
        self._stacked: StackedEnsemble | None = None
        self.train_log_likelihood: float | None = None
        self.validation_log_likelihood: float | None = None

    @property
    def reads_embeddings(self) -> bool:
        """Whether the fit depends on the run's text encoder (``features="encoder"``)."""
        return self.settings.features == "encoder"

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train: SessionLog,
        encoded: EncodedLog | None = None,
        validation: SessionLog | None = None,
        pooling: UserPooling | None = None,
        **context: Any,
    ) -> NeuralClickModel:
        """Fit on ``train``'s logged requests; returns self.

        ``encoded``: the run's text embeddings (read with ``features="encoder"`` only).
        ``pooling`` is how user states are pooled (default :class:`UserPooling`); environments
        replaying with this model must pool the same way. With ``structure="auto"`` one member
        of each structure is fitted on 90% of the training sessions for at most
        ``SELECTION_EPOCHS``, and the structure with the higher log-likelihood on the other 10%
        is kept. With ``calibrate="level"`` the members are fitted on 90% and calibrated on the
        rest (:mod:`.calibration`); otherwise fitted on all sessions.

        Raises:
            ValueError: with ``features="encoder"`` and no ``encoded``, or when its tables do
                not fit ``train``.
        """
        s = self.settings
        if validation is not None and log_fingerprint(validation) != log_fingerprint(train):
            raise ValueError("the validation log is not a split of the training dataset")
        if train.n_impressions == 0:
            raise ValueError("reward model 'neural': the training log has no impressions")
        if s.features == "lexical":
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
        self.tables = Tables.of(encoded, s.use_features)
        if s.item_stats:
            self.tables = self.tables.with_item_statistics(train)
        self.dataset = log_fingerprint(train)
        self.pooling = pooling or UserPooling()
        structure = s.structure
        if structure == "auto":
            structure = self._select_structure(train, encoded)
        if s.calibrate == "level":
            splits = member_splits(train, s)
            self._fit([f for f, _ in splits], structure)
            self._calibrate([h for _, h in splits])
        else:
            self._fit([train] * s.ensemble, structure)
        self.train_log_likelihood = self.log_likelihood(train)
        if validation is not None:
            self.validation_log_likelihood = self.log_likelihood(validation)
        return self

    def _select_structure(self, train: SessionLog, encoded: EncodedLog) -> str:
        """The structure whose trial member has the higher likelihood on a held-out tenth.

        Chosen on one split, crossfit or not (a crossfit fold chose PBM on the cascade world),
        by one member of each structure fitted for at most ``SELECTION_EPOCHS``, uncalibrated:
        a short fit has the better held-out likelihood and the clearer margin (BENCHMARKS.md).
        """
        fit_on, held = train.split(0.1, seed=self.settings.seed)
        trial = dataclasses.replace(
            self.settings, calibrate="none", ensemble=1, bootstrap=0.0, penalty=0.0,
            epochs=min(self.settings.epochs, SELECTION_EPOCHS),
        )  # fmt: skip
        scores = {}
        for option in STRUCTURES:
            settings = dataclasses.asdict(dataclasses.replace(trial, structure=option))
            model = NeuralClickModel(**settings).fit(fit_on, encoded, pooling=self.pooling)
            scores[option] = model.log_likelihood(held)
        self.selection_log_likelihood = scores
        return max(scores, key=scores.__getitem__)

    def _fit(self, parts: list[SessionLog], structure: str) -> None:
        """Fit member ``m`` on ``parts[m]`` under ``structure``; set the model's examination
        (PBM: the members' mean) or abandonment (cascade) from theirs."""
        assert self.tables is not None and self.pooling is not None
        self._stacked = None
        self.modules = fit_members(
            parts, structure, self.settings, self.tables, self.pooling, self._torch_device()
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

    def _calibrate(self, helds: list[SessionLog]) -> None:
        """Calibrate member ``m`` on ``helds[m]`` (:mod:`.calibration`)."""
        batches: dict[int, RequestBatch] = {}  # one per distinct log (members may share one)
        for held in helds:
            if id(held) not in batches:
                batches[id(held)] = self._request_batch(held, torch.device("cpu"))
        calibrate(self, [(m, batches[id(h)]) for m, h in zip(self.modules, helds, strict=True)])
        self._stacked = None  # the members' shifts changed in place

    def _request_batch(self, log: SessionLog, device: torch.device) -> RequestBatch:
        """``log``'s logged requests as tensors on ``device``, with their user states."""
        assert self.tables is not None and self.pooling is not None
        return RequestBatch(log, self.tables, self.pooling, self.settings, device)

    def _torch_device(self) -> torch.device:
        if self.settings.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.settings.device)

    # ------------------------------------------------------------------ inference
    def context(self, log: SessionLog) -> LogContext:
        """Check ``log`` against the fitted tables; pool its requests' user states.

        Raises:
            ValueError: for a log of another dataset.
        """
        tables = self._fitted_tables()
        context = super().context(log)
        EncodedLog(
            tables.items, tables.queries, tables.user_profiles, "", self.encoder_fingerprint or ""
        ).check(log)
        assert self.pooling is not None
        context.arrays["request_states"] = tables.request_states(
            log, self.pooling, self.settings.session_history
        )
        return context

    def attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """``sigmoid(MLP(...))`` per candidate, the members' mean (less ``penalty`` times their
        standard deviation); 0 where ``items < 0``."""
        return self._serve(context, requests, items, history)

    def member_attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """``float64[M, B, K]``: each member's attractiveness (inputs as for
        :meth:`attractiveness`)."""
        out = self._serve(context, requests, items, history, members=True)
        return np.moveaxis(out, -1, 0)

    def member_click_probs(
        self,
        context: LogContext,
        requests: np.ndarray,
        rankings: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """``float64[M, B, L]``: the click probabilities under each member alone, with the
        model's examination or abandonment; ``None`` with one member."""
        if len(self.modules) < 2:
            return None
        rankings = np.atleast_2d(rankings)
        attr = self.member_attractiveness(context, np.asarray(requests), rankings, history)
        return np.stack([positional_click_probs(a, rankings >= 0, self) for a in attr])

    def _serve(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None,
        members: bool = False,
    ) -> np.ndarray:
        """The stacked ensemble over the candidates in bounded passes, as float64 (0 where
        ``items < 0``): ``[B, K]`` served attractiveness (with the ``penalty``), or with
        ``members`` each member's, ``[B, K, M]``."""
        q, u, p, i, codes, valid = self.serving_inputs(context, requests, items, history)
        if self._stacked is None or self._stacked.key != tuple(id(m) for m in self.modules):
            self._stacked = StackedEnsemble(self.modules)
        stacked, penalty = self._stacked, self.settings.penalty
        shape = (*valid.shape, stacked.members) if members else valid.shape
        out = np.empty(shape, dtype=np.float64)
        rows = max(1, 16384 // max(1, valid.shape[1]))  # [rows * W, M * H] floats per pass
        with torch.no_grad():
            for s in range(0, len(valid), rows):
                part = slice(s, s + rows)
                args = (q[part], u[part], None if p is None else p[part], i[part], codes[part])
                probs = stacked.member_probs(*args) if members else stacked(*args, penalty)
                out[part] = probs.double().numpy()
        return np.where(valid[..., None] if members else valid, out, 0.0)

    def serving_inputs(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> tuple[Any, ...]:
        """The network's inputs for candidates ``items`` of ``requests``: ``q, u, p`` per
        request (``[n, D]``; ``p`` None without ``profile``), ``i`` and item ``codes`` per
        candidate (``[n, W, D]``, ``[n, W]``), and the ``valid`` mask (numpy).

        Raises:
            RuntimeError: before ``fit``.
            ValueError: for a ``history`` that is not one row per request.
        """
        tables = self._fitted_tables()
        log = context.log
        requests = np.asarray(requests, dtype=np.int64)
        items = np.atleast_2d(np.asarray(items, dtype=np.int64))
        if history is None or not self.settings.session_history:
            user_state = context.arrays["request_states"][requests]
        else:
            history = np.asarray(history)
            if history.ndim != 2 or len(history) != len(requests):
                raise ValueError(
                    f"history has shape {history.shape}, expected ({len(requests)}, H): one "
                    "right-aligned row of item codes per request"
                )
            assert self.pooling is not None
            user_state = tables.pool(self.pooling, history, log.request_user[requests])
        valid = items >= 0
        q = torch.from_numpy(tables.queries[log.request_query[requests]])
        u = torch.from_numpy(user_state)
        users = log.request_user[requests]
        p = torch.from_numpy(tables.user_profiles[users]) if self.settings.profile else None
        codes = np.where(valid, items, 0)
        return q, u, p, torch.from_numpy(tables.items[codes]), torch.from_numpy(codes), valid

    def _fitted_tables(self) -> Tables:
        if not self.modules or self.tables is None:
            raise RuntimeError("reward model 'neural' is not fitted; call fit() first")
        return self.tables

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, np.ndarray]:
        if not self.modules or self.tables is None:
            raise RuntimeError("reward model 'neural' is not fitted; nothing to save")
        weights = {
            f"weight.{m}.{k}": v.detach().cpu().numpy()
            for m, module in enumerate(self.modules)
            for k, v in module.state_dict().items()
        }
        return {
            **super().state(),
            "items": self.tables.items,
            "queries": self.tables.queries,
            "user_profiles": self.tables.user_profiles,
            "user_features": self.tables.user_features,
            "encoder_fingerprint": np.array(self.encoder_fingerprint or ""),
            **weights,
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        as32 = lambda key: np.asarray(arrays[key], dtype=np.float32)  # noqa: E731
        self.tables = Tables(
            as32("items"), as32("queries"), as32("user_profiles"), as32("user_features"),
            np.zeros(0, dtype=np.int64),
        )  # fmt: skip
        self.encoder_fingerprint = str(arrays["encoder_fingerprint"]) or None
        self.modules, self._stacked = [], None
        for m in range(self.settings.ensemble):
            module = new_member(self.tables, self.settings)
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
        return dataclasses.asdict(self.settings)

    def serve_as(self, other: ClickModel) -> NeuralClickModel:
        """This fit, serving with ``other``'s ``penalty``; returns self."""
        if isinstance(other, NeuralClickModel):
            self.settings = dataclasses.replace(self.settings, penalty=other.settings.penalty)
        return self


# the keyword arguments are NeuralSettings' fields: tell help() and ClickModel.load (which checks
# a saved config against the signature)
NeuralClickModel.__signature__ = inspect.signature(NeuralSettings).replace(
    return_annotation=inspect.Signature.empty
)
