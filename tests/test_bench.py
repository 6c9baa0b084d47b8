"""rankgym.experiments.bench: the training benchmark's rounds and medians, and its command line."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from rankgym.experiments import bench


def test_train_benchmark_rounds_report_medians() -> None:
    """Two rounds of one PPO update each (256 envs x 16 steps: the default agent's rollout)."""
    results = bench.bench_train(2000, None, ["ppo"], profile=False, repeats=2)
    runs = results["ppo"]["runs"]
    assert len(runs) == 2 and all(run["timesteps"] >= 2000 for run in runs)
    assert results["ppo"]["slates_per_s"] == statistics.median(r["slates_per_s"] for r in runs)


@pytest.mark.parametrize("what", ["env", "serve", "sweep"])
def test_benchmarks_without_repeats_refuse_the_flag(what: str) -> None:
    """Only data, encoders and train repeat; the others once accepted --repeats and ignored it."""
    with pytest.raises(SystemExit):
        bench.main([what, "--repeats", "3"])


def test_repeats_below_one_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["train", "--repeats", "0"])
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_simulator_benchmark_compares_equal_passes_and_restores_the_forward() -> None:
    """The stacked serving pass and its reference give the same probabilities, the split and
    the concatenated first layer are both fitted, and the model's forward is put back."""
    from rankgym.envs.click_models.neural.network import Scorer

    forward = Scorer.forward
    results = bench.bench_simulator(64, repeats=2, env_steps=3)
    assert Scorer.forward is forward
    assert results["members"] == 5 and results["max_abs_difference"] < 1e-5
    assert results["fit_split_s"] > 0 and results["fit_concatenated_s"] > 0
    rates = ("stacked_candidates_per_s", "one_by_one_candidates_per_s",
             "env_neural_slot_steps_per_s", "env_neural_one_by_one_slot_steps_per_s")  # fmt: skip
    assert all(results[key] > 0 for key in rates)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--threads", "0"], "allowed: auto, all, or an int >= 1"),
     (["--threads", "two"], "allowed: auto, all, or an int >= 1"),
     (["--load", "-1"], "--load and --loads must be >= 0")],
)  # fmt: skip
def test_load_and_threads_are_checked(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.main(["env", *args])
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_threads_benchmark_runs_each_setting_idle_and_loaded(tmp_path: Path) -> None:
    """Under one busy core the default policy gives up a thread; a fixed count never moves;
    idle, the policy keeps every core. The caller's OMP_NUM_THREADS (1 in the tests) does not
    reach the settings."""
    out = tmp_path / "threads.json"
    small = ["--slates", "300", "--fit-epochs", "1", "--env-steps", "5", "--json", str(out)]
    bench.main(["threads", "--settings", "auto", "1", "--loads", "0", "1", "--repeats=1", *small])
    results = json.loads(out.read_text())
    idle, loaded = results["load 0, auto"], results["load 1, auto"]
    cores = bench.threads.usable_cores()
    assert [run["torch_threads"] for run in idle["threads"]] == [cores]
    assert idle["threads"][0]["torch_threads_auto"] is True
    if cores > 1:
        assert loaded["threads"][0]["torch_thread_switches"] >= 1
        assert loaded["threads"][0]["torch_threads_share"].get(str(cores - 1), 0) > 0
    assert results["load 1, 1"]["threads"] == [{"torch_threads": 1, "torch_threads_auto": False}]
    for row in (idle, loaded, results["load 0, 1"], results["load 1, 1"]):
        assert row["ppo_slates_per_s"] > 0 and row["fit_impressions_per_s"] > 0
        assert not any(key.endswith("_vs_idle_all") for key in row)  # no "all" to compare with
