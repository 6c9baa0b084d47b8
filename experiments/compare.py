"""Turn a sweep's run directories into a table: mean and 95% interval over seeds, per policy.

Usage::

    python -m experiments.compare outputs/train-multirun/2026-11-23_01-40-00 [--metric ...]

Every ``metrics.json`` below the directory is one run. Runs are grouped by ``policy``; for each
metric the table gives the mean over seeds and a 95% Student-t interval over seeds (a single
seed, or seeds that agree exactly, give a zero-width interval), and the median of the runs'
own session-bootstrap intervals. Markdown goes to stdout, ``compare.csv`` beside the runs.

When the runs' logs have propensities, a second table puts the two opinions of each policy side
by side (:func:`two_opinions`): the simulator's value and every off-policy estimate of its final
slates (``ope_*`` in ``metrics.json``, :mod:`agents.ope`) with their support, plus the truth
where the world has one; written to ``ope.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.sweeps import ERROR_FILE

DEFAULT_METRICS = ("true_expected_clicks", "expected_clicks", "ctr@1", "ndcg@10", "mrr")
# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    sd = statistics.stdev(values)
    t = T975[min(len(values) - 1, len(T975)) - 1]
    half = t * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def load_runs(root: Path) -> list[dict[str, Any]]:
    """Every run's ``metrics.json`` below ``root``."""
    runs = [json.loads(p.read_text()) for p in sorted(root.rglob("metrics.json"))]
    if not runs:
        raise FileNotFoundError(f"{root}: no metrics.json below it (is this a sweep directory?)")
    return runs


def incomplete_runs(root: Path) -> list[tuple[str, str]]:
    """``(run directory, why)`` for every run below ``root`` without a ``metrics.json``.

    A run is a directory Hydra wrote (it holds ``.hydra/``); the reason is its ``error.txt``
    (a failed sweep job), or "no metrics.json" (killed, or still running).
    """
    out = []
    for hydra_dir in sorted(root.rglob(".hydra")):
        run = hydra_dir.parent
        if (run / "metrics.json").is_file():
            continue
        error = run / ERROR_FILE
        why = f"failed: {error.read_text().strip()}" if error.is_file() else "no metrics.json"
        out.append((str(run.relative_to(root)) or ".", why))
    return out


def compare(runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per policy: seeds, and per metric the mean and 95% interval over seeds."""
    rows = []
    for policy in sorted({r["policy"] for r in runs}):
        group = [r for r in runs if r["policy"] == policy]
        row: dict[str, Any] = {"policy": policy, "seeds": len(group)}
        for m in metrics:
            values = [r[m] for r in group if m in r]
            if not values:
                continue
            mean, low, high = seed_interval(values)
            row[m], row[f"{m}_low"], row[f"{m}_high"] = mean, low, high
            lows = [r[f"{m}_ci_low"] for r in group if f"{m}_ci_low" in r]
            highs = [r[f"{m}_ci_high"] for r in group if f"{m}_ci_high" in r]
            if lows:
                row[f"{m}_session_ci"] = (statistics.median(lows), statistics.median(highs))
        row["train_seconds"] = statistics.fmean(r.get("train_seconds", 0.0) for r in group)
        rows.append(row)
    table = pd.DataFrame(rows)
    key = metrics[0] if metrics[0] in table else table.columns[2]
    return table.sort_values(key, ascending=False).reset_index(drop=True)


def markdown(table: pd.DataFrame, metrics: tuple[str, ...]) -> str:
    """The table as Markdown: ``mean [low, high]`` over seeds per metric."""
    shown = [m for m in metrics if m in table]
    lines = ["| policy | seeds | " + " | ".join(shown) + " | train s |",
             "| --- | ---: | " + " | ".join("---:" for _ in shown) + " | ---: |"]  # fmt: skip
    for _, row in table.iterrows():
        cells = [f"{row[m]:.4f} [{row[m + '_low']:.4f}, {row[m + '_high']:.4f}]" for m in shown]
        lines.append(
            f"| {row['policy']} | {row['seeds']} | " + " | ".join(cells)
            + f" | {row['train_seconds']:.0f} |"
        )  # fmt: skip
    return "\n".join(lines)


def two_opinions(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Per policy, the mean over seeds of the simulator's value, each off-policy estimate and
    its support, and the true value when there is one (empty without ``ope_*`` metrics)."""
    from agents.ope import ESTIMATORS

    names = [n for n in ESTIMATORS if any(f"ope_{n}" in r for r in runs)]
    if not names:
        return pd.DataFrame()
    rows = []
    for policy in sorted({r["policy"] for r in runs}):
        group = [r for r in runs if r["policy"] == policy]
        row: dict[str, Any] = {"policy": policy, "seeds": len(group)}
        for key in ("true_expected_clicks", "expected_clicks", "logged_clicks"):
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                row[key] = statistics.fmean(values)
        for n in names:
            values = [r[f"ope_{n}"] for r in group if r.get(f"ope_{n}") is not None]
            if values:
                row[n] = statistics.fmean(values)
                row[f"{n}_support"] = statistics.fmean(r[f"ope_{n}_support"] for r in group)
        rows.append(row)
    return pd.DataFrame(rows)


def opinions_markdown(table: pd.DataFrame) -> str:
    """The two-opinions table as Markdown (estimates with their support in parentheses)."""
    from agents.ope import ESTIMATORS

    plain = [c for c in ("true_expected_clicks", "expected_clicks", "logged_clicks") if c in table]
    names = [n for n in ESTIMATORS if n in table]
    head = ["policy", "seeds", *plain, *names]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for _, row in table.iterrows():
        cells = [str(row["policy"]), str(row["seeds"])]
        cells += ["" if pd.isna(row[c]) else f"{row[c]:.4f}" for c in plain]
        cells += [
            "" if pd.isna(row[n]) else f"{row[n]:.4f} ({row[n + '_support']:.0%})" for n in names
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, print the table, write ``compare.csv``."""
    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__)
    parser.add_argument("sweep", type=Path, help="directory holding the runs' metrics.json")
    parser.add_argument("--metric", action="append", help="metrics to show (repeatable)")
    args = parser.parse_args(argv)
    metrics = tuple(args.metric) if args.metric else DEFAULT_METRICS
    try:
        runs = load_runs(args.sweep)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    table = compare(runs, metrics)
    table.to_csv(args.sweep / "compare.csv", index=False)
    incomplete = incomplete_runs(args.sweep)
    if incomplete:
        print(f"**{len(incomplete)} run(s) of this sweep are not in the table:**\n")
        for job, why in incomplete:
            print(f"- `{job}`: {why}")
        print()
    print(markdown(table, metrics))
    opinions = two_opinions(runs)
    if len(opinions):
        opinions.to_csv(args.sweep / "ope.csv", index=False)
        print(
            "\nTwo opinions of each policy's clicks per request: the simulator "
            "(`expected_clicks`), off-policy estimates of the same final slates at the logged "
            "positions (share of requests with support), the log's own (`logged_clicks`):\n"
        )
        print(opinions_markdown(opinions))


if __name__ == "__main__":
    main()
