"""Benchmarks, measured side by side in one process on the same input.

Usage::

    python -m experiments.bench data [--scales 1 10] [--repeats 5] [--json out.json]

``data``: synthetic generation throughput (impressions/s, including validation and encoding) at
each scale, then, on the files written at the largest scale, ``SessionLog.read`` (read + validate
+ integer-encode) against a plain ``pandas.read_parquet`` of the same three files, and against
``pyarrow.parquet.read_table`` as the floor. Times are medians over ``--repeats``; ratios come from
the same run on the same machine, which is what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from envs.logs import SessionLog
from envs.logs.synthetic import SyntheticWorld

FILES = ("impressions.parquet", "items.parquet", "users.parquet")


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_data(scales: list[float], repeats: int) -> dict[str, Any]:
    """Generation throughput per scale, then read paths compared on the largest world."""
    results: dict[str, Any] = {"generation": [], "read": {}}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "world"
        for scale in scales:
            start = time.perf_counter()
            log = SyntheticWorld(scale=scale).write(out)
            seconds = time.perf_counter() - start
            results["generation"].append(
                {
                    "scale": scale,
                    "impressions": log.n_impressions,
                    "seconds": round(seconds, 3),
                    "impressions_per_s": round(log.n_impressions / seconds),
                }
            )
            print(f"generate scale={scale}: {log.n_impressions:,} impressions in {seconds:.2f}s")
        n = log.n_impressions

        def pandas_read() -> None:
            for name in FILES:
                pd.read_parquet(out / name)

        def arrow_read() -> None:
            for name in FILES:
                pq.read_table(out / name)

        timings = {
            "SessionLog.read": median_time(lambda: SessionLog.read(out), repeats),
            "pandas.read_parquet": median_time(pandas_read, repeats),
            "pyarrow.read_table": median_time(arrow_read, repeats),
        }
        base = timings["pandas.read_parquet"]
        results["read"] = {
            "impressions": n,
            "repeats": repeats,
            **{
                k: {
                    "seconds": round(v, 4),
                    "impressions_per_s": round(n / v),
                    "time_vs_pandas": round(v / base, 2),
                }
                for k, v in timings.items()
            },
        }
        # what the extra time buys: a batch of sessions is array indexing, not a groupby
        log = SessionLog.read(out)
        frame = pd.read_parquet(out / "impressions.parquet")
        pick = np.random.default_rng(0).choice(log.n_sessions, 256, replace=False)
        ids = set(log.session_ids[pick])
        results["batch_of_256_sessions"] = {
            "SessionLog.select_sessions_s": round(
                median_time(lambda: log.select_sessions(pick), repeats), 5
            ),
            "pandas_isin_groupby_s": round(
                median_time(
                    lambda: [g for _, g in frame[frame.session_id.isin(ids)].groupby("request_id")],
                    repeats,
                ),
                5,
            ),
        }
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run one benchmark."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="synthetic generation and SessionLog.read vs pandas")
    data.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    data.add_argument("--repeats", type=int, default=5)
    data.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if any(s <= 0 for s in args.scales):
        parser.error(f"--scales must be > 0, got {args.scales}")
    results = {
        "benchmark": args.what,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        **bench_data(args.scales, args.repeats),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
