"""How far can each simulator be trusted? Rank a zoo of policies under the truth and every model.

Usage::

    rankgym fidelity                                  # default world, hashing
    rankgym fidelity dataset.click_model=cascade out=data/synthetic-cascade
    rankgym fidelity 'fidelity.rewards=[pbm,neural]' 'fidelity.runs=[outputs/x]'
    rankgym fidelity 'fidelity.runs=[outputs/trained-zoo]' fidelity.zoo=baselines
    rankgym fidelity experiment=longterm 'fidelity.rewards=[neural_longterm]'

On the held-out sessions of a dataset with a ground truth, every zoo policy
(:func:`rankgym.agents.fidelity.policy_zoo`, plus the trained runs given in ``fidelity.runs``) is
valued under the truth and under each reward model of ``fidelity.rewards`` (fitted on the training
sessions, as ``rankgym train`` fits them) and, on logs with propensities
(``fidelity.ope``), by every off-policy estimator of :mod:`rankgym.agents.ope` on the same slates
(the second opinion: ``ips``, ``iips``, ``rips``, their self-normalised forms, and the doubly robust
``dr(<model>)`` and ``idr(<model>)`` with each fitted model).
The run directory gets ``fidelity.md`` (the summary, whether the best simulator and the best
estimator agree, and the values), ``fidelity.csv`` (one row per method: Kendall tau, Spearman,
mean and largest relative error, the mean relative error over the policies that do not rank
by the truth (``rel_error_observable``), the share within 5%, pairwise-order agreement,
``pick_regret`` (how much less the policy it values highest is worth than the truly best);
for the estimators their mean support and ESS; for every method with intervals (the
estimators' 95% bootstraps, the ensembles' 90% epistemic intervals) ``covered``, the share of
the zoo whose true value lies in its interval, and ``apart`` / ``apart_agreement``, the pairs
whose intervals separate and the share of them ordered as the truth orders them (an ensemble
also gets ``apart_paired`` / ``apart_paired_agreement``, judged on each pair's difference);
for the simulators ``greedy_true``, the true value of the policy greedy in the model, and
``greedy_gap``, its share of the random-to-oracle gap: what training in that simulator can be
worth), ``values.csv`` (policy x method), ``intervals.csv`` (each interval, with an ensemble's
member values), ``fidelity.png``
(simulated or estimated against true value, one panel per method) and TensorBoard scalars under
``fidelity/``.

On a sequential world (``experiment=longterm``) the zoo adds lookahead and diversity policies
and is ranked by clicks per user (long-term value); each fitted model is a click model with a
user-response model fitted beside it, and ``truth+fitted-users`` (the truth's clicks with
fitted users) says what the user-response model costs on its own. ``response.csv`` (and a
table in ``fidelity.md``) sets the logging policy's held-out session lengths, return gaps and
return rate against each model's prediction (the truth's row is the held-out noise floor).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rankgym.agents.baselines import SB3Policy
from rankgym.agents.checkpoint import CHECKPOINT
from rankgym.agents.evaluation import EPISTEMIC_LEVEL, epistemic_interval
from rankgym.agents.fidelity import (
    MIN_GAP,
    TRUTH_RANKED,
    agreement,
    apart_pairs,
    clear_pairs,
    covered,
    greedy_values,
    ope_zoo,
    paired_apart,
    policy_zoo,
    relative_errors,
    value_zoo,
)
from rankgym.agents.ope import OPEEstimate
from rankgym.agents.training import SB3Agent
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.click_models.user_response import fit_user_dynamics, response_fidelity
from rankgym.envs.setup import RunSetup, fit_simulator
from rankgym.experiments.runs import instantiate, setup, training_env
from rankgym.experiments.sweeps import configure_threads, run_job

log = logging.getLogger(__name__)
# fidelity.zoo=baselines: the fixed policies kept beside trained runs (the random-to-oracle scale)
BASELINES = ("random", "popularity", "cosine", "truth-oracle")
CONF = Path(__file__).resolve().parents[1] / "conf"


def check_rewards(names: list[str]) -> None:
    """Refuse a ``fidelity.rewards`` entry that names no fitted reward config."""
    allowed = sorted(p.stem for p in (CONF / "reward").glob("*.yaml") if p.stem != "truth")
    for name in names:
        if name not in allowed:
            raise ValueError(f"fidelity.rewards has {name!r}; allowed: {', '.join(allowed)}")


FITTED_USERS = "truth+fitted-users"  # a sequential world's: the truth's clicks, fitted users


def reward_models(cfg: DictConfig, s: RunSetup) -> dict[str, Any]:
    """The truth plus every ``fidelity.rewards`` model, fitted on the training sessions; on a
    sequential world also :data:`FITTED_USERS`, the truth's clicks with a user-response model
    fitted to the logs: what the user-response model costs on its own."""
    models: dict[str, Any] = {"truth": s.reward}
    if s.observed is not None:
        alone = TruthClickModel(truth=s.truth)
        reached = np.isin(s.train.request_ids, s.observed.request_ids)
        alone.response = fit_user_dynamics(s.train, alone, reached)
        models[FITTED_USERS] = alone
    for name in cfg.fidelity.rewards:
        # composed as `reward=<name>` composes it (a config may extend another)
        node = hydra.compose(config_name="config", overrides=[f"reward={name}"]).reward
        model = instantiate(node, f"reward model {name}")
        models[name] = fit_simulator(
            model, s.data, s.train, s.encoded, s.env, s.observed, cfg.paths.cache_dir
        )
    return models


def run_label(run_dir: Path, root: Path) -> str:
    """A trained run's name in the zoo: its command-line overrides (``reward=neural,seed=1``;
    a sweep's job directories are numbered), else its path below ``root``."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        listed = OmegaConf.load(overrides)
        keep = [str(o) for o in listed if not str(o).startswith(("hydra.", "out=", "paths."))]
        if keep:
            return ",".join(keep)
    return str(run_dir.relative_to(root)) if run_dir != root else root.name


