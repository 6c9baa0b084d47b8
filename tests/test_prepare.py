"""The `rankgym prepare` command line: through Hydra's command line in this process, and for
real in two processes at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rankgym.experiments import prepare as prepare_command
from rankgym.logs import SessionLog
from rankgym.logs.ground_truth import GroundTruth
from tests.commands import ROOT, hydra_command


def prepare(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """``rankgym prepare`` with ``overrides`` (in this process): exit status and output."""
    return hydra_command(prepare_command.main, f"paths.root_dir={cwd}", *overrides)


def test_prepare_synthetic_writes_validated_world(tmp_path: Path) -> None:
    out = tmp_path / "world"
    done = prepare(f"out={out}", "dataset.scale=0.1", "dataset.propensity_samples=20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout[done.stdout.index("{") :])
    log = SessionLog.read(out)
    assert stats["impressions"] == log.n_impressions > 5000
    assert stats["ctr"] == round(float(log.click.mean()), 5)
    assert log.meta["params"]["scale"] == 0.1
    GroundTruth.load(out).check_log(log.item_ids, log.user_ids)
    assert (tmp_path / "outputs" / "prepare").is_dir()  # Hydra run dir with .hydra/


def test_prepare_obd_fixture(tmp_path: Path) -> None:
    out = tmp_path / "obd"
    fixture = ROOT / "tests" / "fixtures" / "obd"
    done = prepare("dataset=obd", f"dataset.path={fixture}", f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = SessionLog.read(out)
    raw = pd.read_csv(fixture / "random" / "all" / "all.csv", index_col=0)
    assert log.n_impressions == len(raw)
    assert log.click.sum() == raw.click.sum()
    assert sorted(log.position + 1) == sorted(raw.position)


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "log.csv"
    pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r2"],
            "user_id": ["u", "u", "u"],
            "timestamp": [1, 1, 2],
            "item_id": ["a", "b", "a"],
            "position": [0, 1, 0],
            "click": [0, 3, 1],
        }
    ).to_csv(bad, index=False)
    out = tmp_path / "out"
    done = prepare("dataset=table", f"dataset.impressions={bad}", f"out={out}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {bad}, row 1, column 'click': click value 3 is not binary; allowed values: 0, 1"
    ]
    assert not out.exists()


def test_bad_config_value_names_key_and_allowed_values(tmp_path: Path) -> None:
    done = prepare("dataset.click_model=dbn", f"out={tmp_path / 'x'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: dataset.click_model='dbn'; allowed: pbm, cascade"
    done = prepare("dataset=nope", cwd=tmp_path)
    assert done.returncode != 0
    assert "Could not find 'dataset/nope'" in done.stderr and "synthetic" in done.stderr


def test_prepare_encode_fills_the_store_once(tmp_path: Path) -> None:
    args = ("dataset.scale=0.05", "dataset.propensity_samples=10", "encode=true", "encoder=tiny")
    first = prepare(*args, f"out={tmp_path / 'w'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    enc = json.loads(first.stdout[first.stdout.index("{") :])["encoding"]
    log = SessionLog.read(tmp_path / "w")
    assert enc["texts"] == log.n_items + len(log.query_texts) + log.n_users
    assert 0 < enc["newly_encoded"] <= enc["texts"] and enc["dim"] == 32
    assert Path(enc["store"]).is_dir()
    second = prepare(*args, f"out={tmp_path / 'w'}", cwd=tmp_path)
    assert json.loads(second.stdout[second.stdout.index("{") :])["encoding"]["newly_encoded"] == 0


def test_encoder_config_error_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "w"
    done = prepare("encode=true", "encoder=bert", f"out={out}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: Missing mandatory value: encoder.path"]
    assert not out.exists()


def test_out_never_replaces_a_directory_rankgym_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    done = prepare(f"out={mine}", "dataset.scale=0.05", "dataset.propensity_samples=5",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {mine}: holds files rankgym did not write (no meta.json)")
    assert (mine / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.tex"]
    # an empty directory and an earlier dataset are fine to (re)write
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, empty):
        again = prepare(f"out={out}", "dataset.scale=0.05", "dataset.propensity_samples=5",
                        cwd=tmp_path)  # fmt: skip
        assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_concurrent_writers_of_one_out_both_succeed(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "rankgym.experiments.prepare", f"paths.root_dir={tmp_path}",
            f"out={out}", "dataset.scale=0.05", "dataset.propensity_samples=5"]  # fmt: skip
    for _ in range(3):
        procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]  # fmt: skip
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [r[1][-1500:] for r in results]
        assert SessionLog.read(out).n_impressions > 1000
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".shared.")]
    assert leftovers == []
