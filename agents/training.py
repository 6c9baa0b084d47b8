"""Building and training SB3 ranking agents: plain arguments in, no Hydra objects.

``experiments.train`` composes the config and calls these; a notebook can call them directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.vec_env import VecEnv
from tqdm.auto import tqdm

from agents.policies import MaskedDQN, RankingActorCriticPolicy, RankingDQNPolicy

SB3_AGENTS = {"ppo": PPO, "a2c": A2C, "dqn": MaskedDQN}
CHECKPOINT = "last.zip"
REPLAY_BUFFER = "last_replay_buffer.pkl"


def build_agent(
    name: str,
    venv: VecEnv,
    seed: int,
    device: str = "auto",
    hyperparams: dict[str, Any] | None = None,
    scorer: dict[str, Any] | None = None,
) -> BaseAlgorithm:
    """A PPO, A2C or DQN agent with the masked candidate-scoring policy.

    Args:
        name: ``ppo``, ``a2c`` or ``dqn``.
        venv: the training env (``BatchedReplayEnv``); its embedding tables go into the policy.
        seed: seeds SB3 (torch, numpy, the env).
        device: ``auto`` (cuda when present), ``cpu`` or ``cuda``.
        hyperparams: keyword arguments of the SB3 algorithm (``learning_rate``, ``n_steps``...).
        scorer: ``CandidateScorer`` arguments (``variant``, ``hidden``, ``item_bias``).
    """
    if name not in SB3_AGENTS:
        raise ValueError(f"agent.name={name!r} is not trainable; allowed: {', '.join(SB3_AGENTS)}")
    tables = venv.get_attr("embedding_tables")[0]
    policy = RankingDQNPolicy if name == "dqn" else RankingActorCriticPolicy
    policy_kwargs = {"scorer": dict(scorer or {}), "tables": tables}
    try:
        model = SB3_AGENTS[name](
            policy, venv, seed=seed, device=device, verbose=0, policy_kwargs=policy_kwargs,
            **(hyperparams or {}),
        )  # fmt: skip
    except TypeError as err:  # an unknown hyperparameter: name it
        raise ValueError(f"agent.hyperparams for {name}: {err}") from err
    # the tables now live in the policy's buffers (saved in its state dict); the kwargs SB3
    # pickles into every checkpoint keep only their shapes, to rebuild the buffers on load
    model.policy_kwargs.pop("tables")
    model.policy_kwargs["table_shapes"] = model.policy.table_shapes
    return model


def load_agent(name: str, path: str | Path, venv: VecEnv, device: str = "auto") -> BaseAlgorithm:
    """Load a checkpoint written by :class:`CheckpointCallback` (or ``model.save``)."""
    if name not in SB3_AGENTS:
        raise ValueError(f"agent.name={name!r} is not trainable; allowed: {', '.join(SB3_AGENTS)}")
    model = SB3_AGENTS[name].load(path, env=venv, device=device)
    buffer = Path(path).with_name(REPLAY_BUFFER)
    if name == "dqn" and buffer.is_file():
        model.load_replay_buffer(buffer)
    return model


class ProgressCallback(BaseCallback):
    """A tqdm bar over the training timesteps (SB3's own bar needs ``rich``)."""

    def __init__(self, total: int, initial: int = 0) -> None:
        super().__init__()
        self.total, self.initial = total, initial
        self.bar: Any = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.initial, desc="training", unit=" steps",
                        unit_scale=True, disable=None)  # fmt: skip

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class EvalCallback(BaseCallback):
    """Evaluate every ``freq`` timesteps and log ``eval/*`` scalars (and hparams once).

    Args:
        evaluate: ``model -> dict`` of metric name to value (``expected_clicks``...).
        freq: timesteps between evaluations.
        hparams: the run's hyperparameters, logged once through TensorBoard's hparams plugin.
    """

    def __init__(
        self,
        evaluate: Callable[[BaseAlgorithm], dict[str, float]],
        freq: int,
        hparams: dict[str, Any],
    ) -> None:
        super().__init__()
        self.evaluate, self.freq, self.hparams = evaluate, freq, hparams
        self.next_eval = freq
        self.history: list[tuple[int, dict[str, float]]] = []

    def _on_training_start(self) -> None:
        self.next_eval = (self.num_timesteps // self.freq + 1) * self.freq
        log_hparams(self.logger, self.hparams)

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self.next_eval += self.freq
            metrics = self.evaluate(self.model)
            record_eval(self.logger, metrics)
            self.logger.dump(self.num_timesteps)
            self.history.append((self.num_timesteps, metrics))
        return True


class CheckpointCallback(BaseCallback):
    """Save ``directory/last.zip`` (and DQN's replay buffer) every ``freq`` timesteps, atomically.

    A killed run resumes from the last checkpoint with ``resume=true``.
    """

    def __init__(self, directory: str | Path, freq: int) -> None:
        super().__init__()
        self.directory, self.freq = Path(directory), freq
        self.next_save = freq

    def _on_training_start(self) -> None:
        self.next_save = (self.num_timesteps // self.freq + 1) * self.freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_save:
            self.next_save += self.freq
            save_checkpoint(self.model, self.directory)
        return True


def save_checkpoint(model: BaseAlgorithm, directory: str | Path) -> Path:
    """Write ``last.zip`` (+ replay buffer) through temporary files renamed into place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MaskedDQN):
        tmp = directory / f".{REPLAY_BUFFER}.tmp"
        model.save_replay_buffer(tmp)
        os.replace(tmp, directory / REPLAY_BUFFER)
    tmp = directory / f".tmp-{CHECKPOINT}"
    model.save(tmp)
    os.replace(tmp, directory / CHECKPOINT)
    return directory / CHECKPOINT


def record_eval(logger: Any, metrics: dict[str, float]) -> None:
    """Log evaluation metrics under ``eval/`` (TensorBoard tags ``eval/expected_clicks``...)."""
    for key, value in metrics.items():
        if isinstance(value, int | float | np.floating) and not key.endswith(("_low", "_high")):
            logger.record(f"eval/{key}", float(value))


def log_hparams(logger: Any, hparams: dict[str, Any]) -> None:
    """The run's hyperparameters through TensorBoard's hparams plugin (logged once)."""
    flat = {
        k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in hparams.items()
    }
    metric_dict = {"eval/expected_clicks": 0.0, "eval/true_expected_clicks": 0.0}
    logger.record("hparams", HParam(flat, metric_dict), exclude=("stdout", "log", "json", "csv"))
