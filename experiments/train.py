"""Train (or evaluate) a ranking policy on logged sessions; TensorBoard + metrics.json per run.

Usage::

    rankgym train                                   # PPO on the synthetic world
    rankgym train agent=dqn encoder=hashing seed=3
    rankgym train agent=cosine                      # a baseline: evaluated only
    rankgym train -m agent=ppo,dqn,cosine seed=0,1,2  # a sweep
    rankgym train hydra.run.dir=outputs/train/RUN resume=true   # after a kill

Steps: prepare the dataset (reused when ``out`` already holds it with the same parameters),
split it, embed its texts (cached by the embedding store), fit the reward model on the training
split (cached by dataset, split, encoder and settings), train on a batched env over the training
sessions with periodic evaluation on held-out sessions, then evaluate on all held-out sessions
(plus, on logs with propensities, off-policy estimates of the policy's clicks per request beside
the log's own: ``ope_iips``, ``ope_rips``, ..., ``logged_clicks``, :mod:`rankgym.agents.ope`).
The run directory gets ``tensorboard/`` (SB3's ``rollout/``, ``train/``, ``time/`` plus
``eval/*`` and hparams), ``metrics.json`` and ``checkpoints/last/``
(:mod:`rankgym.agents.checkpoint`: nothing in it is unpickled when a run resumes); with
``export=true`` also ``ranker/``, the policy as a servable ranker
(:mod:`rankgym.experiments.export`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.utils import set_random_seed

from rankgym import threads
from rankgym.agents.baselines import CosinePolicy, PopularityPolicy, SB3Policy
from rankgym.agents.checkpoint import (
    BEST,
    CHECKPOINT,
    BestCheckpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from rankgym.agents.evaluation import EvaluationResult, evaluate
from rankgym.agents.ope import logged_clicks, off_policy_estimates
from rankgym.agents.supervised import SupervisedAgent
from rankgym.agents.training import (
    STEP_KEY,
    CheckpointCallback,
    EvalCallback,
    ProgressCallback,
    SB3Agent,
    log_hparams,
    make_logger,
    record_final,
    resolve_precision,
)
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.setup import RunSetup
from rankgym.experiments.runs import (
    RANKER_DIR,
    RUN_CONFIG,
    export_policy,
    instantiate,
    load_run_config,
    setup,
    training_env,
)
from rankgym.experiments.sweeps import (
    check_objective,
    configure_threads,
    objective_key,
    previous_job,
    run_job,
)
from rankgym.logs import SessionLog
from rankgym.logs.atomic import atomic_file

log = logging.getLogger(__name__)
# ${short_digest:...} names a searched trial's directory after its overrides (conf/hparams_search)
OmegaConf.register_new_resolver(
    "short_digest", lambda text: hashlib.sha256(str(text).encode()).hexdigest()[:12], replace=True
)


def reward_fidelity(cfg: DictConfig, s: RunSetup) -> dict[str, float]:
    """How the run's fitted reward model ranks the policy zoo against the truth.

    Only where there is a truth and the reward model is another one (``eval.fidelity``): the
    Kendall tau and mean relative error of :mod:`rankgym.agents.fidelity`, and the true value of the
    policy greedy in the reward model (what training in it can be worth, for the run's own
    value to be read against), on ``eval.sessions`` held-out sessions.
    """
    if not cfg.eval.fidelity or s.truth is None or s.reward.name == "truth":
        return {}
    from rankgym.agents.fidelity import agreement, greedy_values, policy_zoo, value_zoo
    from rankgym.envs.click_models.simple import TruthClickModel

    truth = TruthClickModel(truth=s.truth)
    zoo = [p.fit(s.train, s.encoded) for p in policy_zoo(truth, seed=cfg.seed)]
    valued = s.env.valued()  # the simulator's fidelity, whatever users the agent trains on
    values = value_zoo(
        zoo, s.test, s.encoded, {"truth": truth, "model": s.reward}, valued,
        num_envs=cfg.eval.num_envs, seed=cfg.seed, max_sessions=cfg.eval.sessions,
    )  # fmt: skip
    names = [p.name for p in zoo]
    a = agreement(*(np.array([values[m][n] for n in names]) for m in ("truth", "model")))
    log.info("reward model %s against the truth: Kendall tau %.3f, relative error %.3f",
             s.reward.name, a.kendall_tau, a.rel_error)  # fmt: skip
    out = {"fidelity_kendall_tau": a.kendall_tau, "fidelity_rel_error": a.rel_error}
    greedy = greedy_values(
        {"model": s.reward}, s.test, s.encoded, truth, valued, num_envs=cfg.eval.num_envs,
        seed=cfg.seed, max_sessions=cfg.eval.sessions,
    )  # fmt: skip
    if "model" in greedy:  # not for a model replaying the log's clicks
        log.info("its greedy policy's true value %.4f (cosine %.4f)", greedy["model"],
                 values["truth"]["cosine"])  # fmt: skip
        out["fidelity_greedy_true"] = greedy["model"]
    return out


def off_policy(
    test: SessionLog, result: EvaluationResult, model: Any, bootstrap: int, seed: int
) -> dict[str, float]:
    """Off-policy estimates of the evaluated slates' clicks per request at the logged positions
    (every estimator the log's propensities allow, :mod:`rankgym.agents.ope`), beside the log's own
    clicks on the same requests; ``dm``/``dr`` with the run's reward model when it is fitted
    (not the truth). ``{}`` when the log has no propensities, or is a sequential world's latent
    timeline (its unreached requests were never logged, and a slate changes what follows)."""
    if np.isnan(test.propensity).any() or test.meta.get("source") == "synthetic-latent":
        return {}
    requests, slates = result.per_request["request"], result.per_request["slate"]
    probs = None if isinstance(model, TruthClickModel) else result.per_request["click_probs"]
    estimates = off_policy_estimates(test, requests, slates, probs, None, None, bootstrap, seed)
    own = logged_clicks(test, requests, slates.shape[1], bootstrap, seed)
    out = own.to_dict("logged_clicks")
    for name, est in estimates.items():
        out.update(est.to_dict(f"ope_{name}"))
    return out


def check_run_settings(cfg: DictConfig) -> None:
    """Refuse run settings that would crash or silently misbehave later, naming the key."""
    rules = {
        "total_timesteps": (cfg.total_timesteps, 0),
        "checkpoint_freq": (cfg.checkpoint_freq, 1),
        "eval.freq": (cfg.eval.freq, 1),
        "eval.num_envs": (cfg.eval.num_envs, 1),
        "eval.bootstrap": (cfg.eval.bootstrap, 0),
    }
    for key, (value, low) in rules.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key}={value!r}; allowed: an int >= {low}")
    for key in ("eval.sessions", "eval.final_sessions"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{key}={value!r}; allowed: an int >= 1 or null (all)")


RESUMABLE = ("resume", "total_timesteps", "checkpoint_freq", "eval", "device", "export",
             "torch_threads", "objective")  # fmt: skip


def restore_run_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The config a run was started with, for ``resume=true``.

    Overrides on the resume command line may change only :data:`RESUMABLE` keys (how long and
    how it is evaluated); any other override that differs from the run's value is refused with
    the list of differences. Keys not given again come from the run, not from the defaults.
    """
    as_plain = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
    saved_path = run_dir / RUN_CONFIG
    if not saved_path.is_file():
        raise FileNotFoundError(
            f"{saved_path}: missing; resume=true continues a run directory that "
            "rankgym.experiments.train wrote (pass its hydra.run.dir)"
        )
    saved = load_run_config(saved_path)
    current = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    changed = []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] == "hydra":
            continue
        now = OmegaConf.select(current, key)
        if key.split(".")[0] in RESUMABLE:  # given again: the new value applies
            OmegaConf.update(saved, key, as_plain(now), force_add=True)
            continue
        before = OmegaConf.select(saved, key)
        if as_plain(before) != as_plain(now):
            changed.append(f"{key}: {as_plain(before)} in the run, {as_plain(now)} now")
    if changed:
        raise ValueError(
            f"resume=true restores the run's config ({saved_path}); these overrides change "
            "it: " + "; ".join(changed)
        )
    saved.resume = True
    return saved


