"""The fidelity report: agreement statistics, the policy zoo, `rankgym.experiments.fidelity`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rankgym.agents.baselines import CosinePolicy
from rankgym.agents.fidelity import (
    TRUTH_RANKED,
    MixturePolicy,
    ModelGreedyPolicy,
    TruthOraclePolicy,
    agreement,
    greedy_values,
    kendall_tau,
    ope_zoo,
    policy_zoo,
    spearman,
    value_zoo,
)
from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.fitted import PBMClickModel
from rankgym.envs.click_models.simple import LoggedClickModel, TruthClickModel
from rankgym.envs.replay import ReplayConfig
from tests.commands import exits, hydra_job


def test_rank_correlations_equal_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=12)
        y = x + rng.normal(size=12)
        y[3] = y[5]  # a tie
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_agreement_by_hand() -> None:
    truth = np.array([1.0, 1.2, 2.0])
    sim = np.array([1.1, 1.0, 2.2])  # swaps the first two, keeps the third on top
    a = agreement(truth, sim)
    assert a.kendall_tau == pytest.approx(1 / 3)
    assert a.rel_error == pytest.approx((0.1 + 0.2 / 1.2 + 0.1) / 3)
    # pairs whose true values differ by more than 5%: all three; the swapped one disagrees
    assert a.pairs == 3 and a.pair_agreement == pytest.approx(2 / 3)
    assert agreement(truth, truth).kendall_tau == 1.0


@pytest.fixture(scope="module")
def world(small_world):
    log, truth = small_world
    train, test = log.split(0.3, seed=0)
    return train, test, encode_log(log, HashingEncoder(dim=64), progress=False), truth


def test_the_zoo_spans_the_truths_range(world) -> None:
    train, test, encoded, truth = world
    model = TruthClickModel(truth=truth)
    zoo = [p.fit(train, encoded) for p in policy_zoo(model)]
    names = [p.name for p in zoo]
    assert len(set(names)) == len(names) >= 15
    slates: dict = {}
    values = value_zoo(
        zoo, test, encoded, {"truth": model}, ReplayConfig(obs_mode="ids"), slates=slates
    )
    v = values["truth"]
    assert max(v, key=v.get) == "truth-oracle" and min(v, key=v.get) == "anti-truth-oracle"
    assert v["cosine"] > v["random"] > v["anti-cosine"]
    # the truth agrees with itself; a pair-table PBM does not rank like it (measured tau ~0.3)
    pbm = PBMClickModel().fit(train)
    sim = value_zoo(zoo, test, encoded, {"pbm": pbm}, ReplayConfig(obs_mode="ids"))["pbm"]
    a = agreement(np.array([v[n] for n in names]), np.array([sim[n] for n in names]))
    assert a.kendall_tau < 0.8

    # the off-policy estimators value the same slates; not the policies that read the log
    peeking = {p.name for p in zoo if p.reads_logged_order}
    assert peeking == {"logged", "cosine+logged", "anti-logged"}
    ope = ope_zoo(slates, test, {"pbm": pbm}, exclude=peeking)
    assert set(ope) == {"ips", "snips", "iips", "sniips", "rips", "snrips", "dr(pbm)", "idr(pbm)"}
    assert set(ope["iips"]) == set(names) - peeking
    for name in set(names) - peeking:
        requests, slate = slates[name]
        assert len(requests) == test.n_requests and slate.shape[1] == 10
        # the more of the ranking a weight asks to match, the fewer requests support it
        assert ope["iips"][name].support >= ope["rips"][name].support >= ope["ips"][name].support
        # dr weights by the prefix, idr by the item-position: their supports are rips's, iips's
        assert ope["dr(pbm)"][name].support == ope["rips"][name].support
        assert ope["idr(pbm)"][name].support == ope["iips"][name].support
        assert ope["iips"][name].ci_low <= ope["iips"][name].value <= ope["iips"][name].ci_high
    assert 0 < ope["iips"]["random"].support < 1


def test_greedy_values_are_the_true_values_of_each_simulators_optimum(world, small_neural) -> None:
    """``greedy(<model>)`` ranks by the model's attractiveness (given the user's current
    history): the best policy in that model's simulator, valued by :func:`greedy_values`
    under the truth; the truth's own greedy policy is the oracle. The neural model is the
    session's small one, fitted on the same training sessions."""
    train, test, encoded, truth = world
    model, cfg = TruthClickModel(truth=truth), ReplayConfig(obs_mode="ids")
    pbm = PBMClickModel().fit(train)
    neural = small_neural
    models = {"truth": model, "pbm": pbm, "neural": neural, "logged": LoggedClickModel()}
    greedy = greedy_values(models, test, encoded, model, cfg)
    assert set(greedy) == {"pbm", "neural"}  # not the truth, not the log's own clicks
    zoo = [p.fit(train, encoded) for p in policy_zoo(model)]
    zoo += [ModelGreedyPolicy(pbm), ModelGreedyPolicy(neural)]
    values = value_zoo(zoo, test, encoded, {"truth": model, "neural": neural}, cfg)
    assert greedy == pytest.approx({k: values["truth"][f"greedy({k})"] for k in greedy})
    oracle = values["truth"]["truth-oracle"]
    assert max(greedy.values()) < oracle  # no fitted model knows the truth's optimum
    assert (
        TruthOraclePolicy(model).name
        == "truth-oracle"
        == ModelGreedyPolicy(model, "truth-oracle").name
    )
    # in the neural simulator, its own greedy policy beats every other policy of the zoo
    own = values["neural"]
    assert own["greedy(neural)"] == max(own.values())