def trained_policies(cfg: DictConfig, s: RunSetup) -> list[SB3Policy]:
    """The SB3 policies of the run directories in ``fidelity.runs`` (a sweep dir: all below)."""
    policies = []
    for root in map(Path, cfg.fidelity.runs):
        found = sorted(p.parent for p in root.rglob(f"checkpoints/{CHECKPOINT}/state.json"))
        if not found:
            raise FileNotFoundError(f"{root}: no checkpoints/{CHECKPOINT} below it")
        for checkpoint in found:
            run_dir = checkpoint.parent.parent
            run_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
            agent = hydra.utils.instantiate(run_cfg.agent)
            if not isinstance(agent, SB3Agent):
                continue
            # the env the run trained on, in shape: a DQN checkpoint's replay buffer has a row
            # per training env (and a sequential world's DQN drew its users)
            choices = OmegaConf.select(run_cfg, "env.user_choices", default=s.env.user_choices)
            env = dataclasses.replace(s.env, user_choices=choices)
            trained_on = dataclasses.replace(s, env=env)
            kept = checkpoint.with_name(agent.keep)  # last, or best (agent.keep=best)
            model = agent.load(kept, training_env(trained_on, agent, "cpu"), run_cfg.seed,
                               "cpu")  # fmt: skip
            name = f"{agent.name}:{run_label(run_dir, root)}"
            if name in {p.name for p in policies}:  # the same overrides in two sweeps
                name = f"{name} ({run_dir})"
            policies.append(SB3Policy(model, s.env.obs_mode, name))
    return policies


def pick_regret(truth: pd.Series, values: pd.Series) -> float:
    """How much less the policy a method values highest is worth in truth than the truly best,
    relative to the best; among the deployable policies (not those that rank by the truth)."""
    deployable = ~truth.index.isin(TRUTH_RANKED)
    truth, values = truth[deployable], values[deployable]
    if truth.empty:
        return float("nan")
    best = float(truth.max())
    return (best - float(truth[values.idxmax()])) / abs(best)


