"""Compare a sweep's runs: a report with seed intervals, paired tests and plots.

Usage::

    rankgym compare outputs/train-multirun/2026-11-23_01-40-00
    rankgym compare <sweep dir> reference=cosine group_by=[agent,encoder] \\
        metric=true_expected_clicks

Every ``metrics.json`` below the directory is one run; runs are grouped by ``group_by`` (config
keys of the runs' ``run_config.yaml``: ``agent`` groups by the agent's name, ``encoder`` by the
encoder's, any other key by its value). Written beside the runs:

* ``report.md``: per group, each metric's mean over seeds with a 95% Student-t interval over
  seeds (and the median of the runs' own session-bootstrap intervals); then the **paired**
  difference of every group from the ``reference`` group (default ``cosine``) in ``metric``
  per request, on the same held-out requests (each group's runs averaged per request): a 95%
  session-bootstrap interval and the p-value of a paired t-test on the per-session differences,
  marked ``*`` when significant at 5% after a Holm correction across the groups; then the two
  opinions (simulator and off-policy estimates) where the log has propensities; then the plots;
* ``results.csv`` (one row per group, the paired columns included) and ``ope.csv``;
* ``learning_curves.png`` (the valid metric against timesteps from the runs' TensorBoard
  files, read by TensorBoard's ``EventAccumulator``: mean and min-max band over seeds;
  untrained baselines as dashed lines at their valid value), ``final.png`` (the test metric
  with its seed interval) and, when the sweep holds an Optuna study (``optuna.db``), its
  optimisation history and parameter importances (Optuna's own plots).

The report also goes to stdout (without the images).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from rankgym.experiments.sweeps import ERROR_FILE

DEFAULT_METRICS = ("true_expected_clicks", "expected_clicks", "ctr@1", "ndcg@10", "mrr")
# a sequential world's runs lead with their long-term metrics (docs/long-term-value.md)
LONG_TERM_METRICS = ("true_long_term_value", "session_length", "sessions", "return_rate")
# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
ALPHA = 0.05


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    sd = statistics.stdev(values)
    t = T975[min(len(values) - 1, len(T975)) - 1]
    half = t * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def load_runs(root: Path, group_by: tuple[str, ...] = ("agent",)) -> list[dict[str, Any]]:
    """Every run's ``metrics.json`` below ``root``, with ``_dir`` (its directory) and
    ``group`` (its label under ``group_by``) added."""
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        run = json.loads(path.read_text())
        run["_dir"] = path.parent
        file = path.parent / "run_config.yaml"
        config = OmegaConf.to_container(OmegaConf.load(file)) if file.is_file() else {}
        run["group"] = group_label(config, run, group_by)
        runs.append(run)
    if not runs:
        raise FileNotFoundError(f"{root}: no metrics.json below it (is this a sweep directory?)")
    return runs


def group_label(config: dict[str, Any], metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A run's group: the values of ``keys`` in its config joined by ``/`` (a config group
    such as ``agent`` or ``encoder`` by its ``name``; ``agent`` falls back to the metrics'
    ``policy``)."""
    parts = []
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node = node.get("name") or str(node.get("_target_", "?")).rsplit(".", 1)[-1]
        if node is None and key == "agent":
            node = metrics.get("policy")
        parts.append(str(node))
    return "/".join(parts)


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
    """One row per group: seeds, and per metric the mean and 95% interval over seeds."""
    rows = []
    for name in sorted({group_of(r) for r in runs}):
        group = [r for r in runs if group_of(r) == name]
        row: dict[str, Any] = {"policy": name, "seeds": len(group)}
        for m in metrics:
            values = [r[m] for r in group if r.get(m) is not None]
            if not values:
                continue
            mean, low, high = seed_interval(values)
            row[m], row[f"{m}_low"], row[f"{m}_high"] = mean, low, high
            lows = [r[f"{m}_ci_low"] for r in group if r.get(f"{m}_ci_low") is not None]
            highs = [r[f"{m}_ci_high"] for r in group if r.get(f"{m}_ci_high") is not None]
            if lows:
                row[f"{m}_session_ci"] = (statistics.median(lows), statistics.median(highs))
        row["train_seconds"] = statistics.fmean(r.get("train_seconds", 0.0) for r in group)
        rows.append(row)
    table = pd.DataFrame(rows)
    key = next((m for m in metrics if m in table), "seeds")
    return table.sort_values(key, ascending=False).reset_index(drop=True)