def write_per_request(
    path: Path, result: EvaluationResult, test: SessionLog, episode: str = "session"
) -> None:
    """The final evaluation's values per held-out request (``per_request.parquet``): what
    ``rankgym compare`` pairs across policies, session by session (a sequential world's
    long-term values: episode by episode, from the ``episode`` column)."""
    import pandas as pd

    req = result.per_request["request"]
    session = np.asarray(test.session_ids)[np.asarray(test.request_session)[req]].astype(str)
    table = pd.DataFrame({
        "request": test.request_ids[req].astype(str),
        "session": session,
        **{k: v for k, v in result.per_request.items() if k in FINAL_KEYS},
    })  # fmt: skip
    if "long_term_value" in result.metrics:
        users = np.asarray(test.user_ids)[test.request_user[req]].astype(str)
        table["episode"] = users if episode == "user" else session
        table["survival"] = result.per_request["survival"]
    with atomic_file(path) as tmp:
        table.to_parquet(tmp, index=False)


FINAL_KEYS = ("expected_clicks", "true_expected_clicks", "ctr@1", "mrr")


def write_metrics(file: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write ``metrics`` as ``metrics.json`` text to ``file``; return what was written. NaN (no
    intervals without bootstrap resamples) becomes null, not JSON's invalid NaN."""
    clean = {k: None if isinstance(v, float) and v != v else v for k, v in metrics.items()}
    file.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    return clean


def splits_info(s: RunSetup) -> dict[str, Any]:
    """Which sessions each number of ``metrics.json`` comes from."""
    has_valid = s.valid is not None
    return {
        "metrics": "test",
        "valid_*": "valid" if has_valid else None,
        "periodic": "valid" if has_valid else "test",
        "sessions": {
            "train": s.train.n_sessions,
            "valid": s.valid.n_sessions if has_valid else 0,
            "test": s.test.n_sessions,
        },
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """One training (or baseline evaluation) run; returns what ``metrics.json`` holds.

    In a sweep, a job whose directory already holds this run finished is skipped (its
    ``metrics.json`` is returned), and one that was killed resumes from its checkpoint: rerunning
    a sweep finishes it.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_run_settings(cfg)
    check_objective(cfg)
    resume_step = None
    if HydraConfig.get().mode == RunMode.MULTIRUN and not cfg.resume:
        previous = previous_job(cfg, run_dir)
        if previous == "finished":
            log.info("%s: finished by an earlier launch of this sweep; skipped", run_dir)
            return json.loads((run_dir / "metrics.json").read_text())
        if previous == "killed":
            log.info("%s: killed in an earlier launch of this sweep; resuming", run_dir)
            cfg = cfg.copy()
            cfg.resume = True
    if cfg.resume:  # a checkpoint, then the run's own config, or one line and exit 2
        resume_step = read_state(run_dir / "checkpoints" / CHECKPOINT)["num_timesteps"]
        cfg = restore_run_config(cfg, run_dir)
    else:
        OmegaConf.save(OmegaConf.to_container(cfg, resolve=True), run_dir / RUN_CONFIG)
    configure_threads(cfg)
    set_random_seed(cfg.seed)
    agent = instantiate(cfg.agent, f"agent {cfg.agent.name}")
    if cfg.get("export") and not isinstance(agent, SB3Agent | CosinePolicy | PopularityPolicy):
        raise ValueError(f"export=true: agent={cfg.agent.name} cannot be exported; allowed: "
                         "ppo, a2c, dqn, cosine, popularity")  # fmt: skip
    s = setup(cfg)

    valued = s.env.valued()  # a sequential world's values: the expected walk's

    def evaluate_on(policy: Any, sessions: SessionLog, limit: int | None) -> EvaluationResult:
        return evaluate(
            policy, sessions, s.encoded, s.reward, valued, truth=s.truth,
            num_envs=cfg.eval.num_envs, bootstrap=cfg.eval.bootstrap, seed=cfg.seed,
            max_sessions=limit,
        )  # fmt: skip

    def periodic(policy: Any) -> dict[str, Any]:  # the valid sessions (model selection)
        return evaluate_on(policy, s.selection, cfg.eval.sessions).to_dict()

    hparams = {
        "agent": agent.name, "seed": cfg.seed, "encoder": cfg.encoder.name,
        "reward": s.reward.name, "dataset": cfg.dataset.name,
        "total_timesteps": cfg.total_timesteps,
        **{f"agent.{k}": v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items()},
    }  # fmt: skip
    logger = make_logger(run_dir / "tensorboard", resume_step)
    fidelity = reward_fidelity(cfg, s)
    for key, value in fidelity.items():
        logger.record(key.replace("fidelity_", "fidelity/"), value)
    start = time.perf_counter()
    learner: dict[str, Any] = {}
    if isinstance(agent, SB3Agent):
        policy, timesteps, kept = train(cfg, agent, s, run_dir, logger, periodic, hparams)
        learner["precision"] = resolve_precision(agent.precision, policy.model.device)
        learner.update(kept)
    elif isinstance(agent, SupervisedAgent):  # the ceiling: regression on the reward model
        venv = training_env(s, agent, cfg.device)
        policy, timesteps = agent.train(venv, cfg.total_timesteps, cfg.seed, str(venv.device))
        log_hparams(logger, hparams)
    else:
        policy, timesteps = agent.fit(s.train, s.encoded), 0
        log_hparams(logger, hparams)
    train_seconds = time.perf_counter() - start
    result = evaluate_on(policy, s.test, cfg.eval.final_sessions)
    final = {**result.to_dict(), **off_policy(s.test, result, s.reward, cfg.eval.bootstrap,
                                             cfg.seed)}  # fmt: skip
    valid = {}
    if s.valid is not None:
        on_valid = evaluate_on(policy, s.valid, cfg.eval.final_sessions).to_dict()
        valid = {f"valid_{k}": v for k, v in on_valid.items() if k != "policy"}
    write_per_request(run_dir / "per_request.parquet", result, s.test, s.env.episode)
    record_final(logger, final, valid)
    logger.record(STEP_KEY, timesteps)
    logger.dump(timesteps)
    logger.close()
    metrics = {
        **final,
        **valid,
        "policy": agent.name,
        "seed": cfg.seed,
        "total_timesteps": timesteps,
        "train_seconds": round(train_seconds, 2),
        **threads.report(),  # the count, and its share of time when it followed the load
        **learner,  # the learner's precision as run (agent.precision=auto resolved)
        "encoder": cfg.encoder.name,
        # the config chosen (neural_train, ...), which may differ from the model's own name
        "reward_model": HydraConfig.get().runtime.choices.get("reward", s.reward.name),
        "splits": splits_info(s),
        **fidelity,
    }
    metrics["objective"] = objective_key(cfg, metrics)
    with atomic_file(run_dir / "metrics.json") as tmp:  # complete or absent: sweeps rely on it
        metrics = write_metrics(tmp, metrics)
    log.info("wrote %s", run_dir / "metrics.json")
    if cfg.get("export"):
        export_policy(cfg, policy, s, run_dir, run_dir / RANKER_DIR)
    return metrics


def train(
    cfg: DictConfig,
    agent: SB3Agent,
    s: RunSetup,
    run_dir: Path,
    logger: Any,
    evaluate_policy: Any,
    hparams: dict[str, Any],
) -> tuple[SB3Policy, int, dict[str, Any]]:
    """Train ``agent`` on the training sessions (resuming from a checkpoint when asked).

    Returns the policy with the weights ``agent.keep`` chose, the timesteps trained, and which
    weights those are (``kept``; with ``best``, ``kept_step`` and ``kept_by``, its metric).
    """
    venv = training_env(s, agent, cfg.device)
    venv.seed(cfg.seed)
    checkpoints = run_dir / "checkpoints"
    if cfg.resume:  # refuses a missing, foreign or tampered checkpoint with one line
        model = agent.load(checkpoints / CHECKPOINT, venv, cfg.seed, cfg.device)
        log.info("resuming from %s at %d timesteps", checkpoints, model.num_timesteps)
    else:
        model = agent.build(venv, cfg.seed, cfg.device)
    model.set_logger(logger)
    done = model.num_timesteps

    def periodic(m: Any) -> dict[str, Any]:
        return evaluate_policy(SB3Policy(m, s.env.obs_mode, agent.name))

    best = BestCheckpoint(checkpoints, agent.algorithm, cfg.resume) if agent.keep == BEST else None
    callbacks = [
        ProgressCallback(cfg.total_timesteps, initial=done),
        EvalCallback(periodic, cfg.eval.freq, hparams, best),
        CheckpointCallback(checkpoints, cfg.checkpoint_freq, agent.algorithm),
    ]
    agent.learn(
        model,
        max(0, cfg.total_timesteps - done),
        callback=callbacks,
        reset_num_timesteps=False,
        log_interval=agent.log_interval,
    )
    save_checkpoint(model, checkpoints, agent.algorithm)
    trained, kept = model.num_timesteps, {"kept": agent.keep}
    if best is not None:  # the weights of the best valid evaluation, as export and evaluate load
        load_checkpoint(model, checkpoints / BEST, agent.algorithm)
        kept.update(kept_step=best.step, kept_by=best.metric)
        log.info("keeping the weights of step %d (%s %.4f on the valid sessions)",
                 best.step, best.metric, best.value)  # fmt: skip
    return SB3Policy(model, s.env.obs_mode, agent.name), trained, kept


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the run's objective (for sweepers such as Optuna to maximise:
    by default the valid sessions' true expected clicks, never a test-split number)."""
    metrics = run_job(lambda: run(cfg))
    if metrics is None:  # a failed sweep job, recorded in its error.txt
        return None
    shown = {k: v for k, v in metrics.items() if not k.endswith(("_low", "_high"))}
    print(json.dumps({k: v for k, v in shown.items() if not isinstance(v, dict)}))
    return float(metrics[metrics["objective"]])


if __name__ == "__main__":
    main()
