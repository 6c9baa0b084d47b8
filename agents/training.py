"""Building and training SB3 ranking agents: plain arguments in, no Hydra objects.

:class:`SB3Agent` is what ``conf/agent/{ppo,a2c,dqn}.yaml`` instantiate; ``rankgym train``
composes the config and calls it; a notebook can call these directly.
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HParam,
    Logger,
    TensorBoardOutputFormat,
    configure,
)
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv
from tqdm.auto import tqdm

from rankgym.agents.checkpoint import (
    BEST,
    CHECKPOINT,
    BestCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from rankgym.agents.policies import (
    CREDITS,
    MaskedDQN,
    PlacedCandidateReplayBuffer,
    PositionRolloutBuffer,
    RankingActorCriticPolicy,
    RankingDQNPolicy,
    RankingSlatePolicy,
    RequestReplayBuffer,
)
from rankgym.agents.scorer import CandidateScorer

STEP_KEY = "time/total_timesteps"  # every progress.csv row carries its step
# algorithm name -> (SB3 class, the masked candidate-scoring policy it trains)
ALGORITHMS: dict[str, tuple[type[BaseAlgorithm], type[BasePolicy]]] = {
    "ppo": (PPO, RankingActorCriticPolicy),
    "a2c": (A2C, RankingActorCriticPolicy),
    "dqn": (MaskedDQN, RankingDQNPolicy),
}

SLATE_ALGORITHMS = ("ppo", "a2c")  # agent.slate=true: a Plackett-Luce policy over rankings
LR_SCHEDULES = ("constant", "linear")  # agent.lr_schedule: linear decays to 0 at the last step
Q_MODELS = ("additive", "factorized")  # agent.q_model (DQN): agents.policies.RankingQNetwork
PRECISIONS = ("auto", "fp32", "bf16")  # agent.precision: the learner's products (learner_precision)
KEEPS = (CHECKPOINT, BEST)  # agent.keep: the weights a run reports (last, or best on valid)


# SB3 hyperparameters whose type is checked when the agent config is read (SB3 would fail later,
# mid-training, with a numpy or assertion error): name -> smallest allowed value
_INT_HYPERPARAMS = {"n_steps": 1, "batch_size": 1, "n_epochs": 1, "buffer_size": 1,
                    "learning_starts": 0, "train_freq": 1, "gradient_steps": 1,
                    "target_update_interval": 1}  # fmt: skip
_FLOAT_HYPERPARAMS = {"gamma": 0.0, "gae_lambda": 0.0, "ent_coef": 0.0, "vf_coef": 0.0,
                      "clip_range": 0.0, "max_grad_norm": 0.0, "tau": 0.0,
                      "exploration_fraction": 0.0, "exploration_initial_eps": 0.0,
                      "exploration_final_eps": 0.0, "learning_rate": 0.0}  # fmt: skip


def _check_hyperparams(hyperparams: dict[str, Any]) -> None:
    for key, value in hyperparams.items():
        if key in _INT_HYPERPARAMS:
            low, kind = _INT_HYPERPARAMS[key], int
        elif key in _FLOAT_HYPERPARAMS:
            low, kind = _FLOAT_HYPERPARAMS[key], (int, float)
        else:
            continue  # SB3 itself names unknown keys when the agent is built
        if isinstance(value, bool) or not isinstance(value, kind) or value < low:
            allowed = f"an int >= {low}" if kind is int else f"a number >= {low}"
            raise ValueError(f"agent.hyperparams.{key}={value!r}; allowed: {allowed}")


def _algorithm(name: str) -> tuple[type[BaseAlgorithm], type[BasePolicy]]:
    if name not in ALGORITHMS:
        raise ValueError(f"agent.algorithm={name!r}; allowed: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


class SB3Agent:
    """A trainable agent config (``conf/agent/{ppo,a2c,dqn}.yaml``): algorithm and settings.

    Args:
        name: the name reported in results.
        algorithm: ``ppo``, ``a2c`` or ``dqn``.
        num_envs: sessions the batched training env steps at once, >= 1.
        hyperparams: keyword arguments of the SB3 algorithm (``learning_rate``, ``n_steps``...).
        scorer: ``CandidateScorer`` arguments (``variant``, ``hidden``, ``item_bias``).
        slate: ``True``: one step ranks a whole request (PPO/A2C with a Plackett-Luce policy,
            env ``action_mode=scores``); ``False``: one step places one candidate (``slot``).
        credit: a slate agent's credit assignment: ``slate`` (one advantage per slate) or
            ``position`` (each position's choice credited with the clicks from there on,
            :class:`~rankgym.agents.policies.PositionRolloutBuffer`); DQN's: ``slate`` (each
            placement its own clicks, bootstrapping from the next placement) or ``request``
            (the request's clicks from the placement on, weighted by ``position_discount``,
            bootstrapping from the next request: ``gamma`` per request,
            :class:`~rankgym.agents.policies.RequestReplayBuffer`).
        position_discount: with ``credit=position`` (or DQN's ``request``), the weight of the
            clicks ``q - p`` positions below ``p`` in position ``p``'s credit, in ``[0, 1]``.
        lr_schedule: ``constant`` (``hyperparams.learning_rate`` throughout) or ``linear``
            (from it down to 0 at ``total_timesteps``; a resumed run continues the decay).
        q_model: DQN's Q-values (:class:`~rankgym.agents.policies.RankingQNetwork`): ``additive``
            (the position joins the context: a ranking per position) or ``factorized``
            (a learned examination per position times one attractiveness per candidate).
        precision: ``fp32``; ``bf16``: mixed precision while learning (rollouts and updates;
            weights, losses and evaluation stay float32), see :func:`learner_precision`;
            ``auto``: ``bf16`` where the device computes it natively, else ``fp32``
            (:func:`resolve_precision`).
        keep: the weights the run reports, exports and is reloaded with: ``last`` (the final
            ones) or ``best`` (those of its best periodic evaluation on the valid sessions,
            ``checkpoints/best``, :class:`~rankgym.agents.checkpoint.BestCheckpoint`).
    """

    def __init__(
        self,
        name: str,
        algorithm: str,
        num_envs: int = 64,
        hyperparams: dict[str, Any] | None = None,
        scorer: dict[str, Any] | None = None,
        slate: bool = False,
        credit: str = "slate",
        position_discount: float = 1.0,
        lr_schedule: str = "constant",
        q_model: str = "additive",
        precision: str = "fp32",
        keep: str = CHECKPOINT,
    ) -> None:
        _algorithm(algorithm)
        _check_precision(precision)
        _check_keep(keep)
        _check_lr_schedule(lr_schedule)
        _check_q_model(algorithm, q_model)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"agent.num_envs={num_envs!r}; allowed: an int >= 1")
        _check_slate(algorithm, slate, credit, position_discount)
        self.name, self.algorithm, self.num_envs = name, algorithm, num_envs
        self.hyperparams = dict(hyperparams or {})
        _check_hyperparams(self.hyperparams)
        self.scorer = dict(scorer or {})
        self.slate = slate
        self.credit, self.position_discount = credit, float(position_discount)
        self.lr_schedule, self.q_model = lr_schedule, q_model
        self.precision, self.keep = precision, keep

    @property
    def action_mode(self) -> str:
        """The env ``action_mode`` this agent trains in: ``scores`` (slate) or ``slot``."""
        return action_mode(self.slate)

    @property
    def log_interval(self) -> int:
        """SB3's ``log_interval``: off-policy algorithms count episodes, on-policy updates."""
        return 4 if issubclass(_algorithm(self.algorithm)[0], OffPolicyAlgorithm) else 1

    def build(self, venv: VecEnv, seed: int, device: str = "auto") -> BaseAlgorithm:
        """A fresh agent on ``venv`` (see :func:`build_agent`)."""
        return build_agent(
            self.algorithm, venv, seed, device, self.hyperparams, self.scorer, self.slate,
            self.credit, self.position_discount, self.lr_schedule, self.q_model,
        )  # fmt: skip

    def load(
        self, path: str | Path, venv: VecEnv, seed: int = 0, device: str = "auto"
    ) -> BaseAlgorithm:
        """This agent, rebuilt on ``venv``, with the checkpoint at ``path`` loaded into it."""
        return load_agent(
            self.algorithm, path, venv, device, self.hyperparams, self.scorer, seed, self.slate,
            self.credit, self.position_discount, self.lr_schedule, self.q_model,
        )  # fmt: skip

    def learn(self, model: BaseAlgorithm, timesteps: int, **kwargs: Any) -> BaseAlgorithm:
        """``model.learn(timesteps, **kwargs)`` in this agent's :func:`learner_precision`."""
        with learner_precision(model, self.precision):
            return model.learn(timesteps, **kwargs)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` is ``bf16`` where ``device`` computes bfloat16 natively
    (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX), else ``fp32``. Emulated
    bfloat16 may be slower than float32 (not measured here), so ``auto`` does not choose it."""
    _check_precision(precision)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":  # private probes of torch.cpu: absent ones count as no
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    else:
        native = False
    return "bf16" if native else "fp32"


@contextmanager
def learner_precision(model: BaseAlgorithm, precision: str) -> Iterator[None]:
    """The scorers of ``model`` compute in ``precision`` (resolved) within this context.

    With ``bf16``, each forward pass of a scorer (rollouts and gradient updates) runs under
    ``torch.autocast``: its matrix products in bfloat16 with float32 accumulation. Autocast
    wraps each forward pass, not the whole of ``learn``: its cache of bfloat16 weights lives
    as long as the context, so a context around the optimizer's steps would keep serving the
    weights of before them. The weights, the optimizer, the cosine features, the policy's
    scores and values, the losses and every evaluation (:class:`EvalCallback` switches
    bfloat16 off) stay float32, so a policy learned this way is served and evaluated exactly
    as any other. With native bfloat16 the learner runs faster (BENCHMARKS.md; ``rankgym bench
    train`` measures it).
    """
    with scorer_precision(model, resolve_precision(precision, model.device) == "bf16"):
        yield


@contextmanager
def scorer_precision(model: BaseAlgorithm, bf16: bool) -> Iterator[None]:
    """Set every :class:`~rankgym.agents.scorer.CandidateScorer` of ``model``'s policy to compute in
    bfloat16 (``bf16``) or float32 within this context; their previous settings after it."""
    scorers = [m for m in model.policy.modules() if isinstance(m, CandidateScorer)]
    before = [scorer.bf16 for scorer in scorers]
    for scorer in scorers:
        scorer.bf16 = bf16
    try:
        yield
    finally:
        for scorer, old in zip(scorers, before, strict=True):
            scorer.bf16 = old


def action_mode(slate: bool) -> str:
    """The env ``action_mode`` of a slate (``scores``) or a slot (``slot``) agent."""
    return "scores" if slate else "slot"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"agent.precision={precision!r}; allowed: {', '.join(PRECISIONS)}")


def _check_lr_schedule(lr_schedule: str) -> None:
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"agent.lr_schedule={lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")


def _check_keep(keep: str) -> None:
    if keep not in KEEPS:
        raise ValueError(f"agent.keep={keep!r}; allowed: {', '.join(KEEPS)}")


def _check_q_model(algorithm: str, q_model: str) -> None:
    if q_model not in Q_MODELS:
        raise ValueError(f"agent.q_model={q_model!r}; allowed: {', '.join(Q_MODELS)}")
    if q_model != "additive" and algorithm != "dqn":
        raise ValueError(f"agent.q_model={q_model} is DQN's; agent.algorithm={algorithm}")


def _check_slate(
    algorithm: str, slate: bool, credit: str = "slate", position_discount: float = 1.0
) -> None:
    if not isinstance(slate, bool):
        raise ValueError(f"agent.slate={slate!r}; allowed: true, false")
    if credit not in CREDITS:
        raise ValueError(f"agent.credit={credit!r}; allowed: {', '.join(CREDITS)}")
    if credit == "request" and (slate or algorithm != "dqn"):
        raise ValueError(
            "agent.credit=request is DQN's (each placement credited with its request's clicks "
            f"from there on); agent.algorithm={algorithm}, agent.slate={str(slate).lower()}"
        )
    if credit == "position" and not slate:
        raise ValueError(
            "agent.credit=position needs agent.slate=true (a slot agent already gets one "
            "reward per position)"
        )
    if (
        isinstance(position_discount, bool)
        or not isinstance(position_discount, int | float)
        or not 0 <= position_discount <= 1
    ):
        raise ValueError(
            f"agent.position_discount={position_discount!r}; allowed: a number in [0, 1]"
        )
    if slate and algorithm not in SLATE_ALGORITHMS:
        raise ValueError(
            f"agent.slate=true with agent.algorithm={algorithm}; allowed: "
            f"{', '.join(SLATE_ALGORITHMS)} (DQN needs one discrete action per step)"
        )


def build_agent(
    algorithm: str,
    venv: VecEnv,
    seed: int,
    device: str = "auto",
    hyperparams: dict[str, Any] | None = None,
    scorer: dict[str, Any] | None = None,
    slate: bool = False,
    credit: str = "slate",
    position_discount: float = 1.0,
    lr_schedule: str = "constant",
    q_model: str = "additive",
) -> BaseAlgorithm:
    """A PPO, A2C or DQN agent with the masked candidate-scoring policy.

    Args:
        algorithm: ``ppo``, ``a2c`` or ``dqn``.
        venv: the training env (``BatchedReplayEnv``); its embedding tables go into the policy.
        seed: seeds SB3 (torch, numpy, the env).
        device: ``auto`` (cuda when present), ``cpu`` or ``cuda``.
        hyperparams: keyword arguments of the SB3 algorithm (``learning_rate``, ``n_steps``...).
        scorer: ``CandidateScorer`` arguments (``variant``, ``hidden``, ``item_bias``).
        slate: a whole-slate :class:`RankingSlatePolicy` (PPO/A2C; ``venv`` must have
            ``action_mode=scores``).
        credit, position_discount: a slate agent's credit assignment (see :class:`SB3Agent`).
        lr_schedule: ``constant`` or ``linear`` (the learning rate decays to 0).
        q_model: DQN's ``additive`` or ``factorized`` Q-values (see :class:`SB3Agent`).
    """
    klass, policy = _algorithm(algorithm)
    _check_slate(algorithm, slate, credit, position_discount)
    _check_lr_schedule(lr_schedule)
    _check_q_model(algorithm, q_model)
    hyperparams = dict(hyperparams or {})
    if lr_schedule == "linear":
        # SB3 calls it with the share of total_timesteps still to go (1 -> 0)
        default = inspect.signature(klass).parameters["learning_rate"].default
        start = float(hyperparams.get("learning_rate", default))
        hyperparams["learning_rate"] = LinearSchedule(start, 0.0, 1.0)
    tables = venv.get_attr("embedding_tables")[0]
    policy_kwargs: dict[str, Any] = {"scorer": dict(scorer or {}), "tables": tables}
    env = venv.get_attr("config")[0]
    if env.action_mode != action_mode(slate):
        raise ValueError(
            f"a {'slate' if slate else 'slot'} agent needs env.action_mode="
            f"{action_mode(slate)}, the env has {env.action_mode}"
        )
    flow = getattr(getattr(venv, "engine", None), "flow", None)
    if (
        klass is MaskedDQN
        and credit != "request"
        and flow is not None
        and flow.expected
        and hyperparams.get("gamma")
    ):
        raise ValueError(
            "agent=dqn with gamma > 0 in a sequential world needs agent.credit=request or "
            "env.user_choices=sampled: a target bootstrapping from the next placement "
            "cannot see the chance that the user goes on, which an expected walk keeps out "
            "of the observation"
        )
    extra: dict[str, Any] = {}
    if slate:
        policy = RankingSlatePolicy
        policy_kwargs.update(slate_size=env.slate_size, credit=credit)
        if credit == "position" and float(hyperparams.get("gamma", 0.99)) > 0:
            policy_kwargs["future"] = True  # a value of the whole request, for bootstrapping
    if klass is MaskedDQN:  # the learner scores only each sample's placed candidate
        extra["replay_buffer_class"] = PlacedCandidateReplayBuffer
        if credit == "request":
            extra["replay_buffer_class"] = RequestReplayBuffer
            extra["replay_buffer_kwargs"] = {
                "reached_rewards": getattr(venv, "reached_rewards", None),
                "transitions": getattr(venv, "transitions", None),
                "position_discount": float(position_discount),
            }
        policy_kwargs["q_model"] = q_model
    if credit == "position":
        extra["rollout_buffer_class"] = PositionRolloutBuffer
        extra["rollout_buffer_kwargs"] = {
            "slot_rewards": getattr(venv, "slot_rewards", None), "slate_size": env.slate_size,
            "position_discount": float(position_discount),
            "transitions": getattr(venv, "transitions", None),
        }  # fmt: skip
    try:
        model = klass(
            policy, venv, seed=seed, device=device, verbose=0, policy_kwargs=policy_kwargs,
            **extra, **hyperparams,
        )  # fmt: skip
    except (TypeError, ValueError, AssertionError) as err:  # a bad hyperparameter: name it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"agent.hyperparams for {algorithm}: {first}") from err
    # the tables now live in the policy's buffers (saved in its state dict); the kwargs SB3
    # pickles into every checkpoint keep only their shapes, to rebuild the buffers on load
    model.policy_kwargs.pop("tables")
    model.policy_kwargs["table_shapes"] = model.policy.table_shapes
    # a logger that writes nothing until a caller sets one (make_logger): SB3's default
    # makes an empty /tmp/SB3-<time> directory at every learn()
    model.set_logger(Logger(None, []))
    return model


def load_agent(
    algorithm: str,
    path: str | Path,
    venv: VecEnv,
    device: str = "auto",
    hyperparams: dict[str, Any] | None = None,
    scorer: dict[str, Any] | None = None,
    seed: int = 0,
    slate: bool = False,
    credit: str = "slate",
    position_discount: float = 1.0,
    lr_schedule: str = "constant",
    q_model: str = "additive",
) -> BaseAlgorithm:
    """An agent built as :func:`build_agent` builds it, with the checkpoint ``path`` loaded.

    Nothing is unpickled (see :mod:`rankgym.agents.checkpoint`); ``hyperparams`` and ``scorer``
    must be those of the run that wrote the checkpoint.
    """
    model = build_agent(
        algorithm, venv, seed, device, hyperparams, scorer, slate, credit, position_discount,
        lr_schedule, q_model,
    )  # fmt: skip
    return load_checkpoint(model, path, algorithm)


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
        best: offered every evaluation, to keep the best weights (``agent.keep=best``); the
            final weights are then evaluated too when the last evaluation came before them.
    """

    def __init__(
        self,
        evaluate: Callable[[BaseAlgorithm], dict[str, float]],
        freq: int,
        hparams: dict[str, Any],
        best: BestCheckpoint | None = None,
    ) -> None:
        super().__init__()
        self.evaluate, self.freq, self.hparams, self.best = evaluate, freq, hparams, best
        self.next_eval = freq
        self.history: list[tuple[int, dict[str, float]]] = []

    def _on_training_start(self) -> None:
        self.next_eval = (self.num_timesteps // self.freq + 1) * self.freq
        log_hparams(self.logger, self.hparams)

    def _evaluate(self) -> None:
        # evaluations are float32 whatever the learner's precision (learner_precision)
        with scorer_precision(self.model, False):
            metrics = self.evaluate(self.model)
        record_eval(self.logger, metrics)
        self.logger.record(STEP_KEY, self.num_timesteps)
        self.logger.dump(self.num_timesteps)
        self.history.append((self.num_timesteps, metrics))
        if self.best is not None:
            self.best.offer(self.model, metrics)

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self.next_eval += self.freq
            self._evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.best is None:
            return
        if self.num_timesteps not in {step for step, _ in self.history} | {self.best.step}:
            self._evaluate()  # the final weights are candidates too


class CheckpointCallback(BaseCallback):
    """Save ``directory/last/`` (:mod:`rankgym.agents.checkpoint`) every ``freq`` timesteps,
    atomically.

    On-policy agents (PPO, A2C) are saved when a rollout starts, after the previous update and
    its logs: a checkpoint taken mid-rollout would lose the steps collected since the update.
    Off-policy agents (DQN) learn every step and are saved after one. A killed run resumes from
    the last checkpoint with ``resume=true``.
    """

    def __init__(self, directory: str | Path, freq: int, algorithm: str) -> None:
        super().__init__()
        self.directory, self.freq, self.algorithm = Path(directory), freq, algorithm
        self.next_save = freq

    def _on_training_start(self) -> None:
        self.next_save = (self.num_timesteps // self.freq + 1) * self.freq

    def _save_if_due(self) -> None:
        if self.num_timesteps >= self.next_save:
            self.next_save = (self.num_timesteps // self.freq + 1) * self.freq
            save_checkpoint(self.model, self.directory, self.algorithm)

    def _on_rollout_start(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm):
            self._save_if_due()

    def _on_step(self) -> bool:
        if not isinstance(self.model, OnPolicyAlgorithm):
            self._save_if_due()
        return True


class _ResumedCSV(CSVOutputFormat):
    """SB3's ``progress.csv`` writer, continuing a file: rows logged after ``step`` (replayed
    by the resumed run) are dropped, the earlier ones kept."""

    def __init__(self, filename: str, step: int) -> None:
        path = Path(filename)
        rows: list[list[str]] = []
        header: list[str] = []
        if path.is_file():
            with open(path, newline="") as handle:
                table = list(csv.reader(handle))
            if table:
                header, rows = table[0], table[1:]
        column = header.index(STEP_KEY) if STEP_KEY in header else None
        keep = [r for r in rows if column is None or not r[column] or float(r[column]) <= step]
        with open(path, "w", newline="") as handle:
            if header:
                csv.writer(handle, lineterminator="\n").writerows([header, *keep])
        self.file = open(path, "r+")  # noqa: SIM115 - closed by the logger, as SB3's own
        self.file.seek(0, 2)
        self.keys = list(header)
        self.separator = ","
        self.quotechar = '"'


class _ResumedTensorBoard(TensorBoardOutputFormat):
    """SB3's TensorBoard writer with ``purge_step``: events a killed run logged after the step of
    its last checkpoint are hidden, so every tag's steps keep increasing."""

    def __init__(self, folder: str, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=folder, purge_step=step + 1)
        self._is_closed = False


def make_logger(folder: str | Path, resume_step: int | None = None) -> Logger:
    """SB3's TensorBoard + ``progress.csv`` logger; continuing the files when resuming."""
    folder = str(folder)
    if resume_step is None:
        return configure(folder, ["tensorboard", "csv"])
    Path(folder).mkdir(parents=True, exist_ok=True)
    formats = [
        _ResumedTensorBoard(folder, resume_step),
        _ResumedCSV(str(Path(folder) / "progress.csv"), resume_step),
    ]
    return Logger(folder=folder, output_formats=formats)


def record_eval(logger: Any, metrics: dict[str, float]) -> None:
    """Log evaluation metrics under ``eval/`` (TensorBoard tags ``eval/expected_clicks``...)."""
    for key, value in metrics.items():
        if isinstance(value, int | float | np.floating) and not key.endswith(("_low", "_high")):
            logger.record(f"eval/{key}", float(value))


# the scalars TensorBoard's HParams table shows beside each run's hyperparameters: the final
# evaluation on the valid and on the test sessions (record_final)
HPARAM_METRICS = tuple(f"{split}/{m}" for split in ("valid", "test")
                       for m in ("true_expected_clicks", "expected_clicks", "ndcg@10"))  # fmt: skip


def record_final(logger: Any, test: dict[str, Any], valid: dict[str, Any]) -> None:
    """The final evaluation under ``test/`` and ``valid/`` (``valid``'s keys are ``valid_*``);
    ``eval/`` holds the periodic evaluations on the valid sessions only (learning curves)."""
    for split, metrics, prefix in (("test", test, ""), ("valid", valid, "valid_")):
        for key, value in metrics.items():
            name = key.removeprefix(prefix)
            if not key.startswith(prefix) or name.endswith(("_low", "_high")):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                logger.record(f"{split}/{name}", float(value))


def log_hparams(logger: Any, hparams: dict[str, Any]) -> None:
    """The run's hyperparameters through TensorBoard's hparams plugin (logged once), with
    :data:`HPARAM_METRICS` as its metrics, so ``tensorboard --logdir <sweep dir>`` shows one
    table of every run's settings and final valid and test numbers."""
    flat = {
        k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in hparams.items()
    }
    metric_dict = dict.fromkeys(HPARAM_METRICS, 0.0)
    logger.record("hparams", HParam(flat, metric_dict), exclude=("stdout", "log", "json", "csv"))
