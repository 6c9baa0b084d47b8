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

A run with ``agent.keep=best`` also keeps ``best/`` (:class:`BestCheckpoint`): the weights of
its best periodic validation value, without the replay buffer; its ``state.json`` adds the
metric and the value that chose them.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from rankgym.logs.atomic import atomic_directory

CHECKPOINT = "last"  # the latest weights, from which a killed run resumes
BEST = "best"  # the weights of the best periodic validation value (agent.keep=best)
FORMAT = 1
_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls")
_BUFFER_ARRAYS = ("actions", "rewards", "dones", "timeouts")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, foreign, tampered with or mismatched."""


def save_checkpoint(
    model: BaseAlgorithm,
    directory: str | Path,
    algorithm: str,
    name: str = CHECKPOINT,
    selected_by: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/name/`` (atomically: a reader sees the old or the new checkpoint).

    ``last/`` holds an off-policy agent's replay buffer too (to resume); ``best/`` does not, and
    records ``selected_by`` (the metric and its value) in its ``state.json``.
    """
    target = Path(directory) / name
    with atomic_directory(target, marker="state.json") as tmp:
        weights = {
            "policy": model.policy.state_dict(),
            "optimizer": model.policy.optimizer.state_dict(),
        }
        torch.save(weights, tmp / "weights.pt")
        resumable = name == CHECKPOINT
        if resumable and isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
            _save_buffer(model.replay_buffer, tmp / "replay.npz")
        state: dict[str, Any] = {
            "format": FORMAT,
            "algorithm": algorithm,
            **{k: int(getattr(model, k, 0)) for k in _COUNTERS},
        }
        if selected_by is not None:
            state["selected_by"] = selected_by
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    return target


def read_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``state.json``, checked; raises :class:`CheckpointError`."""
    path = Path(path)
    file = path / "state.json"
    if not file.is_file() and path.name == BEST:
        raise CheckpointError(
            f"{file}: missing; a run with agent.keep=best writes it at its first periodic "
            "evaluation (eval.freq timesteps)"
        )
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


SELECTION_METRICS = ("long_term_value", "expected_clicks")  # agent.keep=best maximises the first
# present: a sequential world's value per episode, else clicks per request; both under the run's
# own reward model, never the truth (a run in a fitted simulator selects as it could on real logs)


class BestCheckpoint:
    """``directory/best/``: the weights of the best evaluation offered (:data:`SELECTION_METRICS`).

    A resumed run reads the value to beat back from ``best/state.json``, so the weights kept are
    the best of the whole run, killed or not; a fresh run removes a ``best/`` left by an earlier
    run in the same directory.
    """

    def __init__(self, directory: str | Path, algorithm: str, resume: bool) -> None:
        self.directory, self.algorithm = Path(directory), algorithm
        self.path = self.directory / BEST
        self.metric: str | None = None
        self.value, self.step = -math.inf, -1
        if not (self.path / "state.json").is_file():
            return
        if resume:
            state = read_state(self.path)
            chosen = state.get("selected_by") or {}
            self.metric, self.value = chosen.get("metric"), float(chosen.get("value", -math.inf))
            self.step = int(state["num_timesteps"])
        else:
            shutil.rmtree(self.path)

    def offer(self, model: BaseAlgorithm, metrics: dict[str, Any]) -> bool:
        """Keep ``model``'s weights if ``metrics`` beat the best so far; True when kept."""
        metric = next((m for m in SELECTION_METRICS if m in metrics), None)
        if metric is None:
            raise KeyError(f"agent.keep=best: the evaluation has none of {SELECTION_METRICS}")
        value = float(metrics[metric])
        if metric != self.metric:  # a checkpoint chosen by another metric is not comparable
            self.metric, self.value = metric, -math.inf
        if not value > self.value:  # NaN never wins
            return False
        selected_by = {"metric": metric, "value": value}
        save_checkpoint(model, self.directory, self.algorithm, BEST, selected_by)
        self.value, self.step = value, int(model.num_timesteps)
        return True


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
