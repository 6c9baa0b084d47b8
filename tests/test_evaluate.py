"""rankgym.experiments.evaluate: finished runs valued under another reward model, then compared."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from rankgym.experiments import compare, evaluate
from rankgym.experiments.runs import load_run_policy
from tests.commands import SMALL, captured, hydra_job, train_tiny


@pytest.fixture(scope="module")
def runs(tiny_root: Path, ppo_run: Path, cosine_run: Path) -> Path:
    """The session's tiny PPO and cosine runs (``runs/ppo``, ``runs/cosine`` below it), both
    trained and valued in the truth."""
    return tiny_root


def value(
    root: Path, out: str, *overrides: str, runs: str = "runs"
) -> tuple[int, str, dict[str, dict]]:
    """Run experiments.evaluate (in-process) on ``root / runs``: (exit status, stderr,
    {run path: metrics})."""
    code, err = run_evaluate(f"runs=[{root / runs}]", f"out={root / out}", *overrides)
    found = {
        str(p.parent.relative_to(root / out / (root / runs).name)): json.loads(p.read_text())
        for p in (root / out).rglob("metrics.json")
    }
    return code, err, found


def run_evaluate(*overrides: str) -> tuple[int, str]:
    """``rankgym evaluate`` in-process: (exit status, what it wrote to stderr)."""
    done = captured(lambda: hydra_job(evaluate.main, *overrides, config_name="evaluate"))
    return done.returncode, done.stderr


def test_valued_in_the_truth_again_each_run_gives_its_own_numbers(runs: Path) -> None:
    code, err, found = value(runs, "in-truth", "reward=truth")
    assert code == 0, err[-3000:]
    assert sorted(found) == ["cosine", "ppo"]
    for name, metrics in found.items():
        own = json.loads((runs / "runs" / name / "metrics.json").read_text())
        # the same policy, rebuilt from its run directory, on the same test sessions
        assert metrics["expected_clicks"] == pytest.approx(own["expected_clicks"], abs=1e-9)
        assert metrics["n_requests"] == own["n_requests"]
        assert metrics["reward_model"] == "truth" and metrics["trained_in"] == "truth"
    table = pd.read_parquet(runs / "in-truth" / "runs" / "ppo" / "per_request.parquet")
    assert table["expected_clicks"].mean() == pytest.approx(found["ppo"]["expected_clicks"])


def test_a_fitted_model_values_the_runs_and_compare_pairs_them(runs: Path) -> None:
    code, err, found = value(runs, "in-pbm", "reward=pbm")
    assert code == 0, err[-3000:]
    for name, metrics in found.items():
        own = json.loads((runs / "runs" / name / "metrics.json").read_text())
        assert metrics["reward_model"] == "pbm" and metrics["trained_in"] == "truth"
        # the same test requests, valued by the fitted model and still by the truth (whose
        # value differs a little: the simulated clicks feed the users' histories in a session)
        assert metrics["n_requests"] == own["n_requests"]
        assert metrics["expected_clicks"] != pytest.approx(own["expected_clicks"], abs=1e-6)
        assert metrics["true_expected_clicks"] == pytest.approx(
            own["true_expected_clicks"], rel=0.05
        )
        saved = OmegaConf.load(runs / "in-pbm" / "runs" / name / "run_config.yaml")
        assert saved.reward._target_.endswith("PBMClickModel")
        assert saved.out == str(runs / "data")  # interpolations resolved in the run's config
    done = captured(lambda: compare.main([str(runs / "in-pbm"), "metric=expected_clicks"]))
    assert done.returncode == 0, done.stderr[-3000:]
    report = (runs / "in-pbm" / "report.md").read_text()
    assert "paired" in report.lower() and "| ppo |" in report


def test_refusals_name_the_run_and_the_others_are_still_valued(runs: Path, tmp_path: Path) -> None:
    # a run whose agent keeps no policy (the supervised ceiling), beside a good one
    bad = runs / "runs" / "supervised"
    bad.mkdir(exist_ok=True)
    config = OmegaConf.load(runs / "runs" / "cosine" / "run_config.yaml")
    config.agent = {"_target_": "rankgym.agents.supervised.SupervisedAgent", "name": "supervised"}
    OmegaConf.save(config, bad / "run_config.yaml")
    (bad / "metrics.json").write_text("{}")
    try:
        with pytest.raises(ValueError, match="agent=supervised run keeps no policy"):
            load_run_policy(bad)
        # the whole directory: the copies valued by the tests above are not runs
        code, err, found = value(runs, "mixed", "reward=truth", runs=".")
        assert code == 2 and "1 run(s) failed" in err and "runs/supervised" in err, err[-2000:]
        assert sorted(found) == ["runs/cosine", "runs/ppo"]
    finally:
        for file in bad.iterdir():
            file.unlink()
        bad.rmdir()
    for overrides, message in {
        (f"runs=[{tmp_path}]",): "no finished run",
        (f"runs=[{runs / 'runs'}]", "sessions=train"): "sessions='train'; allowed: test, valid",
    }.items():
        code, err = run_evaluate(*overrides, f"out={tmp_path / 'out'}")
        assert code == 2 and message in err, err[-2000:]


def test_a_run_that_drew_its_users_is_valued_as_it_valued_itself(tmp_path: Path) -> None:
    """A sequential world's run trained on sampled users (``env.user_choices=sampled``, as
    DQN trains) is valued again on the expected walk, as ``rankgym train`` valued it: the same
    long-term values, user by user, rather than one draw of who stayed."""
    own = train_tiny(tmp_path, tmp_path / "runs" / "drawn", "experiment=longterm",
                     "env.user_choices=sampled", "total_timesteps=200", "eval.freq=200",
                     *SMALL["ppo"])  # fmt: skip
    code, err, found = value(tmp_path, "again", "reward=truth")
    assert code == 0, err[-3000:]
    for key in ("long_term_value", "session_length", "sessions", "return_rate"):
        assert found["drawn"][key] == pytest.approx(own[key], abs=1e-9), key
    again = pd.read_parquet(tmp_path / "again" / "runs" / "drawn" / "per_request.parquet")
    trained = pd.read_parquet(tmp_path / "runs" / "drawn" / "per_request.parquet")
    pd.testing.assert_frame_equal(again, trained)  # what compare pairs, user by user


def test_a_run_that_keeps_its_best_weights_reports_and_reloads_them(tmp_path: Path) -> None:
    """``agent.keep=best``: the run reports the weights of its best valid evaluation, and
    ``rankgym evaluate`` (as export and the fidelity zoo) reloads those, not the last ones."""
    import csv

    run = tmp_path / "runs" / "best"
    own = train_tiny(tmp_path, run, "agent=dqn", "agent.keep=best", "total_timesteps=960",
                     "eval.freq=200", *SMALL["dqn"])  # fmt: skip
    with open(run / "tensorboard" / "progress.csv", newline="") as handle:
        evals = {int(float(r["time/total_timesteps"])): float(r["eval/expected_clicks"])
                 for r in csv.DictReader(handle) if r.get("eval/expected_clicks")}  # fmt: skip
    # every 200 timesteps, and the final weights (960) are candidates too
    assert sorted(evals) == [200, 400, 600, 800, 960]
    assert own["kept"] == "best" and own["kept_by"] == "expected_clicks"
    assert own["kept_step"] == max(evals, key=evals.get)
    assert own["kept_step"] < own["total_timesteps"]  # else best and last are the same weights
    state = json.loads((run / "checkpoints" / "best" / "state.json").read_text())
    assert state["num_timesteps"] == own["kept_step"]
    code, err, found = value(tmp_path, "again", "reward=truth")
    assert code == 0, err[-3000:]
    assert found["best"]["true_expected_clicks"] == pytest.approx(own["true_expected_clicks"])
    # the last weights are another policy: keep=last values those instead
    code, err, other = value(tmp_path, "last", "reward=truth", "keep=last")
    assert code == 0, err[-3000:]
    assert other["best"]["kept"] == "last" and found["best"]["kept"] == "best"
    assert other["best"]["true_expected_clicks"] != pytest.approx(own["true_expected_clicks"])
    code, err = run_evaluate(f"runs=[{run}]", f"out={tmp_path / 'x'}", "keep=first")
    assert code == 2 and "keep='first'; allowed: null (each run's agent.keep), last, best" in err
