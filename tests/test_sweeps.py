"""Sweeps at research scale: three splits, parallel and resumable sweeps, shared caches, the
comparison report's paired statistics, the TensorBoard HParams table, an Optuna search."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rankgym.envs.setup import Split
from rankgym.experiments import compare as compare_command
from rankgym.experiments import train
from rankgym.experiments.compare import holm
from rankgym.logs.synthetic import SyntheticWorld
from tests.commands import ROOT, SMALL, TINY, captured, hydra_command
from tests.conftest import SMALL_WORLD


def sweep(
    tmp: Path, *overrides: str, name: str = "sweep", root: Path | None = None
) -> subprocess.CompletedProcess:
    """A sweep by the real command (``-m``) into ``tmp / name``; its tiny world under ``root``
    (default ``tmp``)."""
    root = root or tmp
    args = [sys.executable, "-m", "rankgym.experiments.train", "-m", f"paths.root_dir={root}",
            f"out={root}/data", f"hydra.sweep.dir={tmp}/{name}", *TINY, *overrides]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # rankgym's policy
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def sweep_here(tmp: Path, root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The same sweep through Hydra's command line in this process (the basic launcher runs
    its jobs one after another here)."""
    return hydra_command(train.main, "-m", f"paths.root_dir={root}", f"out={root}/data",
                         f"hydra.sweep.dir={tmp}/sweep", *TINY, *overrides)  # fmt: skip


