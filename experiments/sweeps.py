"""How every entry point ends a failed run: one line for a user error, and a sweep that goes on.

Inside a multirun a job must neither ``sys.exit`` nor raise: either ends the sweep (an exit at
once; an exception when Hydra collects the results, before its end-of-sweep callbacks). So
:func:`run_job` records a failure in the job's directory (``error.txt``, one line; the traceback
goes to the job's log) and returns ``None``; :class:`SweepSummary` (a Hydra callback,
``hydra.callbacks`` in ``conf/config.yaml``) lists the failed jobs once every job has run and
exits with status 1. Outside a multirun a user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from envs.logs import LogValidationError

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
