"""A run directory's life outside training: build its setup, rebuild its policy, export it.

``rankgym.experiments.train`` writes run directories; ``export``, ``evaluate``, ``fidelity`` and
``bench`` read them back. What they share lives here, so no entry point imports another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from rankgym.agents.baselines import SB3Policy
from rankgym.agents.export import export_ranker
from rankgym.agents.supervised import SupervisedAgent
from rankgym.agents.training import SB3Agent
from rankgym.encoders.base import digest
from rankgym.envs.setup import RunSetup, Split, setup_run
from rankgym.envs.vector import BatchedReplayEnv

log = logging.getLogger(__name__)
RANKER_DIR = "ranker"
METRIC_KEYS = ("expected_clicks", "expected_clicks_ci_low", "expected_clicks_ci_high",
               "true_expected_clicks", "ndcg@10", "total_timesteps", "seed")  # fmt: skip
RUN_CONFIG = "run_config.yaml"  # the run's own resolved config (Hydra rewrites .hydra/ on resume)


def load_run_config(path: Path) -> DictConfig:
    """A run's ``run_config.yaml``, with what older rankgym versions left out filled in as
    they ran it (``split.valid_fraction: 0``: runs before the valid split trained on all
    non-test sessions)."""
    saved = OmegaConf.load(path)
    if OmegaConf.select(saved, "split") is not None and "valid_fraction" not in saved.split:
        OmegaConf.update(saved, "split.valid_fraction", 0.0, force_add=True)
    return saved


def instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """Log the ``_target_`` of a config group, then instantiate it."""
    log.info("instantiating %s (%s)", what, node._target_)
    return hydra.utils.instantiate(node, **kwargs)


def setup(cfg: DictConfig) -> RunSetup:
    """The run setup of ``cfg`` (dataset, split, embeddings, fitted reward model)."""
    return setup_run(
        source=instantiate(cfg.dataset, f"dataset {cfg.dataset.name}"),
        out=cfg.out,
        encoder=instantiate(cfg.encoder, f"encoder {cfg.encoder.name}"),
        reward=lambda: instantiate(cfg.reward, "reward model"),
        env=instantiate(cfg.env, "env options"),
        split=Split(**OmegaConf.to_container(cfg.split, resolve=True)),
        store=instantiate(cfg.embedding_store, "embedding store"),
        cache_dir=cfg.paths.cache_dir,
    )


def training_env(s: RunSetup, agent: SB3Agent | SupervisedAgent, device: str) -> BatchedReplayEnv:
    """The batched env over the training sessions, in the agent's action mode and with its
    ``num_envs`` (no per-request infos: training does not read them)."""
    env = dataclasses.replace(s.env, action_mode=agent.action_mode)
    return BatchedReplayEnv(s.train, s.encoded, s.reward, env, num_envs=agent.num_envs,
                            device=device, request_infos=False)  # fmt: skip


def run_info(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """What the manifest records about the run: path, config digest and final metrics."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {
        "path": str(run_dir.resolve()),
        "config_digest": digest(OmegaConf.to_container(cfg, resolve=True)),
        "agent": cfg.agent.name,
        "dataset": cfg.dataset.name,
        "metrics": {k: metrics[k] for k in METRIC_KEYS if k in metrics},
    }


def export_policy(
    cfg: DictConfig,
    policy: Any,
    s: RunSetup,
    run_dir: Path,
    out: Path,
    with_encoder: bool | None = None,
    max_candidates: int = 1000,
) -> Path:
    """Export ``policy`` of the run ``run_dir`` (config ``cfg``, setup ``s``) to ``out``."""
    encoder = instantiate(cfg.encoder, f"encoder {cfg.encoder.name}")
    return export_ranker(
        policy, s.encoded, s.data.item_ids, s.data.query_texts, s.data.user_ids, s.env, out,
        encoder=encoder, with_encoder=with_encoder, max_candidates=max_candidates,
        run=run_info(run_dir, cfg),
    )  # fmt: skip


def load_run_policy(
    run_dir: str | Path, reward: DictConfig | None = None, keep: str | None = None
) -> tuple[DictConfig, RunSetup, Any]:
    """The run at ``run_dir`` rebuilt from its own config: ``(config, setup, policy)``.

    SB3 agents load the checkpoint their ``agent.keep`` names (``last`` or ``best``; nothing
    unpickled), or the one ``keep`` names; baselines are refitted on the run's training
    sessions. ``reward`` (a ``conf/reward`` node) replaces the run's reward model: the setup
    then fits that one on the run's training sessions instead (``rankgym.experiments.evaluate``);
    its interpolations (``${out}``) resolve against the run's config.

    Raises:
        FileNotFoundError: ``run_dir`` is not an ``rankgym.experiments.train`` run.
        CheckpointError: a missing or foreign checkpoint (named).
        ValueError: a run whose agent keeps no policy (``agent=supervised``).
    """
    run_dir = Path(run_dir)
    config_file = run_dir / RUN_CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file}: missing; run= takes a run directory written by experiments.train"
        )
    cfg = load_run_config(config_file)
    if reward is not None:
        cfg.reward = OmegaConf.to_container(reward, resolve=False)
    agent = instantiate(cfg.agent, f"agent {cfg.agent.name}")
    if not isinstance(agent, SB3Agent) and not hasattr(agent, "fit"):
        raise ValueError(
            f"{run_dir}: an agent={cfg.agent.name} run keeps no policy to load; allowed: "
            "ppo, a2c, dqn runs and the baselines"
        )
    if keep is not None and isinstance(agent, SB3Agent):
        cfg.agent.keep = keep  # the run's config as valued (evaluate writes it)
        agent = instantiate(cfg.agent, f"agent {cfg.agent.name}")  # checks the value
    s = setup(cfg)
    if not isinstance(agent, SB3Agent):
        return cfg, s, agent.fit(s.train, s.encoded)
    venv = training_env(s, agent, "cpu")
    model = agent.load(run_dir / "checkpoints" / agent.keep, venv, cfg.seed, "cpu")
    return cfg, s, SB3Policy(model, s.env.obs_mode, agent.name)
