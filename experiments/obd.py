"""The real-data results on the Open Bandit Dataset: OPE of a known policy, and trained policies.

Usage::

    rankgym obd [--campaigns all men] [--out outputs/obd] [--timesteps 100000]
    rankgym obd --path /data/open_bandit_dataset   # the full dataset
    rankgym obd --campaigns all men women --no-policies --out outputs/obd-bts

1. **OPE against an on-policy truth** (:func:`bts_from_random`), as the Open Bandit paper does:
   the Bernoulli Thompson sampling (BTS) policy's click rate per slot is estimated from the
   uniform-random logs with ``iips`` / ``sniips`` (:mod:`rankgym.agents.ope`; BTS's item-position
   probabilities by Monte Carlo from its ZOZOTOWN prior,
   ``rankgym.logs.obd.bernoulli_ts_marginals``) and compared with the BTS logs' own click rate. OBD
   records item-position propensities only (``action_prob``), so the prefix estimators (``ips``,
   ``rips``, ``dr``) do not apply.
2. **Trained policies.** For each campaign, on the uniform-random logs (``experiment=obd``: the
   catalog ranked into 3 positions, the neural click model fitted on the training sessions), it
   runs ``rankgym train`` for PPO and the ``random``, ``popularity`` and ``cosine`` (with
   features) baselines, each in its own run directory, and collects from their ``metrics.json``
   ``ope_iips`` (clicks at the logged slot: a click rate per slot, unbiased under uniform
   logging for any policy, with its interval, resolution, support and ESS) beside ``ope_dm``
   (the fitted simulator's opinion at the same slots) and the logging policy's own rate.

Writes ``obd.md`` (both tables) and ``obd.json`` under ``--out``; a run whose ``metrics.json``
exists is reused, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rankgym.agents.ope import LoggedSlates, TargetProbs, estimate, logged_clicks
from rankgym.logs.obd import CAMPAIGNS, OBDSource, bernoulli_ts_marginals, bernoulli_ts_prior

SLOTS = 3

AGENTS = {
    "ppo": ["agent=ppo"],
    "cosine (features)": ["agent=cosine", "agent.features=true"],
    "popularity": ["agent=popularity"],
    "random": ["agent=random"],
}


def run_agent(
    out: Path, campaign: str, label: str, overrides: list[str], extra: list[str]
) -> dict[str, Any]:
    """``metrics.json`` of one ``rankgym train`` run (reused when it is there)."""
    run_dir = out / campaign / label.split()[0]
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        cmd = [
            sys.executable, "-m", "rankgym.experiments.train", "experiment=obd",
            f"dataset.campaign={campaign}", *overrides, *extra, f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(metrics.read_text())


def bts_from_random(
    campaign: str,
    path: str | None = None,
    cache_dir: str = ".cache",
    draws: int = 100_000,
    bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Estimate Bernoulli TS's click rate per slot from the uniform-random logs; rows for the
    table: each estimator and the BTS logs' own rate (the on-policy truth)."""
    source = {"path": path, "campaign": campaign, "candidates": "logged", "cache_dir": cache_dir}
    random_log = OBDSource(behavior_policy="random", **source).build()
    bts_log = OBDSource(behavior_policy="bts", **source).build()
    prior = bernoulli_ts_prior(campaign, cache_dir)
    if len(prior) != random_log.n_items:
        raise ValueError(
            f"campaign {campaign!r}: the BTS prior has {len(prior)} items, "
            f"the log {random_log.n_items}"
        )
    marginals = bernoulli_ts_marginals(prior, SLOTS, draws, seed)
    requests = np.arange(random_log.n_requests)
    logged = LoggedSlates.from_log(random_log, requests, SLOTS)
    item_id = random_log.item_ids.astype(np.int64)  # OBD item ids are the prior's indices
    target_ip = np.where(
        logged.valid, marginals[item_id[np.maximum(logged.items, 0)], np.arange(SLOTS)], 0.0
    )
    target = TargetProbs(target_ip, np.full_like(target_ip, np.nan))
    truth = logged_clicks(bts_log, np.arange(bts_log.n_requests), SLOTS, bootstrap, seed)
    own = f"on-policy, its own {truth.n} rows"
    rows = [{"campaign": campaign, "policy": "Bernoulli TS", "how": own, "est": truth,
             "truth": truth.value}]  # fmt: skip
    for name in ("iips", "sniips"):
        est = estimate(name, logged, target, bootstrap=bootstrap, seed=seed)
        how = f"{name} from {est.n} uniform-random rows"
        rows.append({"campaign": campaign, "policy": "Bernoulli TS", "how": how, "est": est,
                     "truth": truth.value})  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of the collected rows (an estimate in ``est``, extra ``columns``)."""
    head = ["campaign", "policy", "how", "clicks per slot", "95% interval", "resolution",
            "support", "ESS", *columns]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 3 + " ---: |" * (len(head) - 3)]
    for r in rows:
        e = r["est"]
        cells = [r["campaign"], r["policy"], r["how"], f"{e.value:.4f}",
                 f"[{e.ci_low:.4f}, {e.ci_high:.4f}]", f"{e.resolution:.4f}",
                 f"{e.support:.2%}", f"{e.ess:.0f}"]  # fmt: skip
        for c in columns:
            value = r.get(c)
            cells.append(
                "" if value is None else f"{value:.4f}" if isinstance(value, float) else value
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _from_metrics(m: dict[str, Any], key: str) -> Any:
    """An estimate stored in ``metrics.json`` under ``key`` (``key``, ``key_ci_low``, ...)."""
    from rankgym.agents.ope import OPEEstimate

    fields = ("ci_low", "ci_high", "n", "support", "ess", "resolution")
    return OPEEstimate(m[key], *(m[f"{key}_{f}"] for f in fields))


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the estimates and the policies, write the tables."""
    parser = argparse.ArgumentParser(prog="rankgym obd", description=__doc__)
    parser.add_argument("--campaigns", nargs="+", default=["all", "men"], choices=CAMPAIGNS)
    parser.add_argument("--out", type=Path, default=Path("outputs/obd"))
    parser.add_argument("--timesteps", type=int, default=100_000, help="PPO training steps")
    parser.add_argument("--path", default=None, help="the full OBD root (default: the sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=100_000, help="BTS Monte Carlo draws")
    parser.add_argument(
        "--no-policies", action="store_true", help="only the BTS estimate: train no policy"
    )
    args = parser.parse_args(argv)
    if args.timesteps < 1:
        parser.error(f"--timesteps must be >= 1, got {args.timesteps}")
    if args.draws < 1:
        parser.error(f"--draws must be >= 1, got {args.draws}")
    ope_rows = []
    for campaign in tqdm(args.campaigns, desc="BTS from random", unit="campaign"):
        ope_rows += bts_from_random(campaign, args.path, ".cache", args.draws, seed=args.seed)
    for r in ope_rows:
        if r["how"].startswith("on-policy"):
            continue  # the truth itself
        r["rel. error"] = f"{(r['est'].value - r['truth']) / r['truth']:+.1%}"
        r["truth in interval"] = (
            "yes" if r["est"].ci_low <= r["truth"] <= r["est"].ci_high else "no"
        )
    extra = [f"total_timesteps={args.timesteps}", f"seed={args.seed}"]
    if args.path is not None:
        extra.append(f"dataset.path={args.path}")
    rows: list[dict[str, Any]] = []
    jobs = [] if args.no_policies else [(c, label) for c in args.campaigns for label in AGENTS]
    for campaign, label in tqdm(jobs, desc="obd runs", unit="run"):
        m = run_agent(args.out, campaign, label, AGENTS[label], extra)
        if label == "random":  # the uniform logging policy's own rate on the same held-out rows
            own = _from_metrics(m, "logged_clicks")
            rows.append({"campaign": campaign, "policy": "logging (uniform random)",
                         "how": "on-policy, held-out rows", "est": own})  # fmt: skip
        iips, dm = _from_metrics(m, "ope_iips"), m.get("ope_dm")
        rows.append({"campaign": campaign, "policy": label, "how": "iips", "est": iips,
                     "simulator (dm)": dm})  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    text = "Bernoulli TS estimated from the uniform-random logs vs its own logs:\n\n" + table(
        ope_rows, ["rel. error", "truth in interval"]
    )
    if rows:
        text += (
            "\n\nPolicies trained in the fitted simulator, valued by IPS on held-out random logs:"
            "\n\n" + table(rows, ["simulator (dm)"])
        )
    (args.out / "obd.md").write_text(text + "\n")
    serial = [{**r, "est": r["est"].to_dict("value")} for r in ope_rows + rows]
    (args.out / "obd.json").write_text(json.dumps(serial, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
