"""Train (or evaluate) a ranking policy on logged sessions; TensorBoard + metrics.json per run.

Usage::

    python -m experiments.train                                   # PPO on the synthetic world
    python -m experiments.train agent=dqn encoder=hashing seed=3
    python -m experiments.train agent=cosine                      # a baseline: evaluated only
    python -m experiments.train -m agent=ppo,dqn,cosine seed=0,1,2  # a sweep
    python -m experiments.train hydra.run.dir=outputs/train/RUN resume=true   # after a kill

Steps: prepare the dataset (reused when ``out`` already holds it with the same parameters),
split it, embed its texts (cached by the embedding store), fit the reward model on the training
split (cached by dataset, split, encoder and settings), train on a batched env over the training
sessions with periodic evaluation on held-out sessions, then evaluate on all held-out sessions.
The run directory gets ``tensorboard/`` (SB3's ``rollout/``, ``train/``, ``time/`` plus
``eval/*`` and hparams), ``metrics.json`` and ``checkpoints/last.zip``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed

from agents.baselines import BASELINES, SB3Policy, make_baseline
from agents.evaluation import evaluate
from agents.training import (
    CHECKPOINT,
    SB3_AGENTS,
    CheckpointCallback,
    EvalCallback,
    ProgressCallback,
    build_agent,
    load_agent,
    log_hparams,
    record_eval,
    save_checkpoint,
)
from encoders.base import digest
from encoders.encoded_log import encode_log
from envs.click_models import ClickModel, TruthClickModel, log_fingerprint
from envs.logs import SessionLog
from envs.logs.atomic import atomic_directory
from envs.logs.ground_truth import TRUTH_DIR, GroundTruth
from envs.vector import BatchedReplayEnv
from experiments.prepare import USER_ERRORS, fail

log = logging.getLogger(__name__)


def load_or_prepare(cfg: DictConfig) -> SessionLog:
    """The dataset at ``cfg.out``, written first unless it is there with the same parameters."""
    source = hydra.utils.instantiate(cfg.dataset)
    out = Path(cfg.out)
    if (out / "meta.json").is_file():
        meta = json.loads((out / "meta.json").read_text())
        if meta.get("params") == json.loads(json.dumps(dataclasses.asdict(source))):
            log.info("reusing dataset %s", out)
            return SessionLog.read(out)
        log.info("dataset %s was written with other parameters: rewriting it", out)
    log.info("writing dataset %s (%s)", out, cfg.dataset._target_)
    return source.write(out)


def reward_model(cfg: DictConfig, data: SessionLog, train: SessionLog, encoded: Any) -> ClickModel:
    """Instantiate ``cfg.reward``; fit it on ``train`` once and cache it by what it depends on."""
    log.info("instantiating reward model (%s)", cfg.reward._target_)
    model = hydra.utils.instantiate(cfg.reward)
    if isinstance(model, TruthClickModel) or model.name == "logged":
        return model
    key = digest(
        {
            "reward": OmegaConf.to_container(cfg.reward, resolve=True),
            "dataset": log_fingerprint(data),
            "train_sessions": digest({"ids": train.session_ids.tolist()}),
            "encoder": encoded.fingerprint,
        }
    )
    cached = Path(cfg.paths.cache_dir) / "reward_models" / f"{model.name}-{key}"
    if (cached / "model.json").is_file():
        log.info("reusing fitted reward model %s", cached)
        return ClickModel.load(cached)
    log.info("fitting reward model %s on %d training sessions", model.name, train.n_sessions)
    model.fit(train, encoded=encoded)
    with atomic_directory(cached) as tmp:
        model.save(tmp)
    return model


def run(cfg: DictConfig) -> dict[str, Any]:
    """One training (or baseline evaluation) run; returns what ``metrics.json`` holds."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    agent_name = cfg.agent.name
    if agent_name not in SB3_AGENTS and agent_name not in BASELINES:
        raise ValueError(
            f"agent.name={agent_name!r}; allowed: {', '.join([*SB3_AGENTS, *BASELINES])}"
        )
    if cfg.total_timesteps < 0:
        raise ValueError(f"total_timesteps={cfg.total_timesteps}; allowed: >= 0")
    set_random_seed(cfg.seed)
    log.info("instantiating encoder %s (%s)", cfg.encoder.name, cfg.encoder._target_)
    encoder = hydra.utils.instantiate(cfg.encoder)
    store = hydra.utils.instantiate(cfg.embedding_store)
    env_config = hydra.utils.instantiate(cfg.env)

    data = load_or_prepare(cfg)
    train, test = data.split(cfg.split.test_fraction, by=cfg.split.by, seed=cfg.split.seed)
    encoded = encode_log(data, encoder, store)
    model = reward_model(cfg, data, train, encoded)
    truth = GroundTruth.load(cfg.out) if (Path(cfg.out) / TRUTH_DIR).is_dir() else None

    def evaluate_policy(policy: Any, sessions: int | None) -> dict[str, Any]:
        result = evaluate(
            policy, test, encoded, model, env_config, truth=truth, num_envs=cfg.eval.num_envs,
            bootstrap=cfg.eval.bootstrap, seed=cfg.seed, max_sessions=sessions,
        )  # fmt: skip
        return result.to_dict()

    hparams = {
        "agent": agent_name, "seed": cfg.seed, "encoder": cfg.encoder.name,
        "reward": model.name, "dataset": cfg.dataset.name,
        "total_timesteps": cfg.total_timesteps,
        **{f"agent.{k}": v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items()},
    }  # fmt: skip
    logger = configure(str(run_dir / "tensorboard"), ["tensorboard", "csv"])
    start = time.perf_counter()
    if agent_name in BASELINES:
        policy = make_baseline(agent_name, train, encoded_tables(encoded), seed=cfg.seed)
        timesteps = 0
    else:
        venv = BatchedReplayEnv(
            train, encoded, model, dataclasses.replace(env_config, action_mode="slot"),
            num_envs=cfg.agent.num_envs, device=cfg.device, request_infos=False,
        )  # fmt: skip
        venv.seed(cfg.seed)
        checkpoints = run_dir / "checkpoints"
        hyper = OmegaConf.to_container(cfg.agent.hyperparams, resolve=True)
        scorer = OmegaConf.to_container(cfg.agent.scorer, resolve=True)
        if cfg.resume and (checkpoints / CHECKPOINT).is_file():
            agent = load_agent(agent_name, checkpoints / CHECKPOINT, venv, device=cfg.device)
            log.info("resuming from %s at %d timesteps", checkpoints, agent.num_timesteps)
        else:
            agent = build_agent(agent_name, venv, cfg.seed, cfg.device, hyper, scorer)
        agent.set_logger(logger)
        done = agent.num_timesteps
        callbacks = [
            ProgressCallback(cfg.total_timesteps, initial=done),
            EvalCallback(lambda m: evaluate_policy(SB3Policy(m, env_config.obs_mode, agent_name),
                                                   cfg.eval.sessions), cfg.eval.freq, hparams),
            CheckpointCallback(checkpoints, cfg.checkpoint_freq),
        ]  # fmt: skip
        agent.learn(
            max(0, cfg.total_timesteps - done),
            callback=callbacks,
            reset_num_timesteps=False,
            log_interval=4 if agent_name == "dqn" else 1,  # DQN counts episodes, others updates
        )
        save_checkpoint(agent, checkpoints)
        policy = SB3Policy(agent, env_config.obs_mode, agent_name)
        timesteps = agent.num_timesteps
    train_seconds = time.perf_counter() - start
    final = evaluate_policy(policy, cfg.eval.final_sessions)
    if agent_name in BASELINES:
        log_hparams(logger, hparams)
    record_eval(logger, final)
    logger.dump(timesteps)
    logger.close()
    metrics = {
        **final,
        "policy": agent_name,
        "seed": cfg.seed,
        "total_timesteps": timesteps,
        "train_seconds": round(train_seconds, 2),
        "encoder": cfg.encoder.name,
        "reward_model": model.name,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("wrote %s", run_dir / "metrics.json")
    return metrics


def encoded_tables(encoded: Any) -> dict[str, Any]:
    """The embedding tables the baselines read."""
    return {
        "items": encoded.items,
        "queries": encoded.queries,
        "user_profiles": encoded.user_profiles,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the held-out expected clicks (for sweepers to optimise)."""
    try:
        metrics = run(cfg)
    except (InstantiationException, *USER_ERRORS) as err:
        fail(err)
    print(json.dumps({k: v for k, v in metrics.items() if not k.endswith(("_low", "_high"))}))
    return float(metrics["expected_clicks"])


if __name__ == "__main__":
    main()
