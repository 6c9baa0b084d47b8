"""The rankgym commands in tests: Hydra jobs run in this process, as their command runs them.

A test that checks what a command computes or writes composes its config from ``conf/`` and
runs the entry point's ``main`` in-process (:func:`hydra_job`): the same config, the same run
directory with ``.hydra/``, the same exit status and error line, without a new interpreter.
:func:`hydra_command` goes through Hydra's own command line in-process (a ``-m`` sweep, job
logs). A few smoke tests launch the real commands in a subprocess (:func:`command`, or
``python -m``) where the process itself is what they check.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import run_job
from hydra.types import HydraContext, RunMode
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"

# a tiny world, encoder and evaluation: every tiny run shares them (and so its data and caches)
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
# a small neural click model (2 members, 2 epochs): seconds to fit, the default's 5 x 20 minutes
SMALL_NEURAL = ["reward.ensemble=2", "reward.epochs=2", "reward.hidden=32"]


def hydra_job(
    main: Callable[..., Any],
    *overrides: str,
    run_dir: str | Path | None = None,
    config_name: str = "config",
) -> Any:
    """Run the ``@hydra.main`` function ``main`` in this process as its command runs it.

    The config is composed from ``conf/`` with ``overrides`` (``run_dir``: ``hydra.run.dir``),
    the job's directory gets ``.hydra/`` and ``HydraConfig`` is set, as under
    ``python -m rankgym.experiments.<command>``. Returns what ``main`` returns; raises what it
    raises, ``SystemExit`` included (a user error: one line on stderr and status 2).
    """
    job_name = main.__module__.rsplit(".", 1)[-1]
    extra = [] if run_dir is None else [f"hydra.run.dir={run_dir}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name=job_name):
        cfg = compose(config_name, overrides=[*overrides, *extra], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.RUN
        context = HydraContext(
            config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg)
        )
        done = run_job(main, cfg, "hydra.run.dir", None, context, configure_logging=False)
    return done.return_value


def exits(capsys: pytest.CaptureFixture[str], job: Callable[[], Any]) -> tuple[int, str]:
    """Run ``job``, which must exit: ``(exit status, what it wrote to stderr)``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        job()
    return info.value.code, capsys.readouterr().err


def command(*args: str, timeout: int = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real ``rankgym`` console script (installed beside this interpreter) with ``args``."""
    script = Path(sys.executable).parent / "rankgym"
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def train_tiny(root: Path, run_dir: Path, *overrides: str) -> dict[str, Any]:
    """A tiny ``rankgym train`` run in-process: the tiny world under ``root`` (its dataset and
    caches shared with every other run there), the run in ``run_dir``; its ``metrics.json``."""
    from rankgym.experiments import train

    hydra_job(train.main, f"paths.root_dir={root}", f"out={root}/data", *TINY, *overrides,
              run_dir=run_dir)  # fmt: skip
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def captured(job: Callable[[], Any], args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``job`` (a command's ``main``) here, as a process would: its exit status (0, or
    what ``SystemExit`` carries) and what it printed to stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            job()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def hydra_command(main: Callable[..., Any], *args: str) -> subprocess.CompletedProcess:
    """The ``@hydra.main`` function ``main`` run here with the command-line arguments
    ``args``, as Hydra's command line parses them (``-m`` sweeps through the basic launcher,
    job logging to each job's ``<job>.log``, the sweep callbacks): :func:`captured`. The
    logging Hydra configures is undone afterwards."""
    root = logging.getLogger()
    handlers, level, argv = root.handlers[:], root.level, sys.argv
    sys.argv = [main.__module__, *args]
    try:
        return captured(main, args)
    finally:
        sys.argv = argv
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()
