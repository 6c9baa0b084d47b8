"""The real-data result: policies trained in a simulator fitted on OBD, valued by IPS.

Usage::

    python -m experiments.obd [--campaigns all men] [--out outputs/obd] [--timesteps 100000]
    python -m experiments.obd --path /data/open_bandit_dataset   # the full dataset

For each campaign, on the uniform-random logs (``experiment=obd``: the campaign's catalog ranked
into 3 positions, the neural click model fitted on the training sessions), it runs
``experiments.train`` for PPO and the ``random``, ``popularity`` and ``cosine`` (with features)
baselines, each in its own run directory, then collects from their ``metrics.json``:

* ``ips_ctr``: the IPS estimate of the policy's click rate per slot on the held-out random logs
  (uniform logging makes it unbiased for any policy), with its 95% bootstrap interval, its
  resolution (the smallest value the sample tells from 0), the share of logged impressions the
  policy matches and the weights' effective sample size;
* ``sim``: the policy's expected clicks per slot in the fitted simulator (its own opinion);
* beside them, the random logging policy's CTR on the held-out rows and the Bernoulli Thompson
  sampling policy's on-policy CTR over its own logs (``behavior_policy=bts``, same campaign).

Writes ``obd.md`` (the table) and ``obd.json`` under ``--out``; a run whose ``metrics.json`` exists
is reused, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from agents.ope import logged_ctr
from envs.logs.obd import CAMPAIGNS, OBDSource

AGENTS = {
    "ppo": ["agent=ppo"],
    "cosine (features)": ["agent=cosine", "agent.features=true"],
    "popularity": ["agent=popularity"],
    "random": ["agent=random"],
}


def run_agent(
    out: Path, campaign: str, label: str, overrides: list[str], extra: list[str]
) -> dict[str, Any]:
    """``metrics.json`` of one ``experiments.train`` run (reused when it is there)."""
    run_dir = out / campaign / label.split()[0]
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        cmd = [
            sys.executable, "-m", "experiments.train", "experiment=obd",
            f"dataset.campaign={campaign}", *overrides, *extra, f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(metrics.read_text())


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the collected rows."""
    lines = [
        "| campaign | policy | value (clicks per slot) | 95% interval | resolution | how "
        "| support | ESS |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        support = f"{r['support']:.2%}" if r["support"] is not None else ""
        ess = f"{r['ess']:.0f}" if r["ess"] is not None else ""
        lines.append(
            f"| {r['campaign']} | {r['policy']} | {r['value']:.4f} | "
            f"[{r['low']:.4f}, {r['high']:.4f}] | {r['resolution']:.4f} | {r['how']} | "
            f"{support} | {ess} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the policies, write the table."""
    parser = argparse.ArgumentParser(prog="python -m experiments.obd", description=__doc__)
    parser.add_argument("--campaigns", nargs="+", default=["all", "men"], choices=CAMPAIGNS)
    parser.add_argument("--out", type=Path, default=Path("outputs/obd"))
    parser.add_argument("--timesteps", type=int, default=100_000, help="PPO training steps")
    parser.add_argument("--path", default=None, help="the full OBD root (default: the sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.timesteps < 1:
        parser.error(f"--timesteps must be >= 1, got {args.timesteps}")
    extra = [f"total_timesteps={args.timesteps}", f"seed={args.seed}"]
    if args.path is not None:
        extra.append(f"dataset.path={args.path}")
    rows: list[dict[str, Any]] = []
    jobs = [(c, label) for c in args.campaigns for label in AGENTS]
    for campaign, label in tqdm(jobs, desc="obd runs", unit="run"):
        m = run_agent(args.out, campaign, label, AGENTS[label], extra)
        if label == "random":  # the uniform logging policy's own CTR on the same held-out rows
            rows.append(
                {"campaign": campaign, "policy": "logging (uniform random)",
                 "value": m["logged_ctr"], "low": m["logged_ctr_ci_low"],
                 "high": m["logged_ctr_ci_high"], "resolution": m["logged_ctr_resolution"],
                 "how": "on-policy CTR, held-out rows", "support": None, "ess": None}
            )  # fmt: skip
        rows.append(
            {"campaign": campaign, "policy": label, "value": m["ips_ctr"],
             "low": m["ips_ctr_ci_low"], "high": m["ips_ctr_ci_high"],
             "resolution": m["ips_ctr_resolution"],
             "how": f"IPS (sim: {m['expected_clicks'] / 3:.4f})",
             "support": m["ips_ctr_support"], "ess": m["ips_ctr_ess"]}
        )  # fmt: skip
    for campaign in args.campaigns:
        source = OBDSource(
            path=args.path, behavior_policy="bts", campaign=campaign, candidates="logged",
            cache_dir=".cache",  # conf/paths/default.yaml's cache_dir, where train fetched it
        )  # fmt: skip
        bts = logged_ctr(source.build(), seed=args.seed)
        rows.append(
            {"campaign": campaign, "policy": "Bernoulli TS (logging)", "value": bts.value,
             "low": bts.ci_low, "high": bts.ci_high, "resolution": bts.resolution,
             "how": f"on-policy CTR, its own {bts.n} rows", "support": None, "ess": None}
        )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (args.out / "obd.md").write_text(text + "\n")
    (args.out / "obd.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
