"""`rankgym train` end to end on a tiny world and encoder: in-process Hydra jobs (the session's
shared runs where one fits), and the real command where the process is what is checked (its
exit status and output, a kill)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rankgym.experiments import compare, train
from tests.commands import (
    FIXTURES,
    ROOT,
    SMALL,
    SMALL_NEURAL,
    TINY,
    captured,
    command,
    exits,
    hydra_command,
    hydra_job,
    train_tiny,
)

METRIC_KEYS = {
    "policy", "seed", "total_timesteps", "train_seconds", "expected_clicks", "ctr@1", "ndcg@10",
    "mrr", "true_expected_clicks", "expected_clicks_ci_low", "expected_clicks_ci_high",
    "n_sessions", "n_requests", "ope_iips", "ope_iips_ci_low", "ope_iips_support", "ope_rips",
    "ope_ips", "ope_snips", "logged_clicks",
}  # fmt: skip


def tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: set[str] = set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        found |= set(acc.Tags()["scalars"])
    return found


@pytest.mark.parametrize("agent", ["ppo", "a2c", "dqn"])
def test_tiny_training_run_writes_everything(
    request: pytest.FixtureRequest, tiny_root: Path, tmp_path: Path, agent: str
) -> None:
    if agent == "a2c":  # ppo and dqn: the session's shared runs, with the same settings
        run = tmp_path / "run"
        train_tiny(tiny_root, run, "agent=a2c", "total_timesteps=400", "eval.freq=200",
                   "checkpoint_freq=200", *SMALL["a2c"])  # fmt: skip
    else:
        run = request.getfixturevalue(f"{agent}_run")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert metrics["policy"] == agent and metrics["total_timesteps"] >= 400
    assert metrics["expected_clicks_ci_low"] <= metrics["expected_clicks"]
    assert metrics["expected_clicks"] <= metrics["expected_clicks_ci_high"]
    assert (run / "checkpoints" / "last" / "weights.pt").is_file() and (run / ".hydra").is_dir()
    found = tags(run)
    assert {"eval/expected_clicks", "eval/true_expected_clicks", "eval/ndcg@10", "eval/mrr",
            "eval/ctr@1", "time/fps", "rollout/ep_rew_mean"} <= found, found  # fmt: skip
    assert any(t.startswith("train/") for t in found)


def test_longterm_experiment_reports_long_term_values(tmp_path: Path) -> None:
    """experiment=longterm (the README's command, tiny): PPO looking ahead on the sequential
    world, its long-term values with intervals in metrics.json and TensorBoard, per episode
    in per_request.parquet; the sweep objective is the valid long-term value."""
    import pandas as pd

    run = tmp_path / "run"
    metrics = train_tiny(tmp_path / "root", run, "experiment=longterm", "total_timesteps=400",
                         "eval.freq=200", *SMALL["ppo"])  # fmt: skip
    assert metrics["objective"] == "valid_true_long_term_value"
    for key in ("long_term_value", "session_length", "sessions", "return_rate"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    assert metrics["true_long_term_value"] == metrics["long_term_value"] > 0
    assert 1 <= metrics["session_length"] <= 8 and 0 < metrics["return_rate"] < 1
    assert "ope_sniips" not in metrics  # the latent timeline was never logged
    table = pd.read_parquet(run / "per_request.parquet")  # what compare pairs, user by user
    per_user = (table["expected_clicks"] * table["survival"]).groupby(table["episode"]).sum()
    assert per_user.mean() == pytest.approx(metrics["long_term_value"])
    found = tags(run)
    assert {"eval/long_term_value", "test/session_length", "test/return_rate"} <= found, found


def test_a_policy_trained_in_the_fitted_simulator_is_valued_under_the_truth(
    tmp_path: Path,
) -> None:
    """experiment=longterm reward=neural_longterm: the click model and the user-response model
    fitted to the reached log; the run reports the simulator's long-term value and the
    truth's, each with its interval."""
    run = tmp_path / "run"
    metrics = train_tiny(tmp_path / "root", run, "experiment=longterm", "reward=neural_longterm",
                         "total_timesteps=200", "eval.freq=200", "eval.fidelity=false",
                         *SMALL["ppo"], *SMALL_NEURAL)  # fmt: skip
    assert metrics["reward_model"] == "neural_longterm"
    for key in ("long_term_value", "true_long_term_value"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    assert metrics["long_term_value"] != metrics["true_long_term_value"]
    assert metrics["valid_true_long_term_value"] > 0
    assert 1 <= metrics["session_length"] <= 8  # the fitted users end sessions


@pytest.mark.slow  # two runs, each valuing the fidelity zoo
def test_a_run_on_sampled_users_values_the_fidelity_zoo_on_the_expected_walk(
    tmp_path: Path,
) -> None:
    """The fitted simulator's fidelity a run logs is a property of the simulator, not of the
    users its agent trains on: the zoo is valued on the expected walk either way."""
    common = ["experiment=longterm", "reward=pbm", "agent=cosine", "eval.sessions=null"]
    found = {
        choices: train_tiny(
            tmp_path / "root", tmp_path / choices, *common, f"env.user_choices={choices}"
        )
        for choices in ("expected", "sampled")
    }
    for key in ("fidelity_kendall_tau", "fidelity_rel_error", "fidelity_greedy_true"):
        assert found["sampled"][key] == pytest.approx(found["expected"][key], abs=1e-9), key


@pytest.mark.parametrize("reward", ["truth", "logged", "pbm", "dcm", "cascade", "neural"])
def test_every_reward_model_trains_with_periodic_evaluation(
    request: pytest.FixtureRequest, tiny_root: Path, tmp_path: Path, reward: str
) -> None:
    """One fitted model serves the training env and the evaluation env at once."""
    if reward == "truth":  # the shared PPO run: reward=truth, 400 timesteps, eval every 200
        run = request.getfixturevalue("ppo_run")
    else:
        run = tmp_path / "run"
        small = SMALL_NEURAL if reward == "neural" else []
        train_tiny(tiny_root, run, "agent=ppo", f"reward={reward}", "total_timesteps=384",
                   "eval.freq=128", "checkpoint_freq=100000", *SMALL["ppo"], *small)  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reward_model"] == reward and metrics["total_timesteps"] >= 384
    assert metrics["true_expected_clicks"] > 0 and np.isfinite(metrics["expected_clicks"])
    found = tags(run)
    assert {"eval/expected_clicks", "eval/true_expected_clicks"} <= found
    if reward != "truth":  # how far the simulator can be trusted, against the truth
        assert -1 <= metrics["fidelity_kendall_tau"] <= 1 and metrics["fidelity_rel_error"] >= 0
        assert {"fidelity/kendall_tau", "fidelity/rel_error"} <= found
        # the true value of the simulator's optimum; not for the log's own clicks
        if reward == "logged":
            assert "fidelity_greedy_true" not in metrics
        else:
            assert metrics["fidelity_greedy_true"] > 0 and "fidelity/greedy_true" in found
    else:
        assert "fidelity_kendall_tau" not in metrics


@pytest.mark.parametrize("agent", ["random", "logged", "popularity", "cosine", "oracle"])
def test_baselines_write_the_same_outputs(
    request: pytest.FixtureRequest, tiny_root: Path, tmp_path: Path, agent: str
) -> None:
    if agent == "cosine":  # the session's shared cosine run
        run = request.getfixturevalue("cosine_run")
    else:
        run = tmp_path / "run"
        train_tiny(tiny_root, run, f"agent={agent}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS and metrics["total_timesteps"] == 0
    # a baseline is not trained: no periodic eval/, its final numbers on valid and test
    assert {"test/expected_clicks", "test/true_expected_clicks", "valid/true_expected_clicks"} <= (
        tags(run)
    )


@pytest.mark.parametrize("agent", ["ppo", "cosine"])
def test_obd_trains_as_a_ranking_over_its_catalog(tmp_path: Path, agent: str) -> None:
    """experiment=obd on the OBD fixture: 80 candidates, 3 slots, features, an IPS estimate."""
    args = [
        "experiment=obd", f"paths.root_dir={tmp_path}", f"out={tmp_path}/data",
        f"dataset.path={FIXTURES / 'obd'}",
        f"agent={agent}", "reward.epochs=2", "reward.ensemble=1", "total_timesteps=96",
        "eval.bootstrap=20", "split.test_fraction=0.5", *SMALL["ppo"][:2],
    ]  # fmt: skip
    if agent == "cosine":
        args[-2:] = ["agent.features=true"]
    hydra_job(train.main, *args, run_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["reward_model"] == "neural" and metrics["invalid_actions"] == 0
    assert "ndcg@3" in metrics and metrics["expected_clicks"] > 0
    # the fixture's uniform logging: 1/80 of the held-out impressions can match at best 3/80
    from rankgym.logs import SessionLog

    data = SessionLog.read(tmp_path / "data")
    _, test = data.split(0.5, seed=0)
    assert metrics["ope_iips_n"] == test.n_requests and 0 <= metrics["ope_iips_support"] <= 1
    assert metrics["logged_clicks"] == pytest.approx(test.click.mean())  # one slot per request
    # OBD records item-position propensities only: no prefix estimators; dm from the neural model
    assert "ope_dm" in metrics and "ope_rips" not in metrics and "ope_dr" not in metrics
    assert data.meta["counts"]["unshown_candidates"] == 6 * 80 - 8


def test_the_command_runs_a_baseline_without_bootstrap_and_writes_null_intervals(
    tiny_root: Path, cosine_run: Path, tmp_path: Path
) -> None:
    """The real ``rankgym train`` command (the tiny world prepared by the shared runs): exit 0,
    the metrics on stdout, the run directory; no bootstrap gives null intervals, not NaN."""
    done = command("train", f"paths.root_dir={tiny_root}", f"out={tiny_root}/data",
                   f"hydra.run.dir={tmp_path}/run", *TINY, "agent=cosine",
                   "eval.bootstrap=0")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert metrics["expected_clicks_ci_low"] is None and metrics["expected_clicks"] > 0
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["expected_clicks"] == metrics["expected_clicks"]
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").is_file()


def test_resume_continues_from_the_checkpoint(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    train_tiny(tiny_root, run, "agent=ppo", "total_timesteps=256", "checkpoint_freq=128",
               "eval.freq=100000", *SMALL["ppo"])  # fmt: skip
    # as if killed at 256 steps of a 512-step run: the same run directory, resume=true
    caplog.set_level(logging.INFO)
    metrics = train_tiny(tiny_root, run, "agent=ppo", "total_timesteps=512",
                         "checkpoint_freq=128", "eval.freq=100000", "resume=true",
                         *SMALL["ppo"])  # fmt: skip
    assert "resuming from" in caplog.text
    assert 512 <= metrics["total_timesteps"] < 768  # continued, not restarted


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("agent.algorithm=sac", "error: agent.algorithm='sac'; allowed: ppo, a2c, dqn"),
        ("total_timesteps=-5", "error: total_timesteps=-5; allowed: an int >= 0"),
        ("eval.freq=0", "error: eval.freq=0; allowed: an int >= 1"),
        ("checkpoint_freq=-1", "error: checkpoint_freq=-1; allowed: an int >= 1"),
        ("eval.sessions=0", "error: eval.sessions=0; allowed: an int >= 1 or null"),
        (
            "agent.hyperparams.learning_rate=foo",
            "error: agent.hyperparams.learning_rate='foo'; allowed: a number >= 0.0",
        ),
        ("agent.hyperparams.gamma=x", "error: agent.hyperparams.gamma='x'; allowed: a number"),
    ],
)
def test_config_errors_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    code, err = exits(capsys, lambda: train_tiny(tmp_path, tmp_path / "run", override))
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(message), err[-2000:]


def test_the_command_ends_a_config_error_with_one_line_and_status_2(tmp_path: Path) -> None:
    """The real ``rankgym train`` command: only the error line on stderr, exit status 2."""
    done = command("train", f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run",
                   "total_timesteps=-5", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: total_timesteps=-5; allowed: an int >= 0"
    ], done.stderr[-2000:]


def read_progress(run_dir: Path) -> list[float]:
    import csv

    with open(run_dir / "tensorboard" / "progress.csv", newline="") as handle:
        return [float(r["time/total_timesteps"]) for r in csv.DictReader(handle)]


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_a_killed_run_resumes_with_the_logs_of_an_uninterrupted_one(
    tiny_root: Path, tmp_path: Path
) -> None:
    """Kill a run (the real command) after its first checkpoint; resume it; its logs match a
    run never killed."""
    common = ["agent=ppo", "checkpoint_freq=256", "eval.freq=256", *SMALL["ppo"],
              "env.slate_size=5"]  # fmt: skip
    args = [sys.executable, "-m", "rankgym.experiments.train", f"paths.root_dir={tiny_root}",
            f"out={tiny_root}/data", f"hydra.run.dir={tmp_path}/killed", *TINY, *common,
            "total_timesteps=100000"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (
        state.is_file() and json.loads(state.read_text())["num_timesteps"] >= 256
        and max(read_progress(tmp_path / "killed"), default=0) > 256
    ):  # fmt: skip
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["num_timesteps"]
    assert max(read_progress(tmp_path / "killed")) > killed_at  # rows the resume will replay
    # TensorBoard reads a run's event files in name order (creation second, host, pid): the
    # resumed run's file sorts after the killed one's once a second has passed since it began
    (events,) = (tmp_path / "killed" / "tensorboard").glob("events.out.tfevents.*")
    while time.time() < int(events.name.split(".")[3]) + 1:
        time.sleep(0.05)
    # resume without repeating the overrides: the run's config comes back from the run
    train_tiny(tiny_root, tmp_path / "killed", "resume=true", "total_timesteps=1024")
    train_tiny(tiny_root, tmp_path / "whole", *common, "total_timesteps=1024")
    got, want = read_progress(tmp_path / "killed"), read_progress(tmp_path / "whole")
    # the same rows at the same steps (an eval dump and a rollout dump may share a step)
    assert got == want, (got, want)
    for tag in ("eval/expected_clicks", "rollout/ep_rew_mean"):
        steps = scalar_steps(tmp_path / "killed", tag)
        assert steps == sorted(steps) and steps == scalar_steps(tmp_path / "whole", tag), tag
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert "ndcg@5" in metrics  # the run's env.slate_size=5 restored, not the default 10
    assert metrics["total_timesteps"] >= 1024


def test_a_failing_job_never_stops_the_sweep(tiny_root: Path, tmp_path: Path) -> None:
    """Job 0 is a user error, job 1 runs anyway; the sweep (Hydra's command line, in-process)
    exits 1 listing the failure."""
    done = hydra_command(train.main, "-m", f"paths.root_dir={tiny_root}", f"out={tiny_root}/data",
                         f"hydra.sweep.dir={tmp_path}/sweep", *TINY, "agent=cosine",
                         "env.slate_size=0,5")  # fmt: skip
    assert done.returncode == 1
    assert "sweep: 1 job(s) failed:" in done.stderr
    assert "0: ValueError: env.slate_size=0; allowed: 1..20 (max_candidates 20" in done.stderr
    sweep = tmp_path / "sweep"
    assert (sweep / "0" / "error.txt").read_text().startswith("ValueError: env.slate_size=0")
    assert (sweep / "1" / "metrics.json").is_file()
    table = captured(lambda: compare.main([str(sweep)]))
    assert table.returncode == 0, table.stderr
    head = table.stdout.split("| policy")[0]
    assert "1 run(s) of this sweep are not in the table" in head
    assert "`0`: failed: ValueError: env.slate_size=0" in head
    # the synthetic log has propensities: the off-policy estimates come next to the simulator
    assert "Two opinions" in table.stdout and "| cosine | 1 |" in table.stdout.split("Two")[1]
    assert (sweep / "ope.csv").is_file()