def group_of(run: dict[str, Any]) -> str:
    """The run's group label (its policy name when it was not loaded by :func:`load_runs`)."""
    return str(run.get("group", run.get("policy")))


def markdown(table: pd.DataFrame, metrics: tuple[str, ...]) -> str:
    """The table as Markdown: ``mean [low, high]`` over seeds per metric."""
    shown = [m for m in metrics if m in table]
    lines = ["| policy | seeds | " + " | ".join(shown) + " | train s |",
             "| --- | ---: | " + " | ".join("---:" for _ in shown) + " | ---: |"]  # fmt: skip
    for _, row in table.iterrows():
        cells = [interval_cell(row, m) for m in shown]
        lines.append(
            f"| {row['policy']} | {row['seeds']} | " + " | ".join(cells)
            + f" | {row['train_seconds']:.0f} |"
        )  # fmt: skip
    return "\n".join(lines)


def interval_cell(row: pd.Series, m: str) -> str:
    """``mean [low, high]`` of metric ``m`` in a row of :func:`compare`'s table."""
    if pd.isna(row[m]):
        return ""
    return f"{row[m]:.4f} [{row[f'{m}_low']:.4f}, {row[f'{m}_high']:.4f}]"


# ---------------------------------------------------------------------- paired statistics
# a sequential world's per-episode metrics, paired episode by episode: the per-request column
# each sums
PER_EPISODE = {"long_term_value": "expected_clicks", "true_long_term_value": "true_expected_clicks"}


def per_request(runs: list[dict[str, Any]], metric: str) -> pd.DataFrame:
    """``metric`` per held-out request, averaged over the runs (seeds) of one group, with the
    request's session: from the runs' ``per_request.parquet``. A sequential world's long-term
    values come per episode instead (an episode in both columns)."""
    tables = []
    for run in runs:
        file = Path(run["_dir"]) / "per_request.parquet"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing; rerun the run to compare it pairwise")
        table = pd.read_parquet(file)
        if metric in PER_EPISODE and "episode" in table:
            # a sequential world's value per episode: its requests' clicks summed, each
            # weighted by the chance the user reached it (the policies reached different
            # requests; they share the episodes)
            weighted = table[PER_EPISODE[metric]] * table.get("survival", 1.0)
            clicks = weighted.groupby(table["episode"]).sum()
            table = pd.DataFrame({"request": clicks.index, "session": clicks.index,
                                  metric: clicks.to_numpy()})  # fmt: skip
        if metric not in table:
            raise ValueError(f"{file}: no column {metric!r}; has {', '.join(table.columns[2:])}")
        tables.append(table[["request", "session", metric]])
    both = pd.concat(tables)
    return both.groupby(["request", "session"], as_index=False)[metric].mean()


