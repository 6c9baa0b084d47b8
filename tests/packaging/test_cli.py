"""The ``rankgym <command>`` dispatcher."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from rankgym.experiments.cli import COMMANDS, main
from tests.commands import command


def test_every_command_is_an_entry_point_module() -> None:
    assert set(COMMANDS) >= {"train", "prepare", "evaluate", "compare", "fidelity", "export",
                             "serve", "bench"}  # fmt: skip
    for name in COMMANDS:
        assert callable(importlib.import_module(f"rankgym.experiments.{name}").main), name


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
    assert all(f"  {name} " in out for name in COMMANDS)


def test_console_script_passes_arguments_through(tmp_path: Path) -> None:
    """The installed ``rankgym`` script reaches an argparse command with its own arguments,
    and a Hydra command finds the packaged configs from any working directory."""
    done = command("compare", "--help")
    assert done.returncode == 0, done.stderr
    assert "reference" in done.stdout
    done = command("train", "--cfg", "job", "agent=dqn", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "_target_: rankgym.agents.training.SB3Agent" in done.stdout
    assert "name: dqn" in done.stdout
