"""The ``rankgym <command>`` dispatcher."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from rankgym.experiments.cli import COMMANDS, main


def test_every_command_is_an_entry_point_module() -> None:
    assert set(COMMANDS) >= {"train", "prepare", "evaluate", "compare", "fidelity", "export",
                             "serve", "bench"}  # fmt: skip
    for command in COMMANDS:
        assert callable(importlib.import_module(f"rankgym.experiments.{command}").main), command


def test_unknown_command_names_the_allowed_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train, evaluate" in err


def test_no_command_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    out = capsys.readouterr().out
    assert out.startswith("usage: rankgym <command>")
    assert all(f"  {command} " in out for command in COMMANDS)


def test_console_script_passes_arguments_through(tmp_path: Path) -> None:
    """The installed ``rankgym`` script reaches an argparse command with its own arguments,
    and a Hydra command finds the packaged configs from any working directory."""
    script = Path(sys.executable).parent / "rankgym"  # installed beside this interpreter
    assert script.is_file(), f"{script}: missing; install rankgym (pip install -e .)"
    done = subprocess.run([str(script), "compare", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "reference" in done.stdout
    done = subprocess.run([str(script), "train", "--cfg", "job", "agent=dqn"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "_target_: rankgym.agents.training.SB3Agent" in done.stdout
    assert "name: dqn" in done.stdout