def paired_difference(
    a: pd.DataFrame, b: pd.DataFrame, metric: str, bootstrap: int = 2000, seed: int = 0
) -> dict[str, float]:
    """``a - b`` in ``metric`` per request, on the requests both hold.

    Returns the mean difference per request, its 95% percentile bootstrap interval (whole
    sessions resampled, the evaluation's own :func:`rankgym.agents.evaluation.bootstrap_intervals`),
    the two-sided p-value of a paired t-test on the per-session totals of the difference
    (sessions are the independent units; 1.0 when every difference is 0), and the counts.
    """
    from scipy import stats

    from rankgym.agents.evaluation import bootstrap_intervals

    both = a.merge(b, on=["request", "session"], suffixes=("_a", "_b"))
    if both.empty:
        raise ValueError("the two groups share no held-out request: they were evaluated on "
                         "different data or splits")  # fmt: skip
    diff = (both[f"{metric}_a"] - both[f"{metric}_b"]).to_numpy(dtype=np.float64)
    session = both["session"].to_numpy()
    low, high = bootstrap_intervals({"d": diff}, session, bootstrap, seed)["d"]
    totals = pd.Series(diff).groupby(session).sum().to_numpy()
    if not np.any(totals):
        p = 1.0
    elif len(totals) < 2:
        p = float("nan")
    else:
        p = float(stats.ttest_1samp(totals, 0.0).pvalue)
    return {"diff": float(diff.mean()), "diff_low": low, "diff_high": high, "p_value": p,
            "n_requests": len(diff), "n_sessions": len(totals)}  # fmt: skip


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone; NaN stays NaN)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p == p)
    m, adjusted, running = len(order), [float("nan")] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_table(
    runs: list[dict[str, Any]], reference: str, metric: str, bootstrap: int, seed: int
) -> pd.DataFrame:
    """Every group against ``reference`` (:func:`paired_difference`), Holm-corrected."""
    groups = sorted({group_of(r) for r in runs})
    if reference not in groups:
        raise ValueError(f"reference={reference!r} is not a group of this sweep; groups: "
                         f"{', '.join(groups)}")  # fmt: skip
    ref = per_request([r for r in runs if group_of(r) == reference], metric)
    rows = []
    for name in groups:
        if name != reference:
            mine = per_request([r for r in runs if group_of(r) == name], metric)
            rows.append({"policy": name, **paired_difference(mine, ref, metric, bootstrap, seed)})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table["p_value"].tolist())
        table["significant"] = table["p_holm"] < ALPHA
    return table


def paired_markdown(table: pd.DataFrame, reference: str, metric: str) -> str:
    """The paired table as Markdown, ``*`` marking Holm-significant differences."""
    unit, units = ("episode", "episodes") if metric in PER_EPISODE else ("request", "sessions")
    lines = [f"| policy | {metric} - {reference} (per {unit}) | 95% interval | p | p (Holm) | "
             f"{units} |", "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for _, row in table.iterrows():
        mark = " *" if row["significant"] else ""
        lines.append(
            f"| {row['policy']} | {row['diff']:+.4f}{mark} | [{row['diff_low']:+.4f}, "
            f"{row['diff_high']:+.4f}] | {row['p_value']:.3g} | {row['p_holm']:.3g} | "
            f"{row['n_sessions']} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- plots
def learning_curves(runs: list[dict[str, Any]], metric: str) -> dict[str, pd.DataFrame]:
    """Per group, ``eval/<metric>`` (the periodic valid evaluations) against timesteps: one
    column per run, read with TensorBoard's ``EventAccumulator``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[pd.Series]] = {}
    for run in runs:
        points: dict[int, float] = {}
        for events in sorted((Path(run["_dir"]) / "tensorboard").glob("events.out.tfevents.*")):
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            if f"eval/{metric}" in acc.Tags()["scalars"]:
                points.update({e.step: e.value for e in acc.Scalars(f"eval/{metric}")})
        if points:
            curves.setdefault(group_of(run), []).append(pd.Series(points).sort_index())
    return {g: pd.concat(s, axis=1) for g, s in curves.items()}


def plot_learning_curves(runs: list[dict[str, Any]], metric: str, file: Path) -> bool:
    """``learning_curves.png``: mean and min-max band over seeds per group; baselines (no
    curve) as dashed lines at their mean valid value. ``False`` when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = learning_curves(runs, metric)
    flat = {}
    for name in sorted({group_of(r) for r in runs} - set(curves)):
        values = [r[f"valid_{metric}"] for r in runs
                  if group_of(r) == name and r.get(f"valid_{metric}") is not None]  # fmt: skip
        if values:
            flat[name] = statistics.fmean(values)
    if not curves and not flat:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, table in sorted(curves.items()):
        table = table.interpolate(limit_area="inside")
        mean = table.mean(axis=1)
        line = ax.plot(mean.index, mean.values, marker="o", markersize=3, label=name)[0]
        ax.fill_between(mean.index, table.min(axis=1), table.max(axis=1), alpha=0.2,
                        color=line.get_color())  # fmt: skip
    for name, value in sorted(flat.items()):
        ax.axhline(value, linestyle="--", linewidth=1, color="0.4")
        ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), fontsize=8,
                    ha="right", va="bottom", color="0.3")  # fmt: skip
    ax.set_xlabel("timesteps")
    ax.set_ylabel(f"{metric} (valid sessions)")
    ax.set_title("Learning curves: mean and min-max over seeds")
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return True


