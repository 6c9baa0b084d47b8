"""Benchmarks, measured side by side in one process on the same input.

Usage::

    rankgym bench data [--scales 1 10] [--repeats 5] [--json out.json]
    rankgym bench encoders [--texts 4000] [--repeats 3] [--batch-size 64]
    rankgym bench env [--num-envs 1024] [--steps 200]
    rankgym bench train [--slates 20000] [--agents ppo dqn] [--repeats 3]
    rankgym bench serve [--run outputs/train/RUN] [--requests 200]
    rankgym bench sweep [--jobs 4] [--timesteps 30000]
    rankgym bench simulator [--requests 1024] [--repeats 5]
    rankgym bench workload [--slates 20000] [--fit-epochs 2] [--env-steps 200]
    rankgym bench threads [--settings auto 1 all ...] [--loads 0 1] [--repeats 2]

Every benchmark takes ``--load N`` (N processes that each keep a core busy run beside it, and are
stopped afterwards) and ``--threads auto|all|N`` (torch's threads: rankgym's policy, the default;
one per core; or N), and ``--json out.json`` to also write its results.

``data``: synthetic generation throughput (impressions/s, including validation and encoding) at
each scale, then, on the files written at the largest scale, ``SessionLog.read`` (read + validate
+ integer-encode) against a plain ``pandas.read_parquet`` of the same three files, and against
``pyarrow.parquet.read_table`` as the floor. Times are medians over ``--repeats``; ratios come from
the same run on the same machine, which is what to compare across machines. Last, the logger's
item-position propensities for the default world's 10,510 requests (6-12 items each): the exact
subset DP against the 200-draw Monte Carlo estimate it replaced, time and the estimate's error.

``encoders``: on the synthetic world's item titles and queries, texts/s of ``TransformerEncoder``
against ``SentenceTransformer.encode`` (same model, batch size, device; alternating order, each
repeat timed back to back); the first encode of the corpus through a fresh ``EmbeddingStore``
against a second one (a new store object on the same directory, as a later run would see it);
``HashingEncoder`` texts/s.

``env``: on the default synthetic world (hashing encoder, d=384; ground-truth clicks; K=20,
slate 10; random actions): single-env steps/s; ``DummyVecEnv`` over B single envs against the
batched env, per step; batched slot-steps/s in ``ids`` and ``embeddings`` modes (with and
without per-request infos); bytes per stored transition in each observation mode.

``train``: SB3 agents (``conf/agent/<name>.yaml`` settings, ``ids`` observations; by default
``ppo`` and ``dqn``) training on the batched env over the default world's
training sessions (hashing encoder), one after the other in one process: slates per second
(requests fully ranked and learned from, so slot-by-slot and whole-slate agents compare fairly),
timesteps per second (timesteps / wall time, not SB3's ``time/fps``), the share of the wall time
inside the env (``reset``/``step`` timed around the env's own methods), and with ``--profile``
the top functions by own time.
``--repeats`` runs the agents in rounds (reversed every other round) and reports medians.

``serve``: a PPO policy (``--run``'s, or one trained for ``--timesteps`` on the default
experiment, MiniLM embeddings) exported to a ranker: the scorer alone in onnxruntime against the
same torch graph (20 and 1,000 candidates, at 1 position and at every slate position); whole
``Ranker.rank`` calls against the same ranker scoring with torch and encoding new item texts
with ``TransformerEncoder`` (20 and 1,000 known candidates; 20 new texts); ``Ranker`` import +
load in a fresh interpreter (and importing torch, SB3 and transformers, for reference); the
HTTP service from a local keep-alive client: p50/p99 latency of ``/rank`` with 20 candidates,
requests/s with one and four clients.

``sweep``: the wall time of one sweep of ``--jobs`` PPO runs (hashing encoder, the dataset and
embeddings prepared first) with the basic launcher (one job at a time, torch on every core),
the joblib launcher with each job's torch threads set to the cores shared among the parallel
jobs (``torch_threads=null``), and joblib with 2 threads per job (oversubscribed on 2 cores).

``workload``: the work torch's threads set the speed of, in one process: PPO and DQN training
(slates/s), one member of the default neural click model fitted (impressions/s), the batched env
(slot-steps/s), and how ``rankgym.threads`` set the count. ``threads``: the workload in a fresh
process per thread setting (``--settings``: ``auto``, ``1``, ``all``, and ``all`` with the
OpenMP wait policies ``all-passive`` and ``all-spin2000``), idle and beside each of ``--loads``
busy processes, with each figure's ratio to idle ``all`` (torch's own default).

``simulator``: the default neural click model (``conf/reward/neural.yaml``: 5 members, profile,
item statistics; fitted for one epoch, since serving speed does not depend on the fit) on the
default world: candidates scored per second by ``NeuralClickModel.attractiveness`` (the stacked
ensemble) against the member-by-member forward it replaced, on the same ``--requests`` requests x
20 candidates with a 20-item history, and the batched env's slot-steps/s in ``ids`` mode with the
neural reward served each way, beside the truth's; and the time to fit one member for two
epochs with the first layer split into its per-request and per-candidate parts against the
first layer on the concatenated input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from rankgym import threads
from rankgym.logs import SessionLog
from rankgym.logs.synthetic import SyntheticWorld

FILES = ("impressions.parquet", "items.parquet", "users.parquet")


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_data(scales: list[float], repeats: int) -> dict[str, Any]:
    """Generation throughput per scale, then read paths compared on the largest world."""
    results: dict[str, Any] = {"generation": [], "read": {}}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "world"
        for scale in scales:
            start = time.perf_counter()
            log = SyntheticWorld(scale=scale).write(out)
            seconds = time.perf_counter() - start
            results["generation"].append(
                {
                    "scale": scale,
                    "impressions": log.n_impressions,
                    "seconds": round(seconds, 3),
                    "impressions_per_s": round(log.n_impressions / seconds),
                }
            )
            print(f"generate scale={scale}: {log.n_impressions:,} impressions in {seconds:.2f}s")
        n = log.n_impressions

        def pandas_read() -> None:
            for name in FILES:
                pd.read_parquet(out / name)

        def arrow_read() -> None:
            for name in FILES:
                pq.read_table(out / name)

        timings = {
            "SessionLog.read": median_time(lambda: SessionLog.read(out), repeats),
            "pandas.read_parquet": median_time(pandas_read, repeats),
            "pyarrow.read_table": median_time(arrow_read, repeats),
        }
        base = timings["pandas.read_parquet"]
        results["read"] = {
            "impressions": n,
            "repeats": repeats,
            **{
                k: {
                    "seconds": round(v, 4),
                    "impressions_per_s": round(n / v),
                    "time_vs_pandas": round(v / base, 2),
                }
                for k, v in timings.items()
            },
        }
        # what the extra time buys: a batch of sessions is array indexing, not a groupby
        log = SessionLog.read(out)
        frame = pd.read_parquet(out / "impressions.parquet")
        pick = np.random.default_rng(0).choice(log.n_sessions, 256, replace=False)
        ids = set(log.session_ids[pick])
        results["batch_of_256_sessions"] = {
            "SessionLog.select_sessions_s": round(
                median_time(lambda: log.select_sessions(pick), repeats), 5
            ),
            "pandas_isin_groupby_s": round(
                median_time(
                    lambda: [g for _, g in frame[frame.session_id.isin(ids)].groupby("request_id")],
                    repeats,
                ),
                5,
            ),
        }
    results["propensities"] = bench_propensities(repeats)
    return results


def bench_propensities(repeats: int, n_requests: int = 10_510, draws: int = 200) -> dict[str, Any]:
    """Exact Plackett-Luce item-position marginals vs a Monte Carlo estimate, same requests."""
    from rankgym.logs.plackett_luce import _monte_carlo, position_marginals

    rng = np.random.default_rng(0)
    lengths = rng.integers(6, 13, n_requests)
    slot = np.arange(12)
    logits = np.where(slot < lengths[:, None], rng.normal(size=(n_requests, 12)) * 1.5, 0.0)
    exact = position_marginals(logits, lengths)

    def monte_carlo() -> np.ndarray:
        out = np.zeros_like(exact)
        for n in np.unique(lengths):
            rows = np.flatnonzero(lengths == n)
            out[np.ix_(rows, range(n), range(n))] = _monte_carlo(logits[rows, :n], draws, rng)
        return out

    estimate = monte_carlo()
    inside = slot[None, :] < lengths[:, None]
    real = inside[:, :, None] & inside[:, None, :]  # (item, position) pairs of each request
    error = np.abs(estimate - exact)[real]
    t_exact = median_time(lambda: position_marginals(logits, lengths), repeats)
    t_mc = median_time(monte_carlo, repeats)
    return {
        "requests": n_requests,
        "exact_s": round(t_exact, 3),
        f"monte_carlo_{draws}_s": round(t_mc, 3),
        "time_exact_vs_monte_carlo": round(t_exact / t_mc, 3),
        "monte_carlo_mean_abs_error": round(float(error.mean()), 4),
        "monte_carlo_max_abs_error": round(float(error.max()), 4),
        "mean_propensity": round(float(exact[real].mean()), 4),
    }


def bench_encoders(n_texts: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """Ours vs sentence-transformers, the store's second pass, and the hashing encoder."""
    from sentence_transformers import SentenceTransformer

    from rankgym.encoders.hashing import HashingEncoder
    from rankgym.encoders.store import EmbeddingStore
    from rankgym.encoders.transformer import TransformerEncoder

    log, _ = SyntheticWorld().generate()
    corpus = list(log.item_texts) + list(log.query_texts[log.query_texts != ""])
    texts = corpus[:n_texts]
    ours = TransformerEncoder(batch_size=batch_size, progress=False)
    theirs = SentenceTransformer(str(ours.path), device=str(ours.device))
    warm = texts[:256]
    ours.encode(warm)
    theirs.encode(warm, batch_size=batch_size, normalize_embeddings=True)
    rounds = []
    for r in range(repeats):  # alternate who goes first, so drift hits both alike
        pair = {}
        for who in ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours"):
            start = time.perf_counter()
            if who == "ours":
                ours.encode(texts)
            else:
                theirs.encode(texts, batch_size=batch_size, normalize_embeddings=True)
            pair[who] = time.perf_counter() - start
        rounds.append(pair)
        print(f"round {r}: ours {n_texts / pair['ours']:.0f}/s, "
              f"sentence-transformers {n_texts / pair['theirs']:.0f}/s")  # fmt: skip
    ratios = [p["theirs"] / p["ours"] for p in rounds]
    results: dict[str, Any] = {
        "texts": len(texts),
        "model": "all-MiniLM-L6-v2",
        "device": str(ours.device),
        "batch_size": batch_size,
        "torch_threads": torch_threads(),
        "transformer_vs_sentence_transformers": {
            "ours_texts_per_s": round(statistics.median(len(texts) / p["ours"] for p in rounds)),
            "theirs_texts_per_s": round(
                statistics.median(len(texts) / p["theirs"] for p in rounds)
            ),
            "speedup_per_round": [round(x, 3) for x in ratios],
            "speedup_median": round(statistics.median(ratios), 3),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        EmbeddingStore(tmp).embed(texts, ours, progress=False)
        first = time.perf_counter() - start
        second = median_time(lambda: EmbeddingStore(tmp).embed(texts, ours), repeats)
    results["store"] = {
        "first_encode_s": round(first, 3),
        "second_encode_s": round(second, 5),
        "speedup": round(first / second, 1),
    }
    hashing = HashingEncoder()
    seconds = median_time(lambda: HashingEncoder().encode(corpus), repeats)  # cold word cache
    warm_seconds = median_time(lambda: hashing.encode(corpus), repeats)
    results["hashing"] = {
        "texts": len(corpus),
        "cold_texts_per_s": round(len(corpus) / seconds),
        "warm_texts_per_s": round(len(corpus) / warm_seconds),
    }
    return results


def bench_env(num_envs: int, steps: int) -> dict[str, Any]:
    """Single env, DummyVecEnv and the batched env on the same world and random actions."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rankgym.envs.click_models.simple import TruthClickModel
    from rankgym.envs.replay import ReplayConfig
    from rankgym.envs.session_replay import SessionReplayEnv, synthetic_world
    from rankgym.envs.vector import BatchedReplayEnv

    log, encoded, truth = synthetic_world(0, 1.0, "hashing")
    k = 20
    rng = np.random.default_rng(0)
    actions = rng.integers(0, k, (steps + 10, num_envs))

    def rate(env: Any, n: int, batch: int) -> float:
        env.seed(0)
        env.reset()
        for t in range(5):  # warm-up
            env.step(actions[t, :batch])
        start = time.perf_counter()
        for t in range(n):
            env.step(actions[5 + t % steps, :batch])
        return (time.perf_counter() - start) / n  # seconds per vectorised step

    results: dict[str, Any] = {"num_envs": num_envs, "K": k, "d": encoded.dim, "slate_size": 10}
    single = SessionReplayEnv(log, encoded, TruthClickModel(truth=truth))
    single.reset(seed=0)
    start = time.perf_counter()
    for t in range(2000):
        _, _, terminated, _, _ = single.step(int(actions[t % steps, 0]))
        if terminated:
            single.reset()
    results["single_env_steps_per_s"] = round(2000 / (time.perf_counter() - start))

    for mode in ("embeddings", "ids"):
        cfg = ReplayConfig(obs_mode=mode, max_candidates=k)
        dummy = DummyVecEnv(
            [lambda cfg=cfg: SessionReplayEnv(log, encoded, TruthClickModel(truth=truth), cfg)]
            * num_envs
        )
        dummy_s = rate(dummy, max(3, steps // 20), num_envs)
        row: dict[str, Any] = {"dummy_vec_env_ms_per_step": round(dummy_s * 1e3, 2)}
        for infos in (True, False):
            batched = BatchedReplayEnv(
                log, encoded, TruthClickModel(truth=truth), cfg, num_envs=num_envs,
                device="cpu", request_infos=infos,
            )  # fmt: skip
            seconds = rate(batched, steps, num_envs)
            tag = "with_infos" if infos else "no_infos"
            row[f"batched_{tag}_ms_per_step"] = round(seconds * 1e3, 3)
            row[f"batched_{tag}_slot_steps_per_s"] = round(num_envs / seconds)
            row[f"speedup_vs_dummy_{tag}"] = round(dummy_s / seconds, 1)
        space = batched.observation_space
        obs_bytes = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in space.spaces.values())
        row["bytes_per_observation"] = obs_bytes
        # an SB3 DQN transition stores obs and next_obs, a Discrete action (int64), reward, done
        row["bytes_per_dqn_transition"] = 2 * obs_bytes + 8 + 4 + 4
        row["dqn_buffer_1M_transitions_GB"] = round(1e6 * row["bytes_per_dqn_transition"] / 1e9, 2)
        results[mode] = row
        print(f"{mode}: {row}")
    return results


def bench_train(
    timesteps: int, slates: int | None, agents: list[str], profile: bool, repeats: int = 1
) -> dict[str, Any]:
    """Training throughput of SB3 agents side by side, and where their time goes.

    Each agent trains for ``slates`` requests when given (a slot agent takes about
    ``slate_size`` steps per request, a slate agent one), else for ``timesteps`` env steps.
    With ``repeats`` > 1 the agents run in ``repeats`` rounds, in reverse order every other
    round (so that drift hits them alike); each figure is then the median over the rounds,
    the ratio that of the medians, and ``runs`` lists every round's figures.
    """
    from rankgym.envs.session_replay import synthetic_world

    log, encoded, truth = synthetic_world(0, 1.0, "hashing")
    train, _ = log.split(0.2, seed=0)
    results: dict[str, Any] = {"timesteps": timesteps, "slates": slates, "repeats": repeats,
                               "torch_threads": torch_threads()}  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in agents}
    for r in range(repeats):
        for name in agents if r % 2 == 0 else agents[::-1]:
            runs[name].append(_train_once(name, train, encoded, truth, timesteps, slates, profile))
            if repeats > 1:
                print(f"{name} (round {r + 1}): {runs[name][-1]}")
    for name in agents:
        summary = dict(runs[name][-1])
        for key in ("seconds", "slates_per_s", "timesteps_per_s", "env_seconds", "env_share"):
            summary[key] = statistics.median(run[key] for run in runs[name])
        if repeats > 1:
            summary["runs"] = [{k: v for k, v in run.items() if k != "profile"}
                               for run in runs[name]]  # fmt: skip
        results[name] = summary
    for name in agents:
        print(f"{name}: {results[name]}")
    return results


def _train_once(
    name: str, train: Any, encoded: Any, truth: Any, timesteps: int, slates: int | None,
    profile: bool,
) -> dict[str, Any]:  # fmt: skip
    """One agent's training run for :func:`bench_train`: its throughput (and profile)."""
    import cProfile
    import io
    import pstats

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rankgym.envs.click_models.simple import TruthClickModel
    from rankgym.envs.replay import ReplayConfig
    from rankgym.envs.vector import BatchedReplayEnv

    conf = Path(__file__).resolve().parents[1] / "conf"
    agent = instantiate(OmegaConf.load(conf / "agent" / f"{name}.yaml"))
    # the default env options (conf/env/default.yaml), with the agent's action mode
    env = instantiate(OmegaConf.load(conf / "env" / "default.yaml"), action_mode=agent.action_mode)
    assert isinstance(env, ReplayConfig)
    venv = BatchedReplayEnv(
        train, encoded, TruthClickModel(truth=truth), env,
        num_envs=agent.num_envs, device="cpu", request_infos=False,
    )  # fmt: skip
    in_env, ranked = [0.0], [0]
    for method in ("reset", "step_async", "step_wait"):
        original = getattr(venv, method)

        def timed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                in_env[0] += time.perf_counter() - start

        setattr(venv, method, timed)
    wait = venv.step_wait

    def counted() -> Any:
        out = wait()
        ranked[0] += int((venv.engine.pos == 0).sum())  # rows that just started a request
        return out

    venv.step_wait = counted
    venv.seed(0)
    model = agent.build(venv, 0, "cpu")
    steps = timesteps if slates is None else slates * (1 if agent.slate else env.slate_size)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    agent.learn(model, steps)
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - start
    result: dict[str, Any] = {
        "algorithm": agent.algorithm,
        "num_envs": agent.num_envs,
        "timesteps": model.num_timesteps,
        "slates": ranked[0],
        "seconds": round(wall, 2),
        "slates_per_s": round(ranked[0] / wall),
        "timesteps_per_s": round(model.num_timesteps / wall),
        "env_seconds": round(in_env[0], 3),
        "env_share": round(in_env[0] / wall, 4),
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        result["profile"] = _profile_rows(text.getvalue(), wall)
    return result


def _profile_rows(text: str, wall: float) -> list[str]:
    """``share of wall time  function`` lines from a pstats listing (own time)."""
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[1].replace(".", "", 1).isdigit():
            rows.append(f"{float(parts[1]) / wall:6.1%}  {parts[5]}")
    return rows


class _TorchSession:
    """An onnxruntime-like ``run`` over the torch graph the ONNX file was exported from, so a
    :class:`~rankgym.agents.ranker.Ranker` can be timed with torch in place of onnxruntime."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        from rankgym.agents.ranker import SCORER_INPUTS

        with torch.inference_mode():
            result = self.graph(*(torch.from_numpy(feeds[n]) for n in SCORER_INPUTS))
        return [t.numpy() for t in result]


def _serve_requests(
    item_ids: list[str], texts: list[str], queries: list[str], n: int, size: int, new: int,
    seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """``n`` requests of ``size`` candidates (``new`` of them unknown items with a text)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        picks = rng.choice(len(item_ids), size=size + 10, replace=False)
        known = [item_ids[i] for i in picks[new:size]]
        fresh = [{"item_id": f"new-{r}-{j}", "text": f"{texts[i]} v{r}"}
                 for j, i in enumerate(picks[:new])]  # fmt: skip
        out.append({"query": queries[rng.integers(len(queries))],
                    "user_history": [item_ids[i] for i in picks[size:]],
                    "candidates": known + fresh})  # fmt: skip
    return out


def _ranker_policy(run: Path | None, timesteps: int, work: Path) -> tuple[Any, Any, Any, Path]:
    """A trained PPO (the run's, or one trained now on the default experiment), its setup, the
    run's encoder, and its export under ``work``."""
    from rankgym.experiments.runs import export_policy, instantiate, load_run_policy, setup

    if run is not None:
        cfg, s, policy = load_run_policy(run)
    else:
        from hydra import compose, initialize_config_dir

        from rankgym.agents.baselines import SB3Policy

        with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), None):
            cfg = compose("config")
        s = setup(cfg)
        agent = instantiate(cfg.agent, "agent ppo")
        from rankgym.envs.vector import BatchedReplayEnv

        venv = BatchedReplayEnv(s.train, s.encoded, s.reward, s.env, num_envs=agent.num_envs,
                                device="cpu", request_infos=False)  # fmt: skip
        venv.seed(0)
        model = agent.build(venv, 0, "cpu")
        model.learn(timesteps)
        policy = SB3Policy(model, "ids", agent.name)
        run = work / "run"
        run.mkdir()
    out = export_policy(cfg, policy, s, run, work / "ranker")
    return policy, s, instantiate(cfg.encoder, "encoder"), out


def bench_serve(requests: int, run: Path | None, timesteps: int, http_requests: int) -> dict:
    """Ranker (onnxruntime) against the torch policy on the same requests, and the HTTP API."""
    import subprocess
    import sys

    import torch

    from rankgym.agents.export import _PolicyGraph, policy_scorer
    from rankgym.agents.ranker import Ranker

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    policy, s, encoder, out = _ranker_policy(run, timesteps, work)
    ranker = Ranker.load(out)
    twin = Ranker.load(out)  # the same ranker with torch scoring and the torch encoder
    twin.session = _TorchSession(_PolicyGraph(policy_scorer(policy)).eval())
    twin.encoder = encoder.encode
    ids = [str(i) for i in s.data.item_ids]
    texts, queries = [str(t) for t in s.data.item_texts], [str(q) for q in s.data.query_texts]
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                               "encoder": ranker.manifest["encoder"]["name"]}  # fmt: skip
    # scoring alone: one request of N candidates at 1 position, then at the slate's positions
    for size in (20, 1000):
        req = _serve_requests(ids, texts, queries, 1, size, 0)
        batch = ranker._prepare(req)
        for positions in (1, ranker.slate_size):
            feeds = {**batch.inputs, "positions": np.arange(positions, dtype=np.int64)}
            repeats = 300 if size == 20 else 60
            onnx = median_time(lambda f=feeds: ranker.session.run(None, f), repeats)
            eager = median_time(lambda f=feeds: twin.session.run(None, f), repeats)
            row = {"onnx_ms": round(onnx * 1e3, 3), "torch_ms": round(eager * 1e3, 3),
                   "torch_over_onnx": round(eager / onnx, 2)}  # fmt: skip
            results[f"score_{size}_candidates_{positions}_positions"] = row
            print(f"score {size} candidates x {positions} positions: {row}")
    # whole rank() calls: known candidates, and 20 new item texts to encode
    for size, new in ((20, 0), (1000, 0), (20, 20)):
        reqs = _serve_requests(ids, texts, queries, requests, size, new, seed=size + new)
        timing = {}
        for name, r in (("ranker", ranker), ("torch", twin)):
            r.rank_batch(reqs[:3])
            start = time.perf_counter()
            for q in reqs:
                r.rank_batch([q])
            timing[name] = (time.perf_counter() - start) / len(reqs)
        row = {"ranker_ms": round(timing["ranker"] * 1e3, 3),
               "torch_ms": round(timing["torch"] * 1e3, 3),
               "torch_over_ranker": round(timing["torch"] / timing["ranker"], 2)}  # fmt: skip
        results[f"rank_{size}_candidates_{new}_new"] = row
        print(f"rank() {size} candidates, {new} new: {row}")
    # import + load in a fresh interpreter, against importing the training stack
    probe = ("import time; t = time.perf_counter(); {code}; "
             "print(time.perf_counter() - t)")  # fmt: skip
    codes = {
        "ranker_import_load_s": (
            f"from rankgym.agents.ranker import Ranker; Ranker.load({str(out)!r})"
        ),
        "torch_sb3_transformers_import_s": "import torch, stable_baselines3, transformers",
    }
    root = Path(__file__).resolve().parents[1]
    for key, code in codes.items():
        times = [float(subprocess.run([sys.executable, "-c", probe.format(code=code)], cwd=root,
                                      capture_output=True, text=True, check=True).stdout)
                 for _ in range(3)]  # fmt: skip
        results[key] = round(statistics.median(times), 3)
        print(f"{key}: {results[key]}")
    results["http"] = _bench_http(out, ids, texts, queries, http_requests, root)
    return results


