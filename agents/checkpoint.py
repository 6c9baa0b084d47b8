"""Checkpoints that load without running code: weights by ``torch.load(weights_only=True)``,
state as JSON, the replay buffer as ``.npz`` without pickles.

stable-baselines3's own ``save``/``load`` pickle parts of the model (``:serialized:`` entries,
the replay buffer), so a crafted checkpoint executes code when loaded. A rankgym checkpoint is a
directory ``last/`` written atomically:

* ``state.json``: format version, algorithm, counters (timesteps, updates, episodes, calls);
* ``weights.pt``: the policy's and its optimizer's state dicts (tensors only);
* ``replay.npz``: an off-policy agent's replay buffer (plain arrays).

To resume, the agent is rebuilt from the run's config (the same code path as a fresh run) and
these are loaded into it; every refusal is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from rankgym.logs.atomic import atomic_directory

CHECKPOINT = "last"
FORMAT = 1
_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls")
_BUFFER_ARRAYS = ("actions", "rewards", "dones", "timeouts")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, foreign, tampered with or mismatched."""


def save_checkpoint(model: BaseAlgorithm, directory: str | Path, algorithm: str) -> Path:
    """Write ``directory/last/`` (atomically: a reader sees the old or the new checkpoint)."""
    target = Path(directory) / CHECKPOINT
    with atomic_directory(target, marker="state.json") as tmp:
        weights = {
            "policy": model.policy.state_dict(),
            "optimizer": model.policy.optimizer.state_dict(),
        }
        torch.save(weights, tmp / "weights.pt")
        if isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
            _save_buffer(model.replay_buffer, tmp / "replay.npz")
        state = {
            "format": FORMAT,
            "algorithm": algorithm,
            **{k: int(getattr(model, k, 0)) for k in _COUNTERS},
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    return target


def read_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``state.json``, checked; raises :class:`CheckpointError`."""
    path = Path(path)
    file = path / "state.json"
    if not file.is_file():
        legacy = path.with_name("last.zip")
        hint = (
            f" ({legacy} is a stable-baselines3 zip from an older rankgym: it is never loaded, "
            "because unpickling it could run code; retrain)"
            if legacy.is_file()
            else ""
        )
        raise CheckpointError(f"{file}: no checkpoint to resume from{hint}")
    try:
        state = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not a rankgym checkpoint state ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{file}: unknown checkpoint format; expected format {FORMAT}")
    for key in ("algorithm", *_COUNTERS):
        if key not in state:
            raise CheckpointError(f"{file}: missing key {key!r}")
    return state


def load_checkpoint(model: BaseAlgorithm, path: str | Path, algorithm: str) -> BaseAlgorithm:
    """Load the checkpoint at ``path`` into ``model`` (freshly built with the run's settings).

    Raises:
        CheckpointError: no checkpoint, another algorithm, a file that holds anything but
            tensors and plain arrays, or weights of another architecture.
    """
    path = Path(path)
    state = read_state(path)
    if state["algorithm"] != algorithm:
        raise CheckpointError(
            f"{path / 'state.json'}: a {state['algorithm']} checkpoint cannot resume "
            f"agent.algorithm={algorithm}"
        )
    file = path / "weights.pt"
    try:
        weights = torch.load(file, map_location=model.device, weights_only=True)
        model.policy.load_state_dict(weights["policy"])
        model.policy.optimizer.load_state_dict(weights["optimizer"])
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, EOFError) as err:
        # a state dict of another architecture: its first line says so, the next which keys
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        why = " ".join(lines[:2])[:300] if lines else type(err).__name__
        raise CheckpointError(
            f"{file}: not loadable as plain weights ({why}); resume with the run's own agent "
            "settings"
        ) from None
    for key in _COUNTERS:
        if hasattr(model, key):
            setattr(model, key, int(state[key]))
    buffer = getattr(model, "replay_buffer", None)
    if buffer is not None and (path / "replay.npz").is_file():
        _load_buffer(buffer, path / "replay.npz")
    return model


def _save_buffer(buffer: Any, file: Path) -> None:
    """The buffer's filled rows only: SB3 allocates all ``buffer_size`` rows up front, and a
    run that has filled a tenth of them writes a tenth of the bytes."""
    rows = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {name: getattr(buffer, name)[:rows] for name in _buffer_arrays(buffer)}
    for prefix in ("observations", "next_observations"):
        for key, value in getattr(buffer, prefix).items():
            arrays[f"{prefix}.{key}"] = value[:rows]
    arrays["position"] = np.array([buffer.pos, int(buffer.full)])
    with open(file, "wb") as handle:
        np.savez(handle, **arrays)


def _buffer_arrays(buffer: Any) -> tuple[str, ...]:
    """SB3's per-transition arrays and the buffer's own (``extra_arrays``)."""
    return _BUFFER_ARRAYS + tuple(getattr(buffer, "extra_arrays", ()))


def _load_buffer(buffer: Any, file: Path) -> None:
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{file}: not loadable as plain arrays ({err})") from None
    expected = {
        *_buffer_arrays(buffer),
        "position",
        *(f"observations.{k}" for k in buffer.observations),
        *(f"next_observations.{k}" for k in buffer.next_observations),
    }
    if set(arrays) != expected:
        raise CheckpointError(f"{file}: arrays {sorted(arrays)}; expected {sorted(expected)}")
    pos, full = int(arrays["position"][0]), bool(arrays["position"][1])
    if not 0 <= pos < buffer.buffer_size:
        raise CheckpointError(
            f"{file}: position {pos} outside the agent's buffer of {buffer.buffer_size} rows: "
            "resume with the run's own agent settings"
        )
    rows = buffer.buffer_size if full else pos
    for name in sorted(expected - {"position"}):
        prefix, _, key = name.partition(".")
        target = getattr(buffer, prefix)[key] if key else getattr(buffer, name)
        if arrays[name].shape != (rows, *target.shape[1:]):
            raise CheckpointError(
                f"{file}: {name} has shape {arrays[name].shape}, the agent's buffer "
                f"{target.shape} ({rows} rows filled): resume with the run's own agent settings"
            )
        target[:rows] = arrays[name]
    buffer.pos, buffer.full = pos, full