def compare(directory: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``rankgym compare`` in this process."""
    return captured(lambda: compare_command.main([str(directory), *overrides]))


def test_three_way_split_keeps_the_test_sessions(small_world: Any) -> None:
    log, _ = small_world
    _, test_two_way = log.split(0.2, seed=0)
    train, valid, test = Split(test_fraction=0.2, valid_fraction=0.1).apply(log)
    ids = [set(part.session_ids) for part in (train, valid, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == log.n_sessions
    assert ids[2] == set(test_two_way.session_ids)  # valid_fraction never moves test sessions
    assert len(ids[1]) == pytest.approx(0.1 * log.n_sessions, abs=1)
    assert Split(valid_fraction=0.0).apply(log)[1] is None
    # by time: train, then valid, then test
    train, valid, test = Split(by="time").apply(log)
    starts = [p.request_timestamp[p.session_offsets[:-1]] for p in (train, valid, test)]
    assert starts[0].max() <= starts[1].min() and starts[1].max() <= starts[2].min()
    for bad, match in (({"valid_fraction": 0.8}, r"split.valid_fraction=0.8; allowed: \[0, 0.8\)"),
                       ({"valid_fraction": -0.1}, "split.valid_fraction=-0.1")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            Split(**bad)


def test_holm_step_down() -> None:
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, float("nan")])[0] == 0.5


def _prepare(args: tuple[str, str]) -> list[str]:
    """One job's run setup (a fresh process), returning what it logged."""
    import logging

    from rankgym.encoders.hashing import HashingEncoder
    from rankgym.encoders.store import EmbeddingStore
    from rankgym.envs.click_models.fitted import PBMClickModel
    from rankgym.envs.replay import ReplayConfig
    from rankgym.envs.setup import setup_run

    out, cache = args
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    s = setup_run(SyntheticWorld(**SMALL_WORLD), out, HashingEncoder(dim=32), PBMClickModel(),
                  ReplayConfig(obs_mode="ids"), Split(), EmbeddingStore(f"{cache}/embeddings"),
                  cache)  # fmt: skip
    records.append(f"items {s.data.n_items} reward {s.reward.name}")
    return records


def test_jobs_starting_together_prepare_shared_caches_once(tmp_path: Path) -> None:
    """Four jobs start at once on one dataset, embedding store and reward model: one writes
    the dataset, one encodes, one fits; the others wait and reuse."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        logs = pool.map(_prepare, [(str(tmp_path / "data"), str(tmp_path / "cache"))] * 4)
    lines = [line for records in logs for line in records]
    assert sum(line.startswith("writing dataset") for line in lines) == 1, lines
    assert sum(line.startswith("fitting reward model") for line in lines) == 1, lines
    assert sum(line.startswith("reusing fitted reward model") for line in lines) == 3, lines
    assert all(records[-1] == "items 400 reward pbm" for records in logs)


@pytest.fixture(scope="module")
def baseline_sweep(
    tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, cosine_run: Path
) -> Path:
    """A 2 x 2 sweep (cosine, popularity x seed 0, 1) run in parallel by the joblib launcher
    (the real command), on the tiny world the session's runs prepared."""
    tmp = tmp_path_factory.mktemp("joblib")
    done = sweep(tmp, "hydra/launcher=joblib", "agent=cosine,popularity", "seed=0,1",
                 "eval.final_sessions=null", root=tiny_root)  # every held-out request  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "sweep"


def test_joblib_sweep_runs_every_job_with_shared_cores(baseline_sweep: Path) -> None:
    runs = sorted(baseline_sweep.glob("*/metrics.json"))
    assert len(runs) == 4
    for file in runs:
        metrics = json.loads(file.read_text())
        assert metrics["torch_threads"] == 1  # the cores shared among the parallel jobs
        assert metrics["torch_threads_auto"] is True  # and within them, the load's policy
        assert sum(metrics["torch_threads_share"].values()) == pytest.approx(1.0, abs=0.01)
        assert metrics["splits"]["metrics"] == "test" and metrics["splits"]["periodic"] == "valid"
        assert metrics["objective"] == "valid_true_expected_clicks"
        assert metrics["valid_true_expected_clicks"] != metrics["true_expected_clicks"]
        assert (file.parent / "per_request.parquet").is_file()


def test_report_pairs_sessions_as_a_hand_computation_does(baseline_sweep: Path) -> None:
    from scipy import stats

    done = compare(baseline_sweep, "reference=cosine")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("report.md", "results.csv", "final.png", "learning_curves.png"):
        assert (baseline_sweep / name).is_file(), name
    # by hand: each policy's per-request values averaged over its two seeds, then differences
    per_policy = {}
    for file in baseline_sweep.glob("*/per_request.parquet"):
        policy = json.loads((file.parent / "metrics.json").read_text())["policy"]
        per_policy.setdefault(policy, []).append(pd.read_parquet(file).set_index("request"))
    mean = {p: sum(t["true_expected_clicks"] for t in ts) / len(ts) for p, ts in per_policy.items()}
    diff = (mean["popularity"] - mean["cosine"]).dropna()
    session = per_policy["cosine"][0].loc[diff.index, "session"]
    totals = diff.groupby(session.to_numpy()).sum()
    results = pd.read_csv(baseline_sweep / "results.csv").set_index("policy")
    row = results.loc["popularity"]
    assert row["diff"] == pytest.approx(diff.mean(), abs=1e-12)
    assert row["p_value"] == pytest.approx(stats.ttest_1samp(totals, 0.0).pvalue, rel=1e-9)
    assert row["p_holm"] == pytest.approx(row["p_value"])  # one comparison
    assert row["diff_low"] < diff.mean() < row["diff_high"]
    assert row["n_sessions"] == len(totals) and row["n_requests"] == len(diff)
    assert bool(row["significant"]) == (row["p_value"] < 0.05)
    assert np.isnan(results.loc["cosine", "diff"])  # the reference itself
    report = (baseline_sweep / "report.md").read_text()
    assert "Paired differences from `cosine`" in report and "![Learning curves" in report
    bad = compare(baseline_sweep, "reference=oracle")
    assert bad.returncode == 0 and "reference='oracle' is not a group" in bad.stdout
    bad = compare(baseline_sweep, "group_by=agent", "colour=red")
    assert bad.returncode == 2 and "'colour=red': expected key=value with key one of" in bad.stderr


def test_report_without_per_request_files_says_why(baseline_sweep: Path, tmp_path: Path) -> None:
    """Runs from before ``per_request.parquet``: the report is written, without the pairs."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(baseline_sweep, old, ignore=shutil.ignore_patterns("per_request.parquet"))
    done = compare(old)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "No paired differences: " in done.stdout and "per_request.parquet: missing" in (
        done.stdout
    )
    assert (old / "report.md").is_file() and (old / "final.png").is_file()


def test_report_groups_by_any_config_key(baseline_sweep: Path) -> None:
    done = compare(baseline_sweep, "group_by=[agent,seed]", "reference=cosine/0")
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_csv(baseline_sweep / "results.csv")
    assert sorted(results["policy"]) == ["cosine/0", "cosine/1", "popularity/0", "popularity/1"]
    assert (results["seeds"] == 1).all()


def test_tensorboard_hparams_table_holds_every_run(baseline_sweep: Path) -> None:
    """The HParams plugin's data, read back: every run's settings and final valid/test
    metrics, under the sweep's log dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    seen = []
    for events in baseline_sweep.glob("*/tensorboard/events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = {k: v.string_value or v.number_value for k, v in
                   data.session_start_info.hparams.items()}  # fmt: skip
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        declared = {m.name.tag for m in experiment.experiment.metric_infos}
        assert {"valid/true_expected_clicks", "test/true_expected_clicks"} <= declared
        assert declared <= set(acc.Tags()["scalars"])  # each declared metric has its value
        seen.append((hparams["agent"], hparams["seed"]))
    assert sorted(seen) == [("cosine", 0), ("cosine", 1), ("popularity", 0), ("popularity", 1)]


def test_rerunning_a_sweep_skips_finished_jobs_and_resumes_killed_ones(
    tiny_root: Path, tmp_path: Path
) -> None:
    args = ("agent=ppo", "seed=0,1", "total_timesteps=512", "eval.freq=256",
            "checkpoint_freq=256", *SMALL["ppo"])  # fmt: skip
    done = sweep_here(tmp_path, tiny_root, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    killed, finished = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    first = json.loads((killed / "metrics.json").read_text())
    (killed / "metrics.json").unlink()  # as if killed after its last checkpoint
    kept = (finished / "metrics.json").stat().st_mtime_ns
    again = sweep_here(tmp_path, tiny_root, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "killed in an earlier launch of this sweep; resuming" in (
        (killed / "train.log").read_text()
    )
    assert "finished by an earlier launch of this sweep; skipped" in (
        (finished / "train.log").read_text()
    )
    assert (finished / "metrics.json").stat().st_mtime_ns == kept
    second = json.loads((killed / "metrics.json").read_text())
    assert second["total_timesteps"] == first["total_timesteps"]
    # a sweep directory reused with other overrides is refused per job, never overwritten
    other = sweep_here(tmp_path, tiny_root, *args, "agent.hyperparams.n_epochs=3")
    assert other.returncode == 1 and "holds a run of another config (differs in agent)" in (
        other.stderr
    )
    assert (finished / "metrics.json").stat().st_mtime_ns == kept


@pytest.mark.slow
def test_optuna_search_maximises_the_valid_objective_and_resumes(tmp_path: Path) -> None:
    args = ("hparams_search=ppo_optuna", "total_timesteps=256", "eval.freq=256",
            "checkpoint_freq=100000", *SMALL["ppo"][:2])  # fmt: skip
    first = sweep(tmp_path, *args, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    again = sweep(tmp_path, *args, "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="ppo", storage=f"sqlite:///{tmp_path}/sweep/optuna.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3  # two, then one more in the same study
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3  # the resume tried anew
    objectives = sorted(
        json.loads(f.read_text())["valid_true_expected_clicks"]
        for f in (tmp_path / "sweep").glob("*/metrics.json")
    )
    assert sorted(t.value for t in trials) == pytest.approx(objectives)
    done = compare(tmp_path / "sweep", "group_by=[agent.hyperparams.learning_rate]")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "sweep" / "optuna_ppo_history.png").is_file()


def test_objective_is_checked_before_the_run() -> None:
    from omegaconf import OmegaConf

    from rankgym.experiments.sweeps import check_objective, objective_key

    check_objective(OmegaConf.create({"objective": "valid_ndcg@10"}))
    with pytest.raises(ValueError, match="objective='valid_true_expected_click'; allowed: auto"):
        check_objective(OmegaConf.create({"objective": "valid_true_expected_click"}))
    auto = OmegaConf.create({"objective": "auto"})
    truth = {"valid_expected_clicks": 1.0, "valid_true_expected_clicks": 0.9}
    assert objective_key(auto, truth) == "valid_true_expected_clicks"
    no_truth = {"valid_expected_clicks": 1.0, "valid_true_expected_clicks": None}
    assert objective_key(auto, no_truth) == "valid_expected_clicks"
