"""A sweep through a real Slurm: ``hydra/launcher=slurm`` (submitit) on a local cluster.

Opt-in (``-m slurm``) and skipped where there is no Slurm: bring one up with
``bash tests/slurm/cluster.sh up`` (after ``apt-get install -y slurm-wlm munge``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_sweeps import sweep


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and any(s in done.stdout for s in ("idle", "mix", "alloc"))


@pytest.mark.slurm
@pytest.mark.skipif(not cluster_up(), reason="no running Slurm (bash tests/slurm/cluster.sh up)")
def test_a_sweep_runs_through_slurm(tmp_path: Path) -> None:
    done = sweep(tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                 "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                 "hydra.launcher.timeout_min=10", "agent=cosine", "seed=0,1,2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*/metrics.json"))
    assert len(jobs) == 3
    seeds = sorted(json.loads(f.read_text())["seed"] for f in jobs)
    assert seeds == [0, 1, 2]
    for f in jobs:
        metrics = json.loads(f.read_text())
        assert metrics["torch_threads"] == 1  # the job's cpus_per_task
        assert metrics["true_expected_clicks"] > 0
    # each job ran as a Slurm job: submitit kept its Slurm script and the job's own log
    scripts = list((tmp_path / "sweep" / ".submitit").rglob("*_submission.sh"))
    assert scripts and "#SBATCH --partition=debug" in scripts[0].read_text()
    assert list((tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
