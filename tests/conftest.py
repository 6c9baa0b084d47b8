"""Shared fixtures, each built once per test session: a small synthetic world and a small neural
click model fitted on it, and tiny trained runs of ``rankgym train`` (PPO, DQN, cosine) on one
tiny world whose dataset, embeddings and fitted reward models every in-process run shares
(:mod:`tests.commands`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from rankgym.logs import SessionLog
from rankgym.logs.ground_truth import GroundTruth
from rankgym.logs.synthetic import SyntheticWorld
from rankgym.threads import usable_cores
from tests.commands import SMALL, train_tiny


def pytest_configure(config: pytest.Config) -> None:
    """Torch's threads in a test process: its share of the cores, as rankgym's policy gives
    each of a parallel launcher's jobs (xdist's 2 workers on 2 cores: one thread each), set
    as ``OMP_NUM_THREADS`` for it and every command it launches (a user's value wins). Fixed
    rather than governed by the load: tests compare numbers, and the count changes torch's
    float sums. The xdist controller, which runs no test, leaves its workers to choose."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None and isinstance(getattr(config.option, "numprocesses", None), int) \
            and config.option.numprocesses > 0:  # fmt: skip
        return
    share = max(1, usable_cores() // int(workers or 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


SMALL_WORLD = {"n_items": 400, "n_users": 120, "n_sessions": 300, "propensity_samples": 50}


@pytest.fixture(scope="session")
def small_world() -> tuple[SessionLog, GroundTruth]:
    """A small synthetic log and its ground truth (a few thousand impressions)."""
    return SyntheticWorld(**SMALL_WORLD).generate()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``paths.root_dir`` of the tiny runs: ``data/`` and ``.cache/`` shared by all of them.

    ``runs/`` below it holds only the session's shared runs (``ppo``, ``cosine``): the
    ``rankgym evaluate`` tests value that directory. Other runs go to their test's own
    directory (``train_tiny(tiny_root, tmp_path / "run", ...)``).
    """
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def ppo_run(tiny_root: Path) -> Path:
    """A tiny PPO run (slate PPO, tiny BERT, truth reward): 400 timesteps, evaluated and
    checkpointed every 200."""
    run = tiny_root / "runs" / "ppo"
    train_tiny(tiny_root, run, "agent=ppo", "total_timesteps=400", "eval.freq=200",
               "checkpoint_freq=200", *SMALL["ppo"])  # fmt: skip
    return run


@pytest.fixture(scope="session")
def cosine_run(tiny_root: Path) -> Path:
    """The cosine baseline on the tiny world (valued, not trained)."""
    run = tiny_root / "runs" / "cosine"
    train_tiny(tiny_root, run, "agent=cosine")
    return run


@pytest.fixture(scope="session")
def dqn_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DQN run (one candidate per step): 400 timesteps, evaluated and checkpointed
    every 200."""
    run = tmp_path_factory.mktemp("dqn") / "run"
    train_tiny(tiny_root, run, "agent=dqn", "total_timesteps=400", "eval.freq=200",
               "checkpoint_freq=200", *SMALL["dqn"])  # fmt: skip
    return run


@pytest.fixture(scope="session")
def small_neural(small_world: tuple[SessionLog, GroundTruth]) -> Any:
    """A small neural click model (2 members, 2 epochs, 16 units, PBM structure) fitted on the
    small world's training sessions (``log.split(0.3, seed=0)``: 70%)."""
    from rankgym.envs.click_models.neural import NeuralClickModel

    train, _ = small_world[0].split(0.3, seed=0)
    return NeuralClickModel(epochs=2, hidden=16, structure="pbm", ensemble=2).fit(train)