def plot_final(table: pd.DataFrame, metric: str, file: Path) -> bool:
    """``final.png``: the test metric per group with its 95% seed interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in table:
        return False
    rows = table.dropna(subset=[metric]).sort_values(metric)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    err = np.vstack([rows[metric] - rows[f"{metric}_low"], rows[f"{metric}_high"] - rows[metric]])
    ax.barh(rows["policy"], rows[metric], xerr=err, capsize=3, color="#4c72b0")
    low = float((rows[f"{metric}_low"]).min())
    ax.set_xlim(left=max(0.0, low - 0.1 * abs(low)))
    ax.set_xlabel(f"{metric} (test sessions), 95% interval over seeds")
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return True


def plot_optuna(root: Path) -> list[tuple[str, str]]:
    """Optuna's optimisation history and parameter importances of every study stored in
    ``root/optuna.db``, as PNGs; ``(title, file name)`` of each written (or why not)."""
    db = root / "optuna.db"
    if not db.is_file():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db}"
    written = []
    for summary in optuna.study.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        plots = {
            "history": optuna.visualization.matplotlib.plot_optimization_history,
            "importances": optuna.visualization.matplotlib.plot_param_importances,
        }
        for kind, plot in plots.items():
            name = f"optuna_{summary.study_name}_{kind}.png"
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few trials
                written.append((f"{summary.study_name} {kind}: not drawn ({err})", ""))
                continue
            ax.figure.set_size_inches(7, 4.2)
            ax.figure.tight_layout()
            ax.figure.savefig(root / name, dpi=110)
            plt.close(ax.figure)
            written.append((f"Optuna study {summary.study_name}: {kind}", name))
    return written


def two_opinions(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Per policy, the mean over seeds of the simulator's value, each off-policy estimate and
    its support, and the true value when there is one (empty without ``ope_*`` metrics)."""
    from rankgym.agents.ope import ESTIMATORS

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
        for bound in ("low", "high"):  # the simulator's epistemic interval (an ensemble's)
            values = [r[f"expected_clicks_epi_{bound}"] for r in group
                      if r.get(f"expected_clicks_epi_{bound}") is not None]  # fmt: skip
            if values:
                row[f"epi_{bound}"] = statistics.fmean(values)
        for n in names:
            values = [r[f"ope_{n}"] for r in group if r.get(f"ope_{n}") is not None]
            if values:
                row[n] = statistics.fmean(values)
                row[f"{n}_support"] = statistics.fmean(r[f"ope_{n}_support"] for r in group)
        rows.append(row)
    return pd.DataFrame(rows)


def epistemic_cell(row: pd.Series, column: str) -> str:
    """`` [low, high]``: the simulator's epistemic interval, after its ``expected_clicks``."""
    if column != "expected_clicks" or pd.isna(row.get("epi_low", np.nan)):
        return ""
    return f" [{row['epi_low']:.4f}, {row['epi_high']:.4f}]"


