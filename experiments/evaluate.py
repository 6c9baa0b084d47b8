"""Value finished runs under another reward model, on each run's own test sessions.

Usage::

    rankgym evaluate 'runs=[outputs/sim/ppo-s0,outputs/sim/ppo-s1]' reward=neural
    rankgym evaluate "runs=[outputs/train-multirun/DATE]" reward=pbm out=out/pbm
    rankgym compare out/pbm metric=expected_clicks

A policy is judged in another reward model than the one it was trained in: on real logs,
where there is no truth to ask, a fitted simulator's opinion beside the off-policy estimates
(a simulator overrates policies trained in it or in a sibling of it:
docs/trusting-the-simulator.md). Each run (a run directory, or a sweep directory: every finished
run below it) is rebuilt from its own ``run_config.yaml``: its data, split, embeddings and policy
(:func:`rankgym.experiments.runs.load_run_policy`); the chosen ``reward`` is fitted on the run's
training sessions (cached like any fit) and the policy evaluated on the run's test sessions
(``sessions=valid``: its valid sessions), as ``rankgym train`` evaluates it.

Written under ``out``, one directory per run (named by its path below the directory given):

* ``metrics.json``: ``expected_clicks`` (and ``ctr@1``, ``ndcg@10``, ``mrr``) under the chosen
  reward model with 95% session-bootstrap intervals, ``true_expected_clicks`` where the world
  has a truth, the off-policy estimates where the log has propensities, a sequential world's
  long-term values on the expected walk (as ``rankgym train`` values them), and
  ``reward_model``, ``trained_in``, ``run`` and ``splits`` (the sessions valued);
* ``per_request.parquet`` and ``run_config.yaml`` (the run's, with the reward replaced), so
  ``rankgym.experiments.compare <out>`` pairs the runs request by request as it pairs a sweep.

Each run's directory is written whole or not at all; a run that fails is named at the end (exit
status 2) and the others are still valued.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rankgym.agents.evaluation import evaluate
from rankgym.agents.training import KEEPS
from rankgym.experiments.runs import load_run_policy
from rankgym.experiments.sweeps import configure_threads, fail, run_job
from rankgym.logs.atomic import atomic_directory

log = logging.getLogger(__name__)
SESSIONS = ("test", "valid")
MARKER = "metrics.json"  # what every directory this command writes holds


def find_runs(roots: list[str]) -> dict[str, Path]:
    """``{name: run directory}`` of the finished runs (a ``metrics.json`` beside a
    ``run_config.yaml``) at or below each root, named ``<root name>/<path below it>``.
    What this command wrote itself (``trained_in`` in its ``metrics.json``) is not a run."""
    runs: dict[str, Path] = {}
    for root in map(Path, roots):
        found = sorted(p.parent for p in root.rglob("run_config.yaml") if _is_run(p.parent))
        if not found:
            raise FileNotFoundError(
                f"{root}: no finished run (run_config.yaml and metrics.json) at or below it"
            )
        for run in found:
            name = root.name if run == root else f"{root.name}/{run.relative_to(root)}"
            if name in runs and runs[name] != run:
                raise ValueError(f"runs {runs[name]} and {run} would both be written to {name}")
            runs[name] = run
    return runs


def _is_run(directory: Path) -> bool:
    """A finished training run (not a valued copy of one written here)."""
    file = directory / MARKER
    if not file.is_file():
        return False
    try:
        return "trained_in" not in json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err


def value_run(
    run_dir: Path,
    reward: DictConfig,
    reward_name: str,
    sessions: str,
    out: Path,
    keep: str | None = None,
) -> dict[str, Any]:
    """Value the run at ``run_dir`` under ``reward``; write ``out`` (see the module docstring).
    ``keep`` (``last``, ``best``) picks an SB3 run's weights instead of its ``agent.keep``."""
    from rankgym.experiments.runs import RUN_CONFIG
    from rankgym.experiments.train import off_policy, write_metrics, write_per_request

    trained_in = json.loads((run_dir / MARKER).read_text()).get("reward_model")
    cfg, s, policy = load_run_policy(run_dir, reward, keep)
    held = s.test if sessions == "test" else s.valid
    if held is None:
        raise ValueError(f"{run_dir}: sessions=valid, but the run has no valid split")
    result = evaluate(
        policy, held, s.encoded, s.reward, s.env.valued(), truth=s.truth,
        num_envs=cfg.eval.num_envs, bootstrap=cfg.eval.bootstrap, seed=cfg.seed,
        max_sessions=cfg.eval.final_sessions,
    )  # fmt: skip
    metrics = {
        **result.to_dict(),
        **off_policy(held, result, s.reward, cfg.eval.bootstrap, cfg.seed),
        "seed": cfg.seed,
        "reward_model": reward_name,
        "trained_in": trained_in,
        "splits": {"metrics": sessions},  # as train's; "sessions" is a long-term metric
        **({"kept": cfg.agent.keep} if "keep" in cfg.agent else {}),  # an SB3 run's weights
        "run": str(run_dir.resolve()),
    }
    with atomic_directory(out, marker=MARKER) as tmp:
        write_per_request(tmp / "per_request.parquet", result, held, s.env.episode)
        OmegaConf.save(OmegaConf.to_container(cfg, resolve=True), tmp / RUN_CONFIG)
        return write_metrics(tmp / MARKER, metrics)


def run(cfg: DictConfig) -> list[str]:
    """Value every run of ``cfg.runs`` under ``cfg.reward``; the names of those that failed."""
    if cfg.sessions not in SESSIONS:
        raise ValueError(f"sessions={cfg.sessions!r}; allowed: {', '.join(SESSIONS)}")
    if cfg.keep not in (None, *KEEPS):
        raise ValueError(f"keep={cfg.keep!r}; allowed: null (each run's agent.keep), "
                         f"{', '.join(KEEPS)}")  # fmt: skip
    configure_threads(cfg)
    roots = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs or [])
    if not roots:
        raise ValueError("runs= is empty; it takes run or sweep directories: 'runs=[outputs/x]'")
    reward_name = HydraConfig.get().runtime.choices.get("reward", "?")
    runs = find_runs(roots)
    out = Path(cfg.out)
    failed = []
    for name, run_dir in runs.items():
        log.info("valuing %s under reward=%s", run_dir, reward_name)
        try:
            m = value_run(run_dir, cfg.reward, reward_name, cfg.sessions, out / name, cfg.keep)
        except Exception as err:  # one bad run does not stop the others
            log.error("%s: %s", run_dir, str(err).strip().splitlines()[0] if str(err) else err)
            failed.append(name)
            continue
        log.info("%s: %.4f expected clicks in %s (trained in %s)%s", name,
                 m["expected_clicks"], reward_name, m["trained_in"],
                 f", {m['true_expected_clicks']:.4f} true" if m.get("true_expected_clicks")
                 is not None else "")  # fmt: skip
    return failed


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``conf/evaluate.yaml``)."""
    failed = run_job(lambda: run(cfg))
    print(f"written to {cfg.out}\ncompare them: rankgym compare {cfg.out} "
          "metric=expected_clicks")  # fmt: skip
    if failed:
        fail(RuntimeError(f"{len(failed)} run(s) failed (see the log above): {', '.join(failed)}"))


if __name__ == "__main__":
    main()