def _bench_http(
    out: Path, ids: list[str], texts: list[str], queries: list[str], n: int, root: Path
) -> dict[str, Any]:
    """``/rank`` with 20 known candidates from a local keep-alive client: latency, requests/s."""
    import http.client
    import socket
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "rankgym.experiments.serve", f"ranker={out}", f"port={port}",
         "log_level=warning", f"hydra.run.dir={out.parent / 'serve'}"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    bodies = [json.dumps(r).encode() for r in _serve_requests(ids, texts, queries, n, 20, 0, 7)]
    headers = {"content-type": "application/json"}
    try:
        deadline = time.time() + 120
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                probe.request("GET", "/health")
                probe.getresponse().read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

        def client(chunk: list[bytes]) -> list[float]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            latencies = []
            for body in chunk:
                start = time.perf_counter()
                conn.request("POST", "/rank", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                latencies.append(time.perf_counter() - start)
                assert response.status == 200, response.status
            return latencies

        client(bodies[:20])  # warm-up
        start = time.perf_counter()
        latencies = np.array(client(bodies))
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(client, [bodies[i::4] for i in range(4)]))
        parallel = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    row = {
        "requests": n, "candidates": 20,
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 2),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 2),
        "requests_per_s_1_client": round(n / sequential),
        "requests_per_s_4_clients": round(n / parallel),
    }  # fmt: skip
    print(f"http /rank: {row}")
    return row


