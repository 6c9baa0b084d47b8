"""Checkpoints never run code when loaded: planted payloads are refused before unpickling."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rankgym.agents.checkpoint import (
    BestCheckpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from rankgym.agents.training import build_agent
from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.vector import BatchedReplayEnv
from tests.commands import SMALL, exits, train_tiny

SMALL_DQN = {"learning_starts": 32, "buffer_size": 2000, "batch_size": 16}


class Payload:
    """Unpickling this runs a shell command that creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture(scope="module")
def env_factory(small_world):
    log, truth = small_world
    encoded = encode_log(log, HashingEncoder(dim=16), progress=False)
    cfg = ReplayConfig(obs_mode="ids", max_candidates=12, slate_size=4)

    def make() -> BatchedReplayEnv:
        env = BatchedReplayEnv(log, encoded, TruthClickModel(truth=truth), cfg, num_envs=4)
        env.seed(0)
        return env

    return make


def fresh(env_factory, name: str = "dqn"):
    hyper = SMALL_DQN if name == "dqn" else {"n_steps": 8, "batch_size": 32}
    return build_agent(name, env_factory(), seed=0, device="cpu", hyperparams=hyper)


def test_a_payload_in_the_weights_never_runs(env_factory, tmp_path: Path) -> None:
    model = fresh(env_factory)
    model.learn(64)
    path = save_checkpoint(model, tmp_path, "dqn")
    target = tmp_path / "pwned"
    torch.save({"policy": Payload(target), "optimizer": {}}, path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights\.pt: not loadable as plain weights"):
        load_checkpoint(fresh(env_factory), path, "dqn")
    assert not target.exists()


def test_a_payload_in_the_replay_buffer_never_runs(env_factory, tmp_path: Path) -> None:
    model = fresh(env_factory)
    model.learn(64)
    path = save_checkpoint(model, tmp_path, "dqn")
    target = tmp_path / "pwned"
    with open(path / "replay.npz", "wb") as handle:  # an object array: pickled inside the npz
        np.savez(handle, actions=np.array([Payload(target)], dtype=object))
    with pytest.raises(CheckpointError, match=r"replay\.npz: not loadable as plain arrays"):
        load_checkpoint(fresh(env_factory), path, "dqn")
    assert not target.exists()


def test_foreign_or_mismatched_checkpoints_are_refused(env_factory, tmp_path: Path) -> None:
    model = fresh(env_factory, "ppo")
    path = save_checkpoint(model, tmp_path, "ppo")
    with pytest.raises(CheckpointError, match="a ppo checkpoint cannot resume agent.algorithm=dqn"):
        load_checkpoint(fresh(env_factory), path, "dqn")
    with pytest.raises(CheckpointError, match=r"state\.json: no checkpoint to resume from"):
        load_checkpoint(fresh(env_factory), tmp_path / "elsewhere", "dqn")
    # the same algorithm with another scorer: the error names the keys that do not fit
    wide = build_agent("dqn", env_factory(), 0, "cpu", SMALL_DQN, {"user_embedding": 4})
    wide_path = save_checkpoint(wide, tmp_path / "wide", "dqn")
    with pytest.raises(CheckpointError, match=r"Unexpected key.*user_vectors.*agent settings"):
        load_checkpoint(fresh(env_factory), wide_path, "dqn")
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a rankgym checkpoint state"):
        load_checkpoint(fresh(env_factory, "ppo"), path, "ppo")


def legacy_zip(path: Path, target: Path) -> None:
    """An SB3-style zip whose ``data`` holds a ``:serialized:`` payload."""
    blob = base64.b64encode(pickle.dumps(Payload(target))).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", json.dumps({"policy_class": {":serialized:": blob}}))


def test_resume_refuses_with_one_line_and_runs_nothing(
    tiny_root: Path, ppo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "pwned"
    legacy_zip(tmp_path / "run" / "checkpoints" / "last.zip", target)
    common = ["agent=ppo", "total_timesteps=128", *SMALL["ppo"]]
    code, err = exits(capsys, lambda: train_tiny(tiny_root, tmp_path / "run", *common,
                                                 "resume=true"))  # fmt: skip
    assert code == 2 and not target.exists()
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "no checkpoint to resume from" in line
    assert "last.zip is a stable-baselines3 zip" in line and "never loaded" in line
    # a finished ppo run (a copy of the session's) cannot be resumed as dqn
    shutil.copytree(ppo_run, tmp_path / "ok")
    code, err = exits(capsys, lambda: train_tiny(tiny_root, tmp_path / "ok", "agent=dqn",
                                                 "resume=true", "total_timesteps=256",
                                                 *SMALL["dqn"]))  # fmt: skip
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "resume=true restores the run's config" in line and "these overrides change it:" in line
    assert "agent: {" in line and "'algorithm': 'ppo'" in line and "'algorithm': 'dqn'" in line


@pytest.mark.parametrize("steps", [64, 600])  # 4 envs, 25 rows of 4: 16 rows filled, or wrapped
def test_the_replay_buffer_round_trips_and_only_filled_rows_are_written(
    env_factory, tmp_path: Path, steps: int
) -> None:
    hyper = {**SMALL_DQN, "buffer_size": 100}
    model = build_agent("dqn", env_factory(), seed=0, device="cpu", hyperparams=hyper)
    model.learn(steps)
    buffer = model.replay_buffer
    rows = buffer.buffer_size if buffer.full else buffer.pos
    assert rows == (25 if steps == 600 else 16) and buffer.full == (steps == 600)
    path = save_checkpoint(model, tmp_path, "dqn")
    with np.load(path / "replay.npz") as data:
        assert data["actions"].shape[0] == rows and data["observations.mask"].shape[0] == rows
    loaded = load_checkpoint(
        build_agent("dqn", env_factory(), seed=1, device="cpu", hyperparams=hyper), path, "dqn"
    )
    other = loaded.replay_buffer
    assert (other.pos, other.full) == (buffer.pos, buffer.full)
    np.testing.assert_array_equal(other.actions, buffer.actions)
    np.testing.assert_array_equal(other.rewards, buffer.rewards)
    for key, value in buffer.observations.items():
        np.testing.assert_array_equal(other.observations[key], value)
        np.testing.assert_array_equal(other.next_observations[key], buffer.next_observations[key])
    # the rows the file holds must fit the position it states
    with np.load(path / "replay.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["position"] = np.array([rows // 2, 0])
    with open(path / "replay.npz", "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(CheckpointError, match=r"replay\.npz: actions has shape .* rows filled"):
        load_checkpoint(
            build_agent("dqn", env_factory(), seed=1, device="cpu", hyperparams=hyper), path, "dqn"
        )


def test_the_best_checkpoint_keeps_the_best_value_across_a_resume(
    env_factory, tmp_path: Path
) -> None:
    """``best/`` holds the weights of the highest value offered (no replay buffer); a resumed
    run must beat the value it read back, and a fresh run in the same directory starts over."""
    model = fresh(env_factory)
    first = {k: v.clone() for k, v in model.policy.state_dict().items()}
    keeper = BestCheckpoint(tmp_path, "dqn", resume=False)
    assert keeper.offer(model, {"expected_clicks": 1.0})
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)
    assert not keeper.offer(model, {"expected_clicks": 0.5})
    assert not keeper.offer(model, {"expected_clicks": float("nan")})
    assert (tmp_path / "best" / "weights.pt").is_file()
    assert not (tmp_path / "best" / "replay.npz").exists()  # weights to load, not to resume
    state = json.loads((tmp_path / "best" / "state.json").read_text())
    assert state["selected_by"] == {"metric": "expected_clicks", "value": 1.0}
    loaded = load_checkpoint(fresh(env_factory), tmp_path / "best", "dqn")
    for key, value in loaded.policy.state_dict().items():
        assert torch.equal(value, first[key]), key
    resumed = BestCheckpoint(tmp_path, "dqn", resume=True)
    assert resumed.value == 1.0 and resumed.metric == "expected_clicks"
    assert not resumed.offer(model, {"expected_clicks": 0.9})
    # a sequential world's value per episode is chosen over clicks per request
    assert resumed.offer(model, {"expected_clicks": 0.1, "long_term_value": 0.2})
    assert resumed.metric == "long_term_value" and resumed.value == 0.2
    BestCheckpoint(tmp_path, "dqn", resume=False)
    assert not (tmp_path / "best").exists()
    with pytest.raises(CheckpointError, match=r"best/state.json: missing; a run with agent.keep"):
        load_checkpoint(fresh(env_factory), tmp_path / "best", "dqn")