def report(
    values: dict[str, dict[str, float]],
    ope: dict[str, dict[str, OPEEstimate]] | None = None,
    intervals: dict[str, dict[str, tuple[float, float]]] | None = None,
    members: dict[str, dict[str, np.ndarray]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(policy x method values, one agreement row per method).

    ``rel_error_observable`` is the mean relative error over the policies that do not rank by
    the truth (:data:`~rankgym.agents.fidelity.TRUTH_RANKED`): those select on what the log's
    features show, while the truth's oracle and its variants select on what no fitted model
    sees, so their values regress towards the mean (BENCHMARKS.md).

    Off-policy methods (``ope``) also get the mean over the zoo of their support (share of
    requests with a nonzero weight) and effective sample size. Every method with intervals
    (the estimators' 95% bootstrap intervals, the ensembles' 90% epistemic ones in
    ``intervals``) gets ``covered``, the share of the zoo whose true value lies in its
    interval, ``apart``, the pairs whose two intervals do not overlap
    (:func:`~rankgym.agents.fidelity.apart_pairs`), and ``apart_agreement``, the share of those
    the truth orders the same way. An ensemble with its ``members``' values also gets
    ``apart_paired`` and ``apart_paired_agreement``: the pairs whose difference's epistemic
    interval excludes 0 (:func:`~rankgym.agents.fidelity.paired_apart`), a test that calls more
    pairs apart.
    """
    members = members or {}
    ope = ope or {}
    bounds = {m: dict(per) for m, per in (intervals or {}).items()}
    for method, per in ope.items():
        bounds[method] = {p: (e.ci_low, e.ci_high) for p, e in per.items()}
    values = {**values, **{m: {p: e.value for p, e in per.items()} for m, per in ope.items()}}
    table = pd.DataFrame(values)
    table = table.sort_values("truth", ascending=False)
    rows = []
    observable = ~table.index.isin(TRUTH_RANKED)
    for method in table.columns.drop("truth"):
        known = table[method].notna()  # estimators skip the policies that read the log
        a = agreement(table["truth"][known].to_numpy(), table[method][known].to_numpy())
        row = {"method": method, "kind": "OPE" if method in ope else "simulator"}
        row.update(dataclasses.asdict(a))
        seen = known & observable
        row["rel_error_observable"] = float(
            relative_errors(table["truth"][seen], table[method][seen]).mean()
        )
        estimates = list(ope.get(method, {}).values())
        row["support"] = float(np.mean([e.support for e in estimates])) if estimates else np.nan
        row["ess"] = float(np.mean([e.ess for e in estimates])) if estimates else np.nan
        row["pick_regret"] = pick_regret(table["truth"][known], table[method][known])
        row["covered"], row["apart"], row["apart_agreement"] = np.nan, 0, np.nan
        row["apart_paired"], row["apart_paired_agreement"] = 0, np.nan
        if bounds.get(method):
            names = [p for p in table.index if p in bounds[method]]
            low, high = (np.array([bounds[method][p][k] for p in names]) for k in (0, 1))
            truth = table.loc[names, "truth"].to_numpy()
            row["covered"] = covered(truth, low, high)
            row["apart"], row["apart_agreement"] = apart_pairs(truth, low, high)
            if members.get(method):
                per = np.stack([members[method][p] for p in names])
                value = table.loc[names, method].to_numpy()
                paired = paired_apart(truth, value, per)
                row["apart_paired"], row["apart_paired_agreement"] = paired
        rows.append(row)
    return table, pd.DataFrame(rows).set_index("method")


def interval_table(
    intervals: dict[str, dict[str, tuple[float, float]]],
    ope: dict[str, dict[str, OPEEstimate]] | None = None,
    members: dict[str, dict[str, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """One row per (method, policy) with an interval: ``low``, ``high``, the ``level`` (0.9
    for the ensembles' epistemic intervals, 0.95 for the estimators' bootstraps) and, for an
    ensemble, its ``members``' values (space-separated)."""
    members = members or {}
    rows = [
        {"method": m, "policy": p, "low": lo, "high": hi, "level": EPISTEMIC_LEVEL,
         "members": " ".join(f"{v:.6f}" for v in members.get(m, {}).get(p, []))}
        for m, per in intervals.items()
        for p, (lo, hi) in per.items()
    ]  # fmt: skip
    rows += [
        {"method": m, "policy": p, "low": e.ci_low, "high": e.ci_high, "level": 0.95}
        for m, per in (ope or {}).items()
        for p, e in per.items()
    ]
    return pd.DataFrame(rows, columns=["method", "policy", "low", "high", "level", "members"])


def with_greedy(
    summary: pd.DataFrame, table: pd.DataFrame, greedy: dict[str, float]
) -> pd.DataFrame:
    """``summary`` plus each simulator's greedy policy's true value (``greedy_true``) and its
    share of the zoo's random-to-truth-oracle gap (``greedy_gap``); NaN for the others."""
    summary = summary.copy()
    summary["greedy_true"] = [greedy.get(m, np.nan) for m in summary.index]
    low, high = table.loc["random", "truth"], table.loc["truth-oracle", "truth"]
    summary["greedy_gap"] = (summary["greedy_true"] - low) / (high - low)
    return summary


def consensus(table: pd.DataFrame, summary: pd.DataFrame, min_gap: float = MIN_GAP) -> str:
    """Whether the best simulator and the best OPE method (by Kendall tau) pick the same winner
    of every policy pair whose true values differ by more than ``min_gap`` (relative)."""
    best = {}
    for kind in ("simulator", "OPE"):
        rows = summary[summary["kind"] == kind]
        if len(rows):
            best[kind] = rows["kendall_tau"].idxmax()
    if len(best) < 2:
        return ""
    table = table[table[best["OPE"]].notna()]
    t = table["truth"].to_numpy()
    a, b = (table[best[k]].to_numpy() for k in ("simulator", "OPE"))
    i, j, clear = clear_pairs(t, min_gap)
    same = np.sign(a[i] - a[j]) == np.sign(b[i] - b[j])
    both_right = same & (np.sign(a[i] - a[j]) == np.sign(t[i] - t[j]))
    return (
        f"Best simulator `{best['simulator']}` and best OPE method `{best['OPE']}` pick the same "
        f"winner in {same[clear].mean():.1%} of the {int(clear.sum())} policy pairs whose true "
        f"values differ by more than {min_gap:.0%} (both right in {both_right[clear].mean():.1%})."
    )


def markdown(frame: pd.DataFrame, index: str) -> str:
    """A Markdown table of ``frame`` (numbers to 3 decimals)."""
    columns = {c: frame[c].tolist() for c in frame.columns}
    floats = {c: pd.api.types.is_float_dtype(frame[c]) for c in frame.columns}
    lines = [f"| {index} | " + " | ".join(frame.columns) + " |",
             "| --- | " + " | ".join("---:" for _ in frame.columns) + " |"]  # fmt: skip
    for n, name in enumerate(frame.index):
        cells = [
            ("n/a" if columns[c][n] != columns[c][n] else f"{columns[c][n]:.3f}")
            if floats[c]
            else str(columns[c][n])
            for c in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    """Simulated against true value of every zoo policy, one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary.index)
    cols = min(len(methods), 6)
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    low = float(table.min().min()) * 0.95
    high = float(table.max().max()) * 1.05
    for ax in axes.flat[len(methods) :]:
        ax.axis("off")
    for ax, method in zip(axes.flat, methods, strict=False):
        ax.plot([low, high], [low, high], color="grey", lw=0.8)
        ax.scatter(table["truth"], table[method], s=14)
        row = summary.loc[method]
        ax.set_title(f"{method}: tau {row.kendall_tau:.2f}, err {row.rel_error:.0%}", fontsize=9)
        ax.set_xlabel("true expected clicks")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
    for row in axes:
        row[0].set_ylabel("simulated / estimated expected clicks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def user_response(
    models: dict[str, Any], s: RunSetup, seed: int, draws: int = 20
) -> pd.DataFrame | None:
    """A sequential world's held-out check of each model's user responses (the truth's
    too, the noise floor of the held-out sessions):
    :func:`~rankgym.envs.click_models.user_response.response_fidelity`. ``None`` elsewhere."""
    if s.observed is None:
        return None
    reached = np.isin(s.test.request_ids, s.observed.request_ids)
    rows = {
        name: response_fidelity(model, s.test, reached, draws, seed)
        for name, model in models.items()
        if model.user_dynamics() is not None
    }
    return pd.DataFrame(rows).T


def run(cfg: DictConfig) -> pd.DataFrame:
    """The fidelity report of ``cfg``'s dataset; returns the per-method summary."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if (
        OmegaConf.select(cfg, "reward._target_")
        != "rankgym.envs.click_models.simple.TruthClickModel"
    ):
        raise ValueError(
            "rankgym.experiments.fidelity values policies under the truth: keep reward=truth"
        )
    check_rewards(list(cfg.fidelity.rewards))
    configure_threads(cfg)
    if cfg.fidelity.zoo not in ("full", "baselines"):
        raise ValueError(f"fidelity.zoo={cfg.fidelity.zoo!r}; allowed: full, baselines")
    clip = cfg.fidelity.clip
    if clip is not None and not (isinstance(clip, int | float) and clip > 0):
        raise ValueError(f"fidelity.clip={clip!r}; allowed: a number > 0, or null (no clipping)")
    s = setup(cfg)
    if s.truth is None:
        raise ValueError(f"{cfg.out}: this dataset has no ground truth; fidelity needs one")
    assert isinstance(s.reward, TruthClickModel)
    models = reward_models(cfg, s)
    zoo = policy_zoo(s.reward, cfg.fidelity.noise, cfg.seed)
    if cfg.fidelity.zoo == "baselines":
        zoo = [p for p in zoo if p.name in BASELINES]
    zoo = [p.fit(s.train, s.encoded) for p in zoo]
    policies = [*zoo, *trained_policies(cfg, s)]
    log.info("valuing %d policies under %d models", len(policies), len(models))
    slates: dict[str, tuple[Any, Any]] = {}
    members: dict[str, dict[str, np.ndarray]] = {}
    values = value_zoo(
        policies, s.test, s.encoded, models, s.env, num_envs=cfg.eval.num_envs, seed=cfg.seed,
        max_sessions=cfg.fidelity.sessions, progress=True, slates=slates, members=members,
    )  # fmt: skip
    intervals = {
        m: {p: epistemic_interval(v, values[m][p]) for p, v in per.items()}
        for m, per in members.items()
    }  # around each value, as rankgym.agents.evaluation.evaluate makes them
    ope = {}
    # a sequential world's latent timeline has no logged slates to weight (its reached log
    # does, but not the episodes the zoo is valued on)
    if cfg.fidelity.ope and s.observed is None and not np.isnan(s.test.propensity).all():
        fitted = {name: m for name, m in models.items() if name != "truth"}
        peeking = {p.name for p in policies if getattr(p, "reads_logged_order", False)}
        ope = ope_zoo(slates, s.test, fitted, cfg.fidelity.clip, cfg.seed, peeking)
    table, summary = report(values, ope, intervals, members)
    greedy = greedy_values(
        models, s.test, s.encoded, s.reward, s.env, num_envs=cfg.eval.num_envs, seed=cfg.seed,
        max_sessions=cfg.fidelity.sessions,
    )  # fmt: skip
    summary = with_greedy(summary, table, greedy)
    response = user_response(models, s, cfg.seed)
    if response is not None:
        response.to_csv(run_dir / "response.csv")
    table.to_csv(run_dir / "values.csv", index_label="policy")
    interval_table(intervals, ope, members).to_csv(run_dir / "intervals.csv", index=False)
    summary.to_csv(run_dir / "fidelity.csv")
    plot(table, summary, run_dir / "fidelity.png")
    (run_dir / "fidelity.md").write_text(
        f"# Simulator fidelity: {cfg.dataset.name} ({s.truth.click_model} truth), "
        f"{cfg.encoder.name} encoder, {s.test.n_sessions} held-out sessions\n\n"
        + markdown(summary, "method")
        + "\n\n"
        + consensus(table, summary)
        + ("" if response is None else "\n\nThe logging policy's users on the held-out "
           "sessions, logged and predicted (20 draws):\n\n" + markdown(response, "model"))
        + ("\n\nClicks per user (long-term value):\n\n" if s.observed is not None
           else "\n\nExpected clicks per request:\n\n")
        + markdown(table, "policy")
        + "\n"
    )  # fmt: skip
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for method, row in summary.iterrows():
            for key in ("kendall_tau", "spearman", "rel_error", "rel_error_observable", "within",
                        "pair_agreement"):  # fmt: skip
                writer.add_scalar(f"fidelity/{key}/{method}", float(row[key]), 0)
            for key in ("support", "ess"):
                if row["kind"] == "OPE":
                    writer.add_scalar(f"fidelity/{key}/{method}", float(row[key]), 0)
            for key in ("pick_regret", "covered", "apart_agreement", "apart_paired_agreement"):
                if not np.isnan(row[key]):
                    writer.add_scalar(f"fidelity/{key}/{method}", float(row[key]), 0)
            if not np.isnan(row["greedy_true"]):
                writer.add_scalar(f"fidelity/greedy_true/{method}", float(row["greedy_true"]), 0)
    log.info("wrote %s", run_dir / "fidelity.md")
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``rankgym fidelity``."""
    summary = run_job(lambda: run(cfg))
    if summary is None:  # a failed sweep job, recorded in its error.txt
        return
    print(json.dumps({m: {k: v if isinstance(v, str) else round(float(v), 4)
                          for k, v in r.items()} for m, r in summary.iterrows()}))  # fmt: skip


if __name__ == "__main__":
    main()