def opinions_markdown(table: pd.DataFrame) -> str:
    """The two-opinions table as Markdown (estimates with their support in parentheses; the
    simulator's value with its 90% epistemic interval when its reward model is an ensemble)."""
    from rankgym.agents.ope import ESTIMATORS

    plain = [c for c in ("true_expected_clicks", "expected_clicks", "logged_clicks") if c in table]
    names = [n for n in ESTIMATORS if n in table]
    head = ["policy", "seeds", *plain, *names]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for _, row in table.iterrows():
        cells = [str(row["policy"]), str(row["seeds"])]
        cells += [
            "" if pd.isna(row[c]) else f"{row[c]:.4f}" + epistemic_cell(row, c) for c in plain
        ]
        cells += [
            "" if pd.isna(row[n]) else f"{row[n]:.4f} ({row[n + '_support']:.0%})" for n in names
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``key=value`` tokens (``reference=cosine``, ``group_by=[agent,encoder]``,
    ``metric=...``, ``bootstrap=2000``, ``seed=0``) as a dict, the value parsed as YAML."""
    import yaml

    allowed = {"reference": str, "group_by": list, "metric": str, "bootstrap": int, "seed": int}
    out: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"{token!r}: expected key=value with key one of {', '.join(allowed)}")
        parsed = yaml.safe_load(value)
        if allowed[key] is list and isinstance(parsed, str):
            parsed = [parsed]
        if not isinstance(parsed, allowed[key]) or isinstance(parsed, bool):
            raise ValueError(f"{key}={value}: expected {allowed[key].__name__}")
        out[key] = parsed
    return out


def report(root: Path, metrics: tuple[str, ...], options: dict[str, Any]) -> str:
    """Write ``report.md``, ``results.csv``, ``ope.csv`` and the plots; return the report."""
    group_by = tuple(options.get("group_by", ["agent"]))
    runs = load_runs(root, group_by)
    if metrics == DEFAULT_METRICS and any("long_term_value" in r for r in runs):
        metrics = LONG_TERM_METRICS + metrics
    table = compare(runs, metrics)
    metric = options.get("metric") or next(
        (m for m in ("true_long_term_value", "true_expected_clicks", "expected_clicks")
         if m in table),
        metrics[0],
    )  # fmt: skip
    reference = options.get("reference", "cosine")
    lines = [f"# Sweep {root}", "", f"{len(runs)} runs, grouped by {', '.join(group_by)}.", ""]
    incomplete = incomplete_runs(root)
    if incomplete:
        lines += [f"**{len(incomplete)} run(s) of this sweep are not in the table:**", ""]
        lines += [f"- `{job}`: {why}" for job, why in incomplete] + [""]
    lines += ["Test sessions; mean over seeds [95% interval over seeds]:", "",
              markdown(table, metrics), ""]  # fmt: skip
    groups = {group_of(r) for r in runs}
    if reference in groups and len(groups) > 1:
        try:
            paired = paired_table(runs, reference, metric, options.get("bootstrap", 2000),
                                  options.get("seed", 0))  # fmt: skip
        except (FileNotFoundError, ValueError) as err:  # e.g. runs from before per_request
            lines += [f"No paired differences: {err}", ""]
        else:
            table = table.merge(paired, on="policy", how="left")
            held = "episodes" if metric in PER_EPISODE else "requests"
            lines += [f"Paired differences from `{reference}` on the same held-out {held} "
                      "(* significant at 5% after Holm's correction):", "",
                      paired_markdown(paired, reference, metric), ""]  # fmt: skip
    elif len(groups) > 1:
        lines += [f"No paired differences: reference={reference!r} is not a group "
                  f"({', '.join(sorted(groups))}).", ""]  # fmt: skip
    table.to_csv(root / "results.csv", index=False)
    opinions = two_opinions(runs)
    if len(opinions):
        opinions.to_csv(root / "ope.csv", index=False)
        lines += ["Two opinions of each policy's clicks per request: the simulator "
                  "(`expected_clicks`), off-policy estimates of the same final slates at the "
                  "logged positions (share of requests with support), the log's own "
                  "(`logged_clicks`):", "", opinions_markdown(opinions), ""]  # fmt: skip
    text = "\n".join(lines)
    images = []
    if plot_learning_curves(runs, metric, root / "learning_curves.png"):
        images.append(("Learning curves (valid sessions)", "learning_curves.png"))
    if plot_final(table, metric, root / "final.png"):
        images.append((f"Final {metric} (test sessions)", "final.png"))
    images += plot_optuna(root)
    figures = [f"![{title}]({name})" if name else f"- {title}" for title, name in images]
    (root / "report.md").write_text(text + "\n" + "\n\n".join(figures) + "\n")
    return text


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, write the report, print it."""
    parser = argparse.ArgumentParser(
        prog="rankgym compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", type=Path, help="directory holding the runs' metrics.json")
    parser.add_argument("overrides", nargs="*", help="reference=..., group_by=[...], metric=...")
    parser.add_argument("--metric", action="append", help="metrics of the table (repeatable)")
    args = parser.parse_args(argv)
    metrics = tuple(args.metric) if args.metric else DEFAULT_METRICS
    try:
        text = report(args.sweep, metrics, parse_overrides(args.overrides))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(text)
    print(f"\nwrote {args.sweep / 'report.md'}, {args.sweep / 'results.csv'} and the plots")


if __name__ == "__main__":
    main()
