"""Sweep jobs: how a failed run ends (one line for a user error; the sweep goes on), what an
earlier launch of the same sweep left in a job's directory, and each job's share of the cores.

Inside a multirun a job must neither ``sys.exit`` nor raise: either ends the sweep (an exit at
once; an exception when Hydra collects the results, before its end-of-sweep callbacks). So
:func:`run_job` records a failure in the job's directory (``error.txt``, one line; the traceback
goes to the job's log) and returns ``None``; :class:`SweepSummary` (a Hydra callback,
``hydra.callbacks`` in ``conf/config.yaml``) lists the failed jobs once every job has run and
exits with status 1. Outside a multirun a user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from rankgym import threads
from rankgym.logs import LogValidationError

ERROR_FILE = "error.txt"
log = logging.getLogger(__name__)

# errors that are the user's input, not a bug: one line and exit 2, never a traceback
USER_ERRORS = (
    LogValidationError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    RuntimeError,
    MissingMandatoryValue,
)


def _cause(err: BaseException) -> BaseException:
    """The error itself, or what a Hydra instantiation wrapped."""
    return err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err


def fail(err: BaseException) -> None:
    """Print one readable error line and exit with status 2 (no traceback for bad input)."""
    print(f"error: {str(_cause(err)).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def _one_line(err: BaseException) -> str:
    cause = _cause(err)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__


def run_job(job: Callable[[], Any]) -> Any:
    """Run ``job``; on failure one line and exit 2 (a single run), or ``error.txt`` and ``None``
    (a sweep job: the sweep goes on)."""
    config = HydraConfig.get()
    try:
        return job()
    except Exception as err:
        if config.mode != RunMode.MULTIRUN:
            if isinstance(err, (InstantiationException, *USER_ERRORS)):
                fail(err)
            raise
        line = _one_line(err)
        log.error("job %s failed: %s", config.job.num, line, exc_info=True)
        Path(config.runtime.output_dir, ERROR_FILE).write_text(line + "\n")
        return None


def previous_job(cfg: DictConfig, run_dir: Path) -> str | None:
    """What a sweep job's directory already holds from an earlier launch of the same sweep:
    ``"finished"`` (a complete ``metrics.json``), ``"killed"`` (a checkpoint to resume from) or
    ``None``. A directory holding a run of another config is refused, naming the difference."""
    saved_path = run_dir / "run_config.yaml"  # rankgym.experiments.runs.RUN_CONFIG
    if not saved_path.is_file():
        return None
    saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    current = OmegaConf.to_container(cfg, resolve=True)
    saved.pop("resume", None), current.pop("resume", None)  # type: ignore[union-attr]
    if saved != current:
        differ = sorted(k for k in {*saved, *current} if saved.get(k) != current.get(k))  # type: ignore[union-attr]
        raise ValueError(
            f"{run_dir}: holds a run of another config (differs in {', '.join(differ)}); "
            "rerun a sweep with its own overrides, or give it a new hydra.sweep.dir"
        )
    try:
        json.loads((run_dir / "metrics.json").read_text())
        return "finished"
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    state = run_dir / "checkpoints" / "last" / "state.json"  # agents.checkpoint.CHECKPOINT
    return "killed" if state.is_file() else None


def configure_threads(cfg: DictConfig) -> int:
    """Torch's CPU threads for this job (:func:`rankgym.threads.configure`): ``torch_threads``
    if set, else governed by the machine's load within this job's share of the cores, so that
    parallel jobs do not oversubscribe the CPU (joblib: ``n_jobs``; submitit: the job's
    ``cpus_per_task``). Returns the count the job starts with."""
    import torch

    cap = None
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    target = str(launcher.get("_target_", "")).lower()
    if "joblib" in target:
        cores = threads.usable_cores()
        jobs = int(launcher.get("n_jobs") or -1)
        cap = max(1, cores // (cores if jobs < 1 else jobs))
    elif "submitit" in target and launcher.get("cpus_per_task"):
        cap = int(launcher.cpus_per_task)
    device = str(cfg.get("device", "auto"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return threads.configure(cfg.get("torch_threads"), cap, device, env="joblib" not in target)


OBJECTIVE = re.compile(r"(valid_)?(true_expected_clicks|expected_clicks|ctr@1|ndcg@\d+|mrr|"
                       r"logged_clicks|ope_\w+)")  # fmt: skip


def check_objective(cfg: DictConfig) -> None:
    """Refuse an ``objective`` no run can report, before the run (not after its training)."""
    key = cfg.get("objective", "auto")
    if key != "auto" and not (isinstance(key, str) and OBJECTIVE.fullmatch(key)):
        raise ValueError(
            f"objective={key!r}; allowed: auto, or a metric of metrics.json such as "
            "valid_true_expected_clicks, valid_expected_clicks, valid_ndcg@10, valid_mrr"
        )


def objective_key(cfg: DictConfig, metrics: dict[str, Any]) -> str:
    """The metrics key a search maximises (``objective``; ``auto``: valid-split true expected
    clicks where the world has a truth, else expected clicks under the reward model; in a
    sequential world the long-term values, per episode, instead)."""
    key = cfg.get("objective", "auto")
    if key == "auto":
        prefix = "valid_" if "valid_expected_clicks" in metrics else ""
        order = ("true_long_term_value", "long_term_value", "true_expected_clicks")
        known = [k for k in (prefix + name for name in order) if metrics.get(k) is not None]
        key = known[0] if known else f"{prefix}expected_clicks"
    if key not in metrics:
        allowed = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        raise ValueError(f"objective={key!r}; allowed: auto or a metric: {', '.join(allowed)}")
    return key


def failed_jobs(sweep_dir: str | Path) -> list[tuple[str, str]]:
    """``(job directory, error line)`` of every job of a sweep that recorded a failure."""
    root = Path(sweep_dir)
    return [(str(p.parent.relative_to(root)), p.read_text().strip())
            for p in sorted(root.rglob(ERROR_FILE))]  # fmt: skip


class SweepSummary(Callback):
    """At the end of a multirun, list the jobs that failed (with their one-line reason).

    It also creates the sweep directory when the multirun starts, before any job: a sweeper
    such as Optuna opens its study there (``sqlite:///<sweep dir>/optuna.db``) first.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failed_jobs(config.hydra.sweep.dir)
        if failed:
            print(f"sweep: {len(failed)} job(s) failed:", file=sys.stderr)
            for job, line in failed:
                print(f"  {job}: {line}", file=sys.stderr)
            sys.exit(1)
