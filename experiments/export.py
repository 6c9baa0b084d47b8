"""Export a finished run's policy as a ranker directory that serves without torch.

Usage::

    python -m experiments.export run=outputs/train/RUN                 # -> RUN/ranker
    python -m experiments.export run=outputs/train/RUN out=rankers/ppo with_encoder=false
    python -m experiments.train export=true                            # at the end of training

Works for PPO, A2C and DQN runs (their final checkpoint) and for ``agent=cosine`` and
``agent=popularity`` runs (refitted on the run's training sessions), so a policy and a baseline
can be A/B tested with the same serving code. The run's own config (``run_config.yaml``) rebuilds
its data, embeddings and agent; what is written is described in :mod:`agents.export`; serve it
with ``python -m experiments.serve ranker=<dir>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from agents.baselines import SB3Policy
from agents.checkpoint import CHECKPOINT
from agents.export import export_ranker
from agents.training import SB3Agent
from encoders.base import digest
from envs.setup import RunSetup
from experiments.sweeps import run_job

log = logging.getLogger(__name__)
RANKER_DIR = "ranker"
METRIC_KEYS = ("expected_clicks", "expected_clicks_ci_low", "expected_clicks_ci_high",
               "true_expected_clicks", "ndcg@10", "total_timesteps", "seed")  # fmt: skip


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
    from experiments.train import instantiate

    encoder = instantiate(cfg.encoder, f"encoder {cfg.encoder.name}")
    return export_ranker(
        policy, s.encoded, s.data.item_ids, s.data.query_texts, s.data.user_ids, s.env, out,
        encoder=encoder, with_encoder=with_encoder, max_candidates=max_candidates,
        run=run_info(run_dir, cfg),
    )  # fmt: skip


def load_run_policy(
    run_dir: str | Path, reward: DictConfig | None = None
) -> tuple[DictConfig, RunSetup, Any]:
    """The run at ``run_dir`` rebuilt from its own config: ``(config, setup, policy)``.

    SB3 agents load their final checkpoint (nothing unpickled); baselines are refitted on the
    run's training sessions. ``reward`` (a ``conf/reward`` node) replaces the run's reward
    model: the setup then fits that one on the run's training sessions instead
    (``experiments.evaluate``); its interpolations (``${out}``) resolve against the run's config.

    Raises:
        FileNotFoundError: ``run_dir`` is not an ``experiments.train`` run.
        CheckpointError: a missing or foreign checkpoint (named).
        ValueError: a run whose agent keeps no policy (``agent=supervised``).
    """
    from experiments.train import (
        RUN_CONFIG,
        instantiate,
        load_run_config,
        setup,
        training_env,
    )

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
    s = setup(cfg)
    if not isinstance(agent, SB3Agent):
        return cfg, s, agent.fit(s.train, s.encoded)
    venv = training_env(s, agent, "cpu")
    model = agent.load(run_dir / "checkpoints" / CHECKPOINT, venv, cfg.seed, "cpu")
    return cfg, s, SB3Policy(model, s.env.obs_mode, agent.name)


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    with_encoder: bool | None = None,
    max_candidates: int = 1000,
) -> Path:
    """Export the policy of the run at ``run_dir`` to ``out`` (default ``<run>/ranker``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a finished ``experiments.train`` run.
        ValueError: an agent that cannot be exported, or a bad setting (named).
    """
    cfg, s, policy = load_run_policy(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / RANKER_DIR
    return export_policy(cfg, policy, s, Path(run_dir), target, with_encoder, max_candidates)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``conf/export.yaml``)."""
    out = run_job(lambda: export_run(cfg.run, cfg.out, cfg.with_encoder, cfg.max_candidates))
    if out is not None:
        print(f"ranker written to {out}\nserve it: python -m experiments.serve ranker={out}")


if __name__ == "__main__":
    main()
