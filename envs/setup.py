"""One run setup: dataset, split, embeddings, fitted reward model and ground truth, cached.

Every entry point that trains, evaluates or reports on policies (``experiments.train`` and the
tools built on it) calls :func:`setup_run` with objects it instantiated from its config, so they
all see the same data, the same split and the same fitted reward model. Plain arguments in, no
Hydra objects: a notebook can call it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.base import TextEncoder, digest
from encoders.encoded_log import EncodedLog, encode_log
from encoders.store import EmbeddingStore
from envs.click_models.base import ClickModel, log_fingerprint
from envs.logs import SessionLog
from envs.logs.atomic import atomic_directory, check_replaceable
from envs.logs.ground_truth import TRUTH_DIR, GroundTruth
from envs.logs.source import LogSource
from envs.replay import ReplayConfig

log = logging.getLogger(__name__)
SPLIT_BY = ("session", "time")


@dataclass(frozen=True)
class Split:
    """How sessions are held out (``split`` in ``conf/config.yaml``).

    Args:
        test_fraction: share of sessions held out for evaluation, in ``(0, 1)``.
        by: ``session`` (a seeded random subset) or ``time`` (the latest sessions).
        seed: seed of the random subset.
    """

    test_fraction: float = 0.2
    by: str = "session"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"split.test_fraction={self.test_fraction}; allowed: (0, 1)")
        if self.by not in SPLIT_BY:
            raise ValueError(f"split.by={self.by!r}; allowed: {', '.join(SPLIT_BY)}")


@dataclass
class RunSetup:
    """What a run trains and evaluates on.

    Attributes:
        data: the whole dataset; ``train`` and ``test`` its split (codes shared).
        encoded: the text embeddings of ``data``'s items, queries and user profiles.
        reward: the reward model, fitted on ``train`` (or the ground truth, or logged clicks).
        truth: the synthetic world's ground truth, ``None`` for real logs.
        env: the replay options every env of the run uses.
    """

    data: SessionLog
    train: SessionLog
    test: SessionLog
    encoded: EncodedLog
    reward: ClickModel
    truth: GroundTruth | None
    env: ReplayConfig


def load_or_prepare(source: LogSource, out: str | Path) -> SessionLog:
    """The dataset at ``out``, written first unless it is there with the same parameters."""
    out = Path(out)
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
    pooling (for models that read the user's history). Models that need no fitting (``truth``,
    ``logged``) are returned as they are.
    """
    if model.name in ("truth", "logged"):
        return model
    key = digest(
        {
            "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": model.config(),
            "dataset": log_fingerprint(data),
            # the training impressions themselves: two worlds can share every id and differ
            # only in their clicks (a PBM and a cascade world of one seed)
            "train_log": content_digest(train),
            "encoder": encoded.fingerprint if model.reads_embeddings else None,
            "pooling": dataclasses.asdict(env.user_pooling) if model.needs_history else None,
        }
    )
    cached = Path(cache_dir) / "reward_models" / f"{model.name}-{key}" if cache_dir else None
    if cached is not None and (cached / "model.json").is_file():
        log.info("reusing fitted reward model %s", cached)
        return ClickModel.load(cached)
    log.info("fitting reward model %s on %d training sessions", model.name, train.n_sessions)
    model.fit(train, encoded=encoded, pooling=env.user_pooling)
    if cached is not None:
        with atomic_directory(cached, marker="model.json") as tmp:
            model.save(tmp)
    return model


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
        split: how sessions are held out.
        cache_dir: where fitted reward models are cached (``None``: no cache).
    """
    data = load_or_prepare(source, out)
    train, test = data.split(split.test_fraction, by=split.by, seed=split.seed)
    encoded = encode_log(data, encoder, store)
    model = reward if isinstance(reward, ClickModel) else reward()
    model = fit_reward_model(model, data, train, encoded, env, cache_dir)
    truth = GroundTruth.load(out) if (Path(out) / TRUTH_DIR).is_dir() else None
    return RunSetup(data, train, test, encoded, model, truth, env)
