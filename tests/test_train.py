"""`rankgym train` end to end, in a subprocess, on a tiny world and encoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "encoder=tiny",
    "dataset.scale=0.08",
    "dataset.n_items=200",
    "dataset.propensity_samples=5",
    "eval.sessions=20",
    "eval.final_sessions=40",
    "eval.bootstrap=50",
    "eval.num_envs=16",
]
SMALL = {
    "ppo": ["agent.num_envs=8", "agent.hyperparams.n_steps=16", "agent.hyperparams.batch_size=64"],
    "a2c": ["agent.num_envs=8", "agent.hyperparams.n_steps=8"],
    "dqn": ["agent.num_envs=8", "agent.hyperparams.learning_starts=64",
            "agent.hyperparams.buffer_size=5000", "agent.hyperparams.batch_size=32"],
}  # fmt: skip
METRIC_KEYS = {
    "policy", "seed", "total_timesteps", "train_seconds", "expected_clicks", "ctr@1", "ndcg@10",
    "mrr", "true_expected_clicks", "expected_clicks_ci_low", "expected_clicks_ci_high",
    "n_sessions", "n_requests", "ope_iips", "ope_iips_ci_low", "ope_iips_support", "ope_rips",
    "ope_ips", "ope_snips", "logged_clicks",
}  # fmt: skip


def train(tmp: Path, *overrides: str, run: str = "run") -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "rankgym.experiments.train", f"paths.root_dir={tmp}",
        f"out={tmp}/data", f"hydra.run.dir={tmp}/{run}", *TINY, *overrides,
    ]  # fmt: skip
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: set[str] = set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        found |= set(acc.Tags()["scalars"])
    return found


@pytest.mark.parametrize("agent", ["ppo", "a2c", "dqn"])
def test_tiny_training_run_writes_everything(tmp_path: Path, agent: str) -> None:
    done = train(tmp_path, f"agent={agent}", "total_timesteps=400", "eval.freq=200",
                 "checkpoint_freq=200", *SMALL[agent])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
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


@pytest.mark.parametrize("reward", ["truth", "logged", "pbm", "dcm", "cascade", "neural"])
def test_every_reward_model_trains_with_periodic_evaluation(tmp_path: Path, reward: str) -> None:
    """One fitted model serves the training env and the evaluation env at once."""
    done = train(tmp_path, "agent=ppo", f"reward={reward}", "total_timesteps=384",
                 "eval.freq=128", "checkpoint_freq=100000", *SMALL["ppo"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["reward_model"] == reward and metrics["total_timesteps"] >= 384
    assert metrics["true_expected_clicks"] > 0 and np.isfinite(metrics["expected_clicks"])
    found = tags(tmp_path / "run")
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
def test_baselines_write_the_same_outputs(tmp_path: Path, agent: str) -> None:
    done = train(tmp_path, f"agent={agent}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS and metrics["total_timesteps"] == 0
    # a baseline is not trained: no periodic eval/, its final numbers on valid and test
    assert {"test/expected_clicks", "test/true_expected_clicks", "valid/true_expected_clicks"} <= (
        tags(tmp_path / "run")
    )


@pytest.mark.parametrize("agent", ["ppo", "cosine"])
def test_obd_trains_as_a_ranking_over_its_catalog(tmp_path: Path, agent: str) -> None:
    """experiment=obd on the OBD fixture: 80 candidates, 3 slots, features, an IPS estimate."""
    fixture = ROOT / "tests" / "fixtures" / "obd"
    args = [
        sys.executable, "-m", "rankgym.experiments.train", "experiment=obd",
        f"paths.root_dir={tmp_path}", f"out={tmp_path}/data", f"hydra.run.dir={tmp_path}/run",
        f"dataset.path={fixture}",
        f"agent={agent}", "reward.epochs=2", "reward.ensemble=1", "total_timesteps=96",
        "eval.bootstrap=20", "split.test_fraction=0.5", *SMALL["ppo"][:2],
    ]  # fmt: skip
    if agent == "cosine":
        args[-2:] = ["agent.features=true"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
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


def test_no_bootstrap_writes_null_intervals_not_nan(tmp_path: Path) -> None:
    done = train(tmp_path, "agent=cosine", "eval.bootstrap=0")
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert metrics["expected_clicks_ci_low"] is None and metrics["expected_clicks"] > 0


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    first = train(tmp_path, "agent=ppo", "total_timesteps=256", "checkpoint_freq=128",
                  "eval.freq=100000", *SMALL["ppo"])  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    # as if killed at 256 steps of a 512-step run: the same run directory, resume=true
    second = train(tmp_path, "agent=ppo", "total_timesteps=512", "checkpoint_freq=128",
                   "eval.freq=100000", "resume=true", *SMALL["ppo"])  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout + second.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
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
def test_config_errors_are_one_clear_line(tmp_path: Path, override: str, message: str) -> None:
    done = train(tmp_path, override)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-2000:]


def read_progress(run_dir: Path) -> list[float]:
    import csv

    with open(run_dir / "tensorboard" / "progress.csv", newline="") as handle:
        return [float(r["time/total_timesteps"]) for r in csv.DictReader(handle)]


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_a_killed_run_resumes_with_the_logs_of_an_uninterrupted_one(tmp_path: Path) -> None:
    """Kill a run after its first checkpoint; resume it; its logs match a run never killed."""
    import signal
    import time

    common = ["agent=ppo", "checkpoint_freq=256", "eval.freq=256", *SMALL["ppo"],
              "env.slate_size=5"]  # fmt: skip
    args = [sys.executable, "-m", "rankgym.experiments.train", f"paths.root_dir={tmp_path}",
            f"out={tmp_path}/data", f"hydra.run.dir={tmp_path}/killed", *TINY, *common,
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
    # resume without repeating the overrides: the run's config comes back from the run
    resumed = train(tmp_path, "resume=true", "total_timesteps=1024", run="killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = train(tmp_path, *common, "total_timesteps=1024", run="whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    got, want = read_progress(tmp_path / "killed"), read_progress(tmp_path / "whole")
    # the same rows at the same steps (an eval dump and a rollout dump may share a step)
    assert got == want, (got, want)
    for tag in ("eval/expected_clicks", "rollout/ep_rew_mean"):
        steps = scalar_steps(tmp_path / "killed", tag)
        assert steps == sorted(steps) and steps == scalar_steps(tmp_path / "whole", tag), tag
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert "ndcg@5" in metrics  # the run's env.slate_size=5 restored, not the default 10
    assert metrics["total_timesteps"] >= 1024


def test_a_failing_job_never_stops_the_sweep(tmp_path: Path) -> None:
    """Job 0 is a user error, job 1 runs anyway; the sweep exits 1 listing the failure."""
    args = [sys.executable, "-m", "rankgym.experiments.train", "-m", f"paths.root_dir={tmp_path}",
            f"out={tmp_path}/data", f"hydra.sweep.dir={tmp_path}/sweep", *TINY, "agent=cosine",
            "env.slate_size=0,5"]  # fmt: skip
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "sweep: 1 job(s) failed:" in done.stderr
    assert "0: ValueError: env.slate_size=0; allowed: 1..20 (max_candidates 20" in done.stderr
    sweep = tmp_path / "sweep"
    assert (sweep / "0" / "error.txt").read_text().startswith("ValueError: env.slate_size=0")
    assert (sweep / "1" / "metrics.json").is_file()
    compare = [sys.executable, "-m", "rankgym.experiments.compare", str(sweep)]
    table = subprocess.run(compare, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    head = table.stdout.split("| policy")[0]
    assert "1 run(s) of this sweep are not in the table" in head
    assert "`0`: failed: ValueError: env.slate_size=0" in head
    # the synthetic log has propensities: the off-policy estimates come next to the simulator
    assert "Two opinions" in table.stdout and "| cosine | 1 |" in table.stdout.split("Two")[1]
    assert (sweep / "ope.csv").is_file()