def test_mixture_policy_reverses_and_blurs(world) -> None:
    train, _, encoded, _ = world
    obs = {
        "candidates": np.array([[0, 1, 2, -1]]),
        "query": np.array([[0]]),
        "user": np.full((1, 20), -1),
        "user_weights": np.zeros((1, 20), dtype=np.float32),
        "mask": np.array([[1, 1, 1, 0]], dtype=np.float32),
    }
    cos = CosinePolicy().fit(train, encoded)
    anti = MixturePolicy("anti", [(CosinePolicy().fit(train, encoded), -1.0)])
    base = cos.scores(obs, None)[0, :3]
    flipped = anti.scores(obs, None)[0, :3]
    assert np.array_equal(np.argsort(base), np.argsort(-flipped))
    noisy = MixturePolicy("noisy", [(cos, 1.0)], noise=1.0, seed=3)
    first = noisy.scores(obs, None)
    noisy.reset()
    assert np.array_equal(first, noisy.scores(obs, None))  # reset restarts the noise
    with pytest.raises(ValueError, match="noise=-1.0; allowed: >= 0"):
        MixturePolicy("bad", [(cos, 1.0)], noise=-1.0)


def test_fidelity_entry_point_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rankgym fidelity`` (in-process) with a PBM and a small neural model (2 members,
    2 epochs: the default's 5 and 20 take minutes)."""
    from rankgym.experiments import fidelity
    from rankgym.experiments.runs import instantiate

    shrunk = []

    def shrink_neural(node: Any, what: str, **kwargs: Any) -> Any:
        if what == "reward model neural":
            shrunk.append(what)
            kwargs = {"ensemble": 2, "epochs": 2, "hidden": 32, **kwargs}
        return instantiate(node, what, **kwargs)

    monkeypatch.setattr(fidelity, "instantiate", shrink_neural)
    args = [
        f"paths.root_dir={tmp_path}", f"out={tmp_path}/data", "encoder=hashing",
        "dataset.scale=0.05", "dataset.n_items=300", "dataset.propensity_samples=5",
        "fidelity.rewards=[pbm,neural]",
    ]  # fmt: skip
    hydra_job(fidelity.main, *args, run_dir=tmp_path / "run")
    assert shrunk == ["reward model neural"]
    run = tmp_path / "run"
    summary = pd.read_csv(run / "fidelity.csv", index_col="method")
    ope = ["ips", "snips", "iips", "sniips", "rips", "snrips"]
    ope += ["dr(pbm)", "idr(pbm)", "dr(neural)", "idr(neural)"]
    assert list(summary.index) == ["pbm", "neural", *ope]
    assert (
        summary.loc[ope, "kind"].eq("OPE").all()
        and summary.loc[["pbm"], "kind"].eq("simulator").all()
    )
    assert summary.loc[ope, "support"].between(0, 1).all() and summary.loc[ope, "ess"].ge(0).all()
    # item-position weights find support for every policy; whole slates rarely match
    assert summary.loc["iips", "ess"] > summary.loc["ips", "ess"]
    assert summary.loc["iips", "support"] > summary.loc["rips", "support"]
    assert summary.loc[ope, "covered"].between(0, 1).all()
    assert summary.loc[["pbm", "neural"], "support"].isna().all()
    # the ensemble's epistemic intervals: read back from intervals.csv, they give its columns
    intervals = pd.read_csv(run / "intervals.csv")
    own = intervals[intervals["method"] == "neural"].set_index("policy")
    assert len(own) == 15 and (own["level"] == 0.9).all() and (own["low"] < own["high"]).all()
    assert own["members"].str.split().str.len().eq(2).all()  # its two members' values
    assert intervals[intervals["method"] == "pbm"].empty  # one model: no interval
    truth_of = pd.read_csv(run / "values.csv", index_col="policy").loc[own.index, "truth"]
    inside = (own["low"] <= truth_of) & (truth_of <= own["high"])
    assert summary.loc["neural", "covered"] == pytest.approx(inside.mean())
    assert np.isnan(summary.loc["pbm", "covered"]) and summary.loc["pbm", "apart"] == 0
    assert summary.loc["neural", "apart_paired"] >= summary.loc["neural", "apart"]
    assert summary["pick_regret"].dropna().between(0, 1).all()
    # each simulator's optimum, valued under the truth; its share of the random-to-oracle gap
    values = pd.read_csv(run / "values.csv", index_col="policy")
    low, high = values.loc["random", "truth"], values.loc["truth-oracle", "truth"]
    greedy = summary.loc[["pbm", "neural"], "greedy_true"]
    assert greedy.between(0, high).all() and summary.loc[ope, "greedy_true"].isna().all()
    gap = summary.loc[["pbm", "neural"], "greedy_gap"]
    np.testing.assert_allclose(gap, (greedy - low) / (high - low))
    assert {"kendall_tau", "spearman", "rel_error", "within", "pair_agreement"} <= set(summary)
    # the error over the policies that do not rank by the truth
    seen = values.drop(index=[p for p in TRUTH_RANKED if p in values.index])
    np.testing.assert_allclose(
        summary.loc["pbm", "rel_error_observable"],
        ((seen["pbm"] - seen["truth"]).abs() / seen["truth"]).mean(),
    )
    # (an estimator that values every policy at 0, as ips may here, has no tau)
    assert summary["kendall_tau"].dropna().between(-1, 1).all()
    assert summary.loc[["pbm", "neural", "iips", "rips"], "kendall_tau"].notna().all()
    assert values.loc["truth-oracle", "truth"] == values["truth"].max()
    assert values.loc["logged", "iips"] != values.loc["logged", "iips"]  # n/a: it reads the log
    text = (run / "fidelity.md").read_text()
    assert "Best simulator `" in text and "pick the same winner" in text
    assert (run / "fidelity.png").stat().st_size > 1000
    assert "kendall_tau" in (run / "fidelity.md").read_text()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    code, err = exits(capsys, lambda: hydra_job(fidelity.main, *args[:-1],
                                                "fidelity.rewards=[pbn]", run_dir=run))  # fmt: skip
    assert code == 2
    allowed = "allowed: cascade, dcm, logged, neural, neural_longterm, neural_train, pbm"
    assert f"fidelity.rewards has 'pbn'; {allowed}" in err
    code, err = exits(capsys, lambda: hydra_job(fidelity.main, *args, "fidelity.clip=-1",
                                                run_dir=run))  # fmt: skip
    assert code == 2
    assert "fidelity.clip=-1; allowed: a number > 0, or null (no clipping)" in err
    code, err = exits(capsys, lambda: hydra_job(fidelity.main, *args, "fidelity.zoo=some",
                                                run_dir=run))  # fmt: skip
    assert code == 2 and "fidelity.zoo='some'; allowed: full, baselines" in err


def test_the_report_counts_coverage_apart_pairs_and_the_picks_regret() -> None:
    from rankgym.experiments.fidelity import pick_regret, report

    values = {
        "truth": {"a": 1.0, "b": 1.2, "c": 1.5, "truth-oracle": 2.0},
        "sim": {"a": 1.1, "b": 1.6, "c": 1.4, "truth-oracle": 1.5},
    }
    intervals = {"sim": {"a": (1.0, 1.15), "b": (1.3, 1.7), "c": (1.35, 1.6),
                         "truth-oracle": (1.4, 1.6)}}  # fmt: skip
    table, summary = report(values, None, intervals)
    row = summary.loc["sim"]
    assert row["covered"] == 0.5  # a and c
    # apart: (a, b), (a, c), (a, oracle); b is valued above c, the truth says otherwise
    assert row["apart"] == 3 and row["apart_agreement"] == 1.0
    # the pick among the deployable policies: b (worth 1.2) where c (1.5) is the best
    assert row["pick_regret"] == pytest.approx(0.3 / 1.5)
    assert pick_regret(table["truth"], table["truth"]) == 0.0


def test_a_trained_run_is_named_by_its_overrides(tmp_path: Path) -> None:
    from rankgym.experiments.fidelity import run_label

    run = tmp_path / "sweep" / "3"
    (run / ".hydra").mkdir(parents=True)
    assert run_label(run, tmp_path / "sweep") == "3"
    (run / ".hydra" / "overrides.yaml").write_text(
        "- reward=neural_train\n- total_timesteps=600000\n- hydra.verbose=true\n"
    )
    assert run_label(run, tmp_path / "sweep") == "reward=neural_train,total_timesteps=600000"


def test_trained_ppo_and_dqn_runs_join_the_baselines_zoo(
    tiny_root: Path, ppo_run: Path, dqn_run: Path, tmp_path: Path
) -> None:
    """``fidelity.runs`` loads each run's final policy (a DQN checkpoint with its replay
    buffer's shape) and names it by its overrides (a run given twice keeps both, the second
    named by its path); ``fidelity.zoo=baselines`` keeps the four fixed policies that give the
    random-to-oracle scale."""
    from rankgym.experiments import fidelity
    from tests.commands import TINY

    args = [
        f"paths.root_dir={tiny_root}", f"out={tiny_root}/data", *TINY,
        f"fidelity.runs=[{ppo_run},{dqn_run},{ppo_run}]", "fidelity.zoo=baselines",
        "fidelity.rewards=[pbm]", "fidelity.ope=false",
    ]  # fmt: skip
    hydra_job(fidelity.main, *args, run_dir=tmp_path / "run")
    values = pd.read_csv(tmp_path / "run" / "values.csv", index_col="policy")
    fixed = {"random", "popularity", "cosine", "truth-oracle"}
    trained = [p for p in values.index if p not in fixed]
    assert fixed <= set(values.index) and len(trained) == 3
    assert sorted(p.split(":")[0] for p in trained) == ["dqn", "ppo", "ppo"]
    assert all("agent=" in p and "paths." not in p for p in trained)
    assert sum(p.endswith(f"({ppo_run})") for p in trained) == 1  # one name per policy
    assert values.loc[trained, ["truth", "pbm"]].gt(0).all().all()


@pytest.mark.slow  # a minute: the world, the fit, 20 draws of the check, 20 policies twice
def test_fidelity_of_a_sequential_world(tmp_path: Path) -> None:
    """``rankgym fidelity experiment=longterm``: the long-term zoo valued per user under the
    truth and the truth's clicks with fitted users, and the held-out user-response check."""
    from rankgym.experiments import fidelity

    run = tmp_path / "run"
    hydra_job(
        fidelity.main, f"paths.root_dir={tmp_path}", f"out={tmp_path}/data", "experiment=longterm",
        "encoder=hashing", "dataset.scale=0.1", "dataset.n_items=300",
        "dataset.propensity_samples=5", "fidelity.rewards=[]", "fidelity.sessions=40",
        run_dir=run,
    )  # fmt: skip
    values = pd.read_csv(run / "values.csv", index_col="policy")
    assert list(values.columns) == ["truth", fidelity.FITTED_USERS]
    # the policies that trade clicks now for value later are worth more per user in truth
    assert values.loc["lookahead-10", "truth"] > values.loc["truth-oracle", "truth"]
    assert {"cosine+diversity", "truth-oracle+diversity"} <= set(values.index)
    response = pd.read_csv(run / "response.csv", index_col=0)
    assert list(response.index) == ["truth", fidelity.FITTED_USERS]
    assert (response["session_length_logged"] >= 1).all()
    assert response["session_length_ks"].between(0, 1).all()
    np.testing.assert_allclose(
        response["session_length_rel_error"],
        response["session_length_predicted"] / response["session_length_logged"] - 1,
    )
    text = (run / "fidelity.md").read_text()
    assert "Clicks per user (long-term value)" in text and "held-out sessions" in text
