"""Export a finished run's policy as a ranker directory that serves without torch.

Usage::

    rankgym export run=outputs/train/RUN                 # -> RUN/ranker
    rankgym export run=outputs/train/RUN out=rankers/ppo with_encoder=false
    rankgym train export=true                            # at the end of training

Works for PPO, A2C and DQN runs (their final checkpoint) and for ``agent=cosine`` and
``agent=popularity`` runs (refitted on the run's training sessions), so a policy and a baseline
can be A/B tested with the same serving code. The run's own config (``run_config.yaml``) rebuilds
its data, embeddings and agent; what is written is described in :mod:`rankgym.agents.export`; serve
it with ``rankgym serve ranker=<dir>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rankgym.experiments.runs import RANKER_DIR, export_policy, load_run_policy
from rankgym.experiments.sweeps import run_job

log = logging.getLogger(__name__)


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    with_encoder: bool | None = None,
    max_candidates: int = 1000,
) -> Path:
    """Export the policy of the run at ``run_dir`` to ``out`` (default ``<run>/ranker``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a finished ``rankgym train`` run.
        ValueError: an agent that cannot be exported, or a bad setting (named).
    """
    cfg, s, policy = load_run_policy(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / RANKER_DIR
    return export_policy(cfg, policy, s, Path(run_dir), target, with_encoder, max_candidates)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``conf/export.yaml``)."""
    out = run_job(lambda: export_run(cfg.run, cfg.out, cfg.with_encoder, cfg.max_candidates))
    if out is not None:
        print(f"ranker written to {out}\nserve it: rankgym serve ranker={out}")


if __name__ == "__main__":
    main()