def bench_sweep(jobs: int, timesteps: int) -> dict[str, Any]:
    """Wall time of one sweep of ``jobs`` PPO runs under each launcher setting, same jobs."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    settings = {
        "basic (one job at a time, all cores)": [],
        "joblib, torch_threads=null (cores shared)": ["hydra/launcher=joblib"],
        "joblib, torch_threads=2 (oversubscribed)": ["hydra/launcher=joblib", "torch_threads=2"],
    }
    common = [f"paths.root_dir={work}", f"out={work}/data", "encoder=hashing", "agent=ppo",
              f"total_timesteps={timesteps}", f"eval.freq={timesteps}", "eval.sessions=100",
              "eval.final_sessions=300", "eval.fidelity=false",
              "seed=" + ",".join(str(i) for i in range(jobs))]  # fmt: skip
    # the dataset and its embeddings first, so every setting times the jobs alone
    warm = [*common[:3], "agent=cosine", f"hydra.run.dir={work}/warm"]
    subprocess.run([sys.executable, "-m", "rankgym.experiments.train", *warm], cwd=root, check=True,
                   capture_output=True)  # fmt: skip
    results: dict[str, Any] = {"jobs": jobs, "timesteps": timesteps, "cpus": os.cpu_count()}
    for n, (name, extra) in enumerate(settings.items()):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rankgym.experiments.train", "-m", *common, *extra,
                        f"hydra.sweep.dir={work}/sweep{n}"], cwd=root, check=True,
                       capture_output=True)  # fmt: skip
        wall = time.perf_counter() - start
        threads = {json.loads(f.read_text())["torch_threads"]
                   for f in (work / f"sweep{n}").glob("*/metrics.json")}  # fmt: skip
        results[name] = {"seconds": round(wall, 1), "torch_threads_per_job": sorted(threads)}
        print(f"{name}: {results[name]}")
    base = results["basic (one job at a time, all cores)"]["seconds"]
    for name in settings:
        results[name]["speedup_vs_basic"] = round(base / results[name]["seconds"], 2)
    return results


def _concatenated_forward(self: Any, q: Any, u: Any, i: Any, codes: Any, p: Any = None) -> Any:
    """``Scorer.forward`` before this benchmark's change (the reference): the first layer on
    ``[q, u, i, q*i, u*i, p, p*i(, q.i, u.i, p.i)]`` with the request's inputs repeated for
    every candidate."""
    import torch

    q, u = (x[:, None, :].expand_as(i) for x in (q, u))
    inputs = [q, u, i, q * i, u * i]
    if p is not None:
        p = p[:, None, :].expand_as(i)
        inputs += [p, p * i]
    if self.match:  # the dot products (NeuralClickModel's ``match``)
        inputs += [(x * i).sum(-1, keepdim=True) for x in ([q, u] if p is None else [q, u, p])]
    logit = self.mlp(torch.cat(inputs, -1)).squeeze(-1)
    if self.item_bias is not None:
        logit = logit + self.item_bias(codes).squeeze(-1)
    return logit + self.shift


def _members_one_by_one(
    model: Any, context: Any, requests: np.ndarray, items: np.ndarray, history: Any = None
) -> np.ndarray:
    """The neural model's serving pass before this benchmark's change (the reference): each
    member's :func:`_concatenated_forward` in turn, the mean of their sigmoids."""
    import torch

    q, u, p, i, codes, valid = model.serving_inputs(context, requests, items, history)
    rows = max(1, 65536 // valid.shape[1])
    out = np.empty(valid.shape, dtype=np.float64)
    with torch.no_grad():
        for s in range(0, len(valid), rows):
            part = slice(s, s + rows)
            pb = None if p is None else p[part]
            probs = [
                torch.sigmoid(_concatenated_forward(m, q[part], u[part], i[part], codes[part], pb))
                for m in model.modules
            ]
            out[part] = torch.stack(probs).mean(0).double().numpy()
    return np.where(valid, out, 0.0)


def bench_simulator(n_requests: int, repeats: int, env_steps: int = 100) -> dict[str, Any]:
    """The neural click model's serving pass, stacked against member by member; the env."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rankgym.envs.click_models.simple import TruthClickModel
    from rankgym.envs.replay import ReplayConfig
    from rankgym.envs.session_replay import synthetic_world
    from rankgym.envs.vector import BatchedReplayEnv

    log, encoded, truth = synthetic_world(0, 1.0, "hashing")
    node = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/reward/neural.yaml")
    node.update({"epochs": 1, "structure": "pbm"})  # a fit's quality does not change its speed
    model = instantiate(node)
    cfg = ReplayConfig(obs_mode="ids", max_candidates=20)
    model.fit(log, encoded=encoded, pooling=cfg.user_pooling)
    context = model.context(log)
    rng = np.random.default_rng(0)
    requests = rng.integers(0, log.n_requests, n_requests)
    items = rng.integers(0, log.n_items, (n_requests, 20))
    items[:, -2:] = -1  # padding slots, as short candidate sets have
    history = rng.integers(0, log.n_items, (n_requests, 20))
    stacked = model.attractiveness(context, requests, items, history)
    reference = _members_one_by_one(model, context, requests, items, history)
    results: dict[str, Any] = {
        "requests": n_requests, "candidates": 20, "members": len(model.modules),
        "max_abs_difference": float(np.abs(stacked - reference).max()),
    }  # fmt: skip
    passes = {
        "stacked": lambda: model.attractiveness(context, requests, items, history),
        "one_by_one": lambda: _members_one_by_one(model, context, requests, items, history),
    }
    times: dict[str, list[float]] = {name: [] for name in passes}
    for r in range(repeats):  # alternating order, back to back
        for name in list(passes) if r % 2 == 0 else list(passes)[::-1]:
            start = time.perf_counter()
            passes[name]()
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        results[f"{name}_candidates_per_s"] = round(n_requests * 20 / statistics.median(ts))
    results["speedup"] = round(
        statistics.median(times["one_by_one"]) / statistics.median(times["stacked"]), 2
    )

    # fitting: one member, 2 epochs, the split first layer against the concatenated one
    from rankgym.envs.click_models.neural import network

    fit_times: dict[str, list[float]] = {"split": [], "concatenated": []}
    split_forward = network.Scorer.forward
    settings = {**node, "epochs": 2, "ensemble": 1, "calibrate": "none", "crossfit": False}
    for r in range(max(1, repeats // 2)):
        order = ("split", "concatenated") if r % 2 == 0 else ("concatenated", "split")
        for name in order:
            network.Scorer.forward = split_forward if name == "split" else _concatenated_forward
            try:
                start = time.perf_counter()
                instantiate(settings).fit(log, encoded=encoded, pooling=cfg.user_pooling)
                fit_times[name].append(time.perf_counter() - start)
            finally:
                network.Scorer.forward = split_forward
    for name, ts in fit_times.items():
        results[f"fit_{name}_s"] = round(statistics.median(ts), 2)
    results["fit_speedup"] = round(results["fit_concatenated_s"] / results["fit_split_s"], 2)

    def env_rate(reward: Any) -> float:
        env = BatchedReplayEnv(log, encoded, reward, cfg, num_envs=256, device="cpu")
        return slot_steps_per_s(env, rng.integers(0, 20, (env_steps, 256)))

    results["env_truth_slot_steps_per_s"] = round(env_rate(TruthClickModel(truth=truth)))
    results["env_neural_slot_steps_per_s"] = round(env_rate(model))
    model.attractiveness = lambda *a, **k: _members_one_by_one(model, *a, **k)  # the reference
    results["env_neural_one_by_one_slot_steps_per_s"] = round(env_rate(model))
    results["env_speedup"] = round(
        results["env_neural_slot_steps_per_s"] / results["env_neural_one_by_one_slot_steps_per_s"],
        2,
    )
    print(results)
    return results


def slot_steps_per_s(env: Any, actions: np.ndarray) -> float:
    """Slot-steps per second of a batched env (seeded 0, reset) stepping ``actions``
    (``[steps, num_envs]``), one row per step."""
    env.seed(0)
    env.reset()
    start = time.perf_counter()
    for row in actions:
        env.step(row)
    return actions.size / (time.perf_counter() - start)


@contextlib.contextmanager
def background_load(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` processes that each keep one core busy (a pure-Python spin loop, like another
    user's job) while the block runs; stopped and reaped afterwards, also on an error."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n)]  # fmt: skip
    try:
        if procs:
            time.sleep(0.5)  # running before the measurement starts
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def bench_workload(slates: int, fit_epochs: int, env_steps: int) -> dict[str, Any]:
    """The work torch's threads decide the speed of, in one process: PPO and DQN training
    (slates/s, :func:`bench_train`), one member of the default neural click model fitted for
    ``fit_epochs`` epochs (impressions/s), and the batched env (``ids``, 1,024 envs, random
    actions; slot-steps/s). Then how :mod:`rankgym.threads` set the count."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rankgym.envs.click_models.simple import TruthClickModel
    from rankgym.envs.replay import ReplayConfig
    from rankgym.envs.session_replay import synthetic_world
    from rankgym.envs.vector import BatchedReplayEnv

    trained = bench_train(0, slates, ["ppo", "dqn"], False)
    results: dict[str, Any] = {f"{a}_slates_per_s": trained[a]["slates_per_s"]
                               for a in ("ppo", "dqn")}  # fmt: skip
    log, encoded, truth = synthetic_world(0, 1.0, "hashing")
    node = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/reward/neural.yaml")
    node.update({"epochs": fit_epochs, "ensemble": 1, "structure": "pbm", "calibrate": "none",
                 "crossfit": False})  # fmt: skip
    cfg = ReplayConfig(obs_mode="ids", max_candidates=20)
    start = time.perf_counter()
    instantiate(node).fit(log, encoded=encoded, pooling=cfg.user_pooling)
    fit_seconds = time.perf_counter() - start
    results["fit_impressions_per_s"] = round(log.n_impressions * fit_epochs / fit_seconds)
    env = BatchedReplayEnv(log, encoded, TruthClickModel(truth=truth), cfg, num_envs=1024,
                           device="cpu", request_infos=False)  # fmt: skip
    actions = np.random.default_rng(0).integers(0, 20, (env_steps, 1024))
    results["env_slot_steps_per_s"] = round(slot_steps_per_s(env, actions))
    results.update(threads.report())
    print(results)
    return results


THREAD_SETTINGS = {  # bench threads: name -> (--threads, extra environment)
    "auto": ("auto", {}),
    "1": ("1", {}),
    "all": ("all", {}),
    "all-passive": ("all", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "all-spin2000": ("all", {"GOMP_SPINCOUNT": "2000"}),
}


def bench_threads(
    settings: list[str], loads: list[int], repeats: int, slates: int, fit_epochs: int,
    env_steps: int,
) -> dict[str, Any]:  # fmt: skip
    """:func:`bench_workload` in a fresh process per thread setting (``auto``: the default
    policy; ``1``; ``all``: one per core, torch's own default; ``all-passive``: the same with
    ``OMP_WAIT_POLICY=PASSIVE``, idle threads sleep at once; ``all-spin2000``: with
    ``GOMP_SPINCOUNT=2000``, they spin 2,000 rounds, not 300,000, first), idle and beside each
    of ``loads`` busy processes. Within each repeat the settings run back to back, in reverse
    order every other repeat; each figure is the median over the repeats, and each setting's
    ratio to idle ``all`` is reported."""
    results: dict[str, Any] = {"settings": settings, "loads": loads, "repeats": repeats,
                               "slates": slates, "fit_epochs": fit_epochs}  # fmt: skip
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    # each setting sets its own count: an OMP_NUM_THREADS of the caller's would override them
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for load in loads:
        with background_load(load):
            for r in range(repeats):
                for name in settings if r % 2 == 0 else settings[::-1]:
                    flag, extra = THREAD_SETTINGS[name]
                    with tempfile.TemporaryDirectory() as tmp:
                        out = Path(tmp) / "workload.json"
                        subprocess.run(
                            [sys.executable, "-m", "rankgym.experiments.bench", "workload",
                             "--threads", flag, "--slates", str(slates), "--fit-epochs",
                             str(fit_epochs), "--env-steps", str(env_steps), "--json", str(out)],
                            env={**environment, **extra}, check=True, stdout=subprocess.DEVNULL,
                        )  # fmt: skip
                        cells.setdefault((load, name), []).append(json.loads(out.read_text()))
                    print(f"load {load}, {name} (repeat {r + 1}): {cells[load, name][-1]}")
    metrics = ("ppo_slates_per_s", "dqn_slates_per_s", "fit_impressions_per_s",
               "env_slot_steps_per_s")  # fmt: skip
    base = {m: statistics.median(c[m] for c in cells[0, "all"]) for m in metrics} \
        if (0, "all") in cells else None  # fmt: skip
    for (load, name), runs in cells.items():
        row: dict[str, Any] = {m: statistics.median(run[m] for run in runs) for m in metrics}
        if base:
            row.update({f"{m}_vs_idle_all": round(row[m] / base[m], 3) for m in metrics})
        row["threads"] = [{k: v for k, v in run.items() if k.startswith("torch_thread")}
                          for run in runs]  # fmt: skip
        results[f"load {load}, {name}"] = row
    return results


def torch_threads() -> int:
    """Intra-op threads torch uses (the CPU encoders' parallelism)."""
    import torch

    return torch.get_num_threads()


def thread_count(value: str) -> str:
    """``--threads``: ``auto``, ``all`` or an int >= 1."""
    if value in ("auto", "all") or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}; allowed: auto, all, or an int >= 1")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run one benchmark."""
    parser = argparse.ArgumentParser(prog="rankgym bench", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)  # options of every benchmark
    common.add_argument(
        "--load", type=int, default=0, help="busy processes (a core each) beside the benchmark"
    )
    common.add_argument(
        "--threads", type=thread_count, default="auto",
        help="torch's threads: auto (rankgym's policy), all (one per core), or N",
    )  # fmt: skip
    common.add_argument("--json", type=Path, default=None, help="also write the results here")
    sub = parser.add_subparsers(dest="what", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    data = command("data", "synthetic generation and SessionLog.read vs pandas")
    data.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    data.add_argument("--repeats", type=int, default=5)
    enc = command("encoders", "TransformerEncoder vs sentence-transformers, store")
    enc.add_argument("--texts", type=int, default=4000)
    enc.add_argument("--repeats", type=int, default=3)
    enc.add_argument("--batch-size", type=int, default=64)
    env = command("env", "single env, DummyVecEnv and the batched env")
    env.add_argument("--num-envs", type=int, default=1024)
    env.add_argument("--steps", type=int, default=200)
    sv = command("serve", "exported Ranker vs the torch policy; the HTTP service")
    sv.add_argument("--run", type=Path, default=None, help="a PPO/A2C/DQN run directory")
    sv.add_argument("--timesteps", type=int, default=8192, help="PPO steps when no --run")
    sv.add_argument("--requests", type=int, default=200)
    sv.add_argument("--http-requests", type=int, default=1000)
    sw = command("sweep", "one PPO sweep: basic vs joblib launcher, thread sharing")
    sw.add_argument("--jobs", type=int, default=4)
    sw.add_argument("--timesteps", type=int, default=30000)
    tr = command("train", "PPO / DQN training throughput and time in the env")
    tr.add_argument("--timesteps", type=int, default=40000, help="env steps per agent")
    tr.add_argument("--slates", type=int, default=None, help="requests per agent (not steps)")
    tr.add_argument("--agents", nargs="+", default=["ppo", "dqn"])
    tr.add_argument("--profile", action="store_true", help="cProfile each agent's training")
    tr.add_argument("--repeats", type=int, default=1,
                    help="rounds of all agents (reversed every other round); medians")  # fmt: skip
    sim = command("simulator", "the neural click model's serving pass; its env")
    sim.add_argument("--requests", type=int, default=1024)
    sim.add_argument("--repeats", type=int, default=5)
    workloads = (("workload", "PPO, DQN, the neural fit and the env in one process"),
                 ("threads", "the workload per thread setting, idle and loaded"))  # fmt: skip
    for name, help in workloads:
        wl = command(name, help)
        wl.add_argument("--slates", type=int, default=20000, help="requests per agent")
        wl.add_argument("--fit-epochs", type=int, default=2)
        wl.add_argument("--env-steps", type=int, default=200)
    th = sub.choices["threads"]
    th.add_argument("--settings", nargs="+", default=list(THREAD_SETTINGS),
                    choices=list(THREAD_SETTINGS))  # fmt: skip
    th.add_argument("--loads", type=int, nargs="+", default=[0, 1])
    th.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.load < 0 or min(getattr(args, "loads", [0])) < 0:
        parser.error("--load and --loads must be >= 0")
    if args.threads == "auto":
        threads.configure()
    else:
        threads.configure(threads.usable_cores() if args.threads == "all" else int(args.threads))
    machine = {
        "benchmark": args.what,
        "machine": f"{platform.machine()}, {platform.python_version()}, {os.cpu_count()} cpus",
        "load": args.load,
        "threads": args.threads,
    }
    with background_load(args.load):
        results = {**machine, **run_benchmark(parser, args)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


def run_benchmark(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark ``args.what`` with its checked arguments."""
    if args.what == "data":
        if any(s <= 0 for s in args.scales):
            parser.error(f"--scales must be > 0, got {args.scales}")
        return bench_data(args.scales, args.repeats)
    if args.what == "train":
        if args.timesteps < 1 or (args.slates is not None and args.slates < 1):
            parser.error("--timesteps and --slates must be >= 1")
        return bench_train(args.timesteps, args.slates, args.agents, args.profile, args.repeats)
    if args.what == "serve":
        if min(args.requests, args.http_requests, args.timesteps) < 1:
            parser.error("--requests, --http-requests and --timesteps must be >= 1")
        return bench_serve(args.requests, args.run, args.timesteps, args.http_requests)
    if args.what == "sweep":
        if args.jobs < 1 or args.timesteps < 1:
            parser.error("--jobs and --timesteps must be >= 1")
        return bench_sweep(args.jobs, args.timesteps)
    if args.what == "simulator":
        if args.requests < 1:
            parser.error(f"--requests must be >= 1, got {args.requests}")
        return bench_simulator(args.requests, args.repeats)
    if args.what == "env":
        if args.num_envs < 1 or args.steps < 1:
            parser.error("--num-envs and --steps must be >= 1")
        return bench_env(args.num_envs, args.steps)
    if args.what in ("workload", "threads"):
        if min(args.slates, args.fit_epochs, args.env_steps) < 1:
            parser.error("--slates, --fit-epochs and --env-steps must be >= 1")
        if args.what == "workload":
            return bench_workload(args.slates, args.fit_epochs, args.env_steps)
        return bench_threads(args.settings, args.loads, args.repeats, args.slates,
                             args.fit_epochs, args.env_steps)  # fmt: skip
    if args.texts < 1 or args.batch_size < 1:
        parser.error("--texts and --batch-size must be >= 1")
    return bench_encoders(args.texts, args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
