"""One run setup: dataset, split, embeddings, fitted reward model and ground truth, cached.

Every entry point that trains, evaluates or reports on policies (``rankgym train`` and the
tools built on it) calls :func:`setup_run` with objects it instantiated from its config, so they
all see the same data, the same split and the same fitted reward model. Plain arguments in, no
Hydra objects: a notebook can call it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankgym.encoders.base import TextEncoder, digest
from rankgym.encoders.encoded_log import EncodedLog, encode_log
from rankgym.encoders.store import EmbeddingStore
from rankgym.envs.click_models.base import ClickModel, log_fingerprint
from rankgym.envs.click_models.user_response import fit_user_dynamics
from rankgym.envs.replay import ReplayConfig
from rankgym.logs import SessionLog
from rankgym.logs.atomic import atomic_directory, check_replaceable, file_lock
from rankgym.logs.ground_truth import LATENT_DIR, TRUTH_DIR, GroundTruth
from rankgym.logs.source import LogSource

log = logging.getLogger(__name__)
SPLIT_BY = ("session", "time", "user")
PACKAGES = ("rankgym",)  # rankgym's code (model_sources)


@dataclass(frozen=True)
class Split:
    """How sessions are divided into train / valid / test (``split`` in ``conf/config.yaml``).

    The test sessions are drawn first, exactly as a two-way split draws them, so they do not
    depend on ``valid_fraction``; the valid sessions are then drawn from the rest (by time: the
    latest of them). Training and reward-model fitting read train; periodic evaluation and
    hyperparameter searches read valid; the final numbers read test.

    Args:
        test_fraction: share of all sessions held out for the final evaluation, in ``(0, 1)``.
        valid_fraction: share of all sessions held out for model selection, in ``[0, 1)``
            (``0``: no valid split; periodic evaluation then reads the test sessions).
        by: ``session`` (a seeded random subset), ``time`` (the latest sessions) or ``user``
            (a seeded random subset of users, each with all their sessions).
        seed: seed of the random subsets.
    """

    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    by: str = "session"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"split.test_fraction={self.test_fraction}; allowed: (0, 1)")
        if not 0 <= self.valid_fraction < 1 - self.test_fraction:
            raise ValueError(
                f"split.valid_fraction={self.valid_fraction}; allowed: [0, "
                f"{1 - self.test_fraction:g}) (1 - split.test_fraction, so training keeps some)"
            )
        if self.by not in SPLIT_BY:
            raise ValueError(f"split.by={self.by!r}; allowed: {', '.join(SPLIT_BY)}")

    def apply(self, data: SessionLog) -> tuple[SessionLog, SessionLog | None, SessionLog]:
        """``(train, valid, test)`` of ``data``; ``valid`` is ``None`` when ``valid_fraction``
        is 0."""
        train, test = data.split(self.test_fraction, by=self.by, seed=self.seed)
        if self.valid_fraction == 0:
            return train, None, test
        share = self.valid_fraction / (1 - self.test_fraction)
        train, valid = train.split(share, by=self.by, seed=self.seed + 1)
        return train, valid, test


@dataclass
class RunSetup:
    """What a run trains and evaluates on.

    Attributes:
        data: the whole dataset; ``train``, ``valid`` (``None`` without a valid split) and
            ``test`` its split (codes shared).
        encoded: the text embeddings of ``data``'s items, queries and user profiles.
        reward: the reward model, fitted on ``train`` (or the ground truth, or logged clicks).
        truth: the synthetic world's ground truth, ``None`` for real logs.
        env: the replay options every env of the run uses.
        observed: a sequential world's log, what its logging policy's users reached (``data``
            is then the whole latent timeline, which policies are replayed on under the
            truth); ``None`` for other datasets.
    """

    data: SessionLog
    train: SessionLog
    test: SessionLog
    encoded: EncodedLog
    reward: ClickModel
    truth: GroundTruth | None
    env: ReplayConfig
    valid: SessionLog | None = None
    observed: SessionLog | None = None

    @property
    def selection(self) -> SessionLog:
        """The sessions model selection reads: valid, or test when there is no valid split."""
        return self.valid if self.valid is not None else self.test


def load_or_prepare(source: LogSource, out: str | Path) -> SessionLog:
    """The dataset at ``out``, written first unless it is there with the same parameters.

    Jobs that start together wait for the first one to write it (:func:`file_lock`).
    """
    out = Path(out)
    with file_lock(out.parent / f".{out.name}.lock", f"dataset {out}"):
        return _load_or_prepare(source, out)


def _load_or_prepare(source: LogSource, out: Path) -> SessionLog:
    if (out / "meta.json").is_file():
        meta = json.loads((out / "meta.json").read_text())
        if meta.get("params") == json.loads(json.dumps(dataclasses.asdict(source))):
            log.info("reusing dataset %s", out)
            return SessionLog.read(out)
        log.info("dataset %s was written with other parameters: rewriting it", out)
    check_replaceable(out, "meta.json")  # before generating: never replace a user's files
    log.info("writing dataset %s (%s)", out, type(source).__name__)
    return source.write(out)


def fit_reward_model(
    model: ClickModel,
    data: SessionLog,
    train: SessionLog,
    encoded: EncodedLog,
    env: ReplayConfig,
    cache_dir: str | Path | None = None,
) -> ClickModel:
    """Fit ``model`` on ``train`` (with the env's user-state pooling), cached on disk.

    The cache key is everything the fit depends on: the model's class and settings, the
    dataset, the training sessions, the encoder (for models that read its embeddings) and the
    pooling (for models that read the user's history), and the source of the code that fits it
    (:func:`model_sources`). Models that need no fitting (``truth``, ``logged``) are returned
    as they are.
    """
    if model.name in ("truth", "logged"):
        return model
    key = digest(
        {
            "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": model.fit_config(),
            "dataset": log_fingerprint(data),
            # the training impressions themselves: two worlds can share every id and differ
            # only in their clicks (a PBM and a cascade world of one seed)
            "train_log": content_digest(train),
            "encoder": encoded.fingerprint if model.reads_embeddings else None,
            "pooling": dataclasses.asdict(env.user_pooling) if model.needs_history else None,
            # the code that fits it: a fit by an earlier version is not served as this one's
            "code": code_digest(type(model)),
        }
    )
    cached = Path(cache_dir) / "reward_models" / f"{model.name}-{key}" if cache_dir else None
    if cached is None:
        log.info("fitting reward model %s on %d training sessions", model.name, train.n_sessions)
        model.fit(train, encoded=encoded, pooling=env.user_pooling)
        return model
    # jobs that start together: the first fits, the others wait and load its fit
    with file_lock(cached.parent / f".{cached.name}.lock", f"reward model {cached.name}"):
        return _fit_cached(model, train, encoded, env, cached)


def fit_simulator(
    model: ClickModel,
    data: SessionLog,
    train: SessionLog,
    encoded: EncodedLog,
    env: ReplayConfig,
    observed: SessionLog | None,
    cache_dir: str | Path | None = None,
) -> ClickModel:
    """:func:`fit_reward_model`, and on a sequential world (``observed`` is its reached log)
    the simulator it needs: the click model fitted to the training requests the logging
    policy's users reached, nothing else, and a user-response model fitted beside it
    (:func:`~rankgym.envs.click_models.user_response.fit_user_dynamics`, a few seconds, not
    cached)."""
    if observed is None or model.name == "truth":
        return fit_reward_model(model, data, train, encoded, env, cache_dir)
    if model.name == "logged":
        raise ValueError(
            "reward=logged: a sequential world (dataset.dynamics) replays its latent timeline, "
            "whose unreached requests have no logged clicks; allowed: reward=truth or a fitted "
            "model (neural_longterm, neural, pbm), which gets a user-response model fitted "
            "beside it"
        )
    reached = np.isin(train.request_ids, observed.request_ids)
    model = fit_reward_model(model, data, train.select_requests(reached), encoded, env, cache_dir)
    model.response = fit_user_dynamics(train, model, reached)
    log.info("fitted user-response model: %s", model.response.report)
    return model


def _fit_cached(
    model: ClickModel, train: SessionLog, encoded: EncodedLog, env: ReplayConfig, cached: Path
) -> ClickModel:
    if (cached / "model.json").is_file():
        log.info("reusing fitted reward model %s", cached)
        return ClickModel.load(cached).serve_as(model)
    log.info("fitting reward model %s on %d training sessions", model.name, train.n_sessions)
    model.fit(train, encoded=encoded, pooling=env.user_pooling)
    with atomic_directory(cached, marker="model.json") as tmp:
        model.save(tmp)
    return model


def model_sources(cls: type) -> list[Path]:
    """The rankgym source files a model class's fit depends on: the modules of the class and
    its bases, and, transitively, of every rankgym class, function or module their namespaces
    import (a model split over several modules is covered whole)."""

    def rankgym_module(name: object) -> bool:
        return isinstance(name, str) and name.split(".")[0] in PACKAGES and name in sys.modules

    todo = [base.__module__ for base in cls.__mro__ if rankgym_module(base.__module__)]
    modules: dict[str, object] = {}
    while todo:
        name = todo.pop()
        if name in modules:
            continue
        modules[name] = module = sys.modules[name]
        for value in vars(module).values():
            used = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", "")
            if rankgym_module(used) and used not in modules:
                todo.append(used)
    files = {getattr(m, "__file__", None) for m in modules.values()}
    return sorted(Path(f) for f in files if f)


def code_digest(cls: type) -> str:
    """A digest of :func:`model_sources`: changing the code that fits a model changes its
    cache key. (Keyed by settings alone, a cached fit of older code was once reported as the
    current code's fidelity.)"""
    h = hashlib.sha256()
    for path in model_sources(cls):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def content_digest(log: SessionLog) -> str:
    """A digest of a log's impressions (requests, items, positions, clicks)."""
    h = hashlib.sha256()
    for array in (log.impression_request, log.item, log.position, log.click):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:24]


def setup_run(
    source: LogSource,
    out: str | Path,
    encoder: TextEncoder,
    reward: ClickModel | Callable[[], ClickModel],
    env: ReplayConfig,
    split: Split,
    store: EmbeddingStore | None = None,
    cache_dir: str | Path | None = None,
) -> RunSetup:
    """Prepare (or reuse) the dataset, split it, embed it, fit the reward model.

    Args:
        source: the dataset source; ``out`` its canonical directory (reused when it holds the
            same parameters).
        encoder: the text encoder; ``store`` caches its vectors.
        reward: the reward model (unfitted; fitted here on the training sessions), or a
            function that builds it once the dataset is written (the ground truth loads from
            the dataset directory).
        env: the replay options (their user-state pooling is the reward model's too).
        split: how sessions are divided into train / valid / test.
        cache_dir: where fitted reward models are cached (``None``: no cache).
    """
    data = load_or_prepare(source, out)
    observed = None
    latent = Path(out) / TRUTH_DIR / LATENT_DIR
    if (latent / "meta.json").is_file():  # a sequential world: policies replay its timeline
        observed, data = data, SessionLog.read(latent)
    train, valid, test = split.apply(data)
    # the store encodes each text once, however many jobs start together (its own lock)
    encoded = encode_log(data, encoder, store)
    model = reward if isinstance(reward, ClickModel) else reward()
    model = fit_simulator(model, data, train, encoded, env, observed, cache_dir)
    truth = GroundTruth.load(out) if (Path(out) / TRUTH_DIR).is_dir() else None
    return RunSetup(data, train, test, encoded, model, truth, env, valid, observed)
