"""Write a canonical dataset directory from any dataset source and print its statistics.

Usage::

    python -m experiments.prepare                                  # the synthetic world
    python -m experiments.prepare dataset=obd out=data/obd          # Open Bandit sample
    python -m experiments.prepare dataset=mind dataset.path=MINDsmall_train
    python -m experiments.prepare dataset=table dataset.impressions=log.csv

Bad input ends the run with one readable line on stderr and exit status 2; nothing is written.
"""

from __future__ import annotations

import json
import logging
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from envs.logs import LogValidationError

log = logging.getLogger(__name__)

USER_ERRORS = (LogValidationError, ValueError, FileNotFoundError, RuntimeError)


def fail(err: BaseException) -> None:
    """Print one readable error line and exit with status 2 (no traceback for bad input)."""
    cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
    print(f"error: {cause}", file=sys.stderr)
    sys.exit(2)


def prepare(cfg: DictConfig) -> dict:
    """Instantiate ``cfg.dataset``, write it to ``cfg.out`` and return its statistics."""
    log.info("instantiating dataset %s (%s)", cfg.dataset.name, cfg.dataset._target_)
    source = hydra.utils.instantiate(cfg.dataset)
    data = source.write(cfg.out)
    stats = data.stats()
    log.info("wrote %s", cfg.out)
    return stats


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``python -m experiments.prepare``."""
    try:
        stats = prepare(cfg)
    except (InstantiationException, *USER_ERRORS) as err:
        fail(err)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
