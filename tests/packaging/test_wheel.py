"""The distribution installs one import package, ``rankgym``, and lives beside PyPI's ``envs``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "rankgym", "logs", "encoders", "envs", "agents",
           "experiments", "conf")  # fmt: skip

CHECK = """
import importlib.resources, sys
import envs
import rankgym, rankgym.logs, rankgym.encoders, rankgym.envs, rankgym.agents
import rankgym.envs.click_models, rankgym.experiments.cli, rankgym.experiments.train
prefix = sys.argv[1]
assert rankgym.__file__.startswith(prefix), rankgym.__file__
assert rankgym.envs.__file__.startswith(prefix), rankgym.envs.__file__
assert envs.__file__.startswith(prefix) and hasattr(envs, "Env"), envs.__file__
assert importlib.resources.files("rankgym.conf").joinpath("config.yaml").is_file()
print("ok", rankgym.__version__)
"""


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_one_package_beside_pypi_envs(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources, install it with PyPI's ``envs`` into a
    fresh venv (dependencies borrowed from this interpreter's site-packages), import both."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("rankgym-*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"rankgym"}

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, "envs")
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())  # fmt: skip
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    assert run(python, "-c", CHECK, str(venv), cwd=tmp_path).startswith("ok")
    assert "usage: rankgym <command>" in run(venv / "bin" / "rankgym", "--help", cwd=tmp_path)
    config = run(venv / "bin" / "rankgym", "train", "--cfg", "job", cwd=tmp_path)
    assert "_target_: rankgym.envs.click_models.simple.TruthClickModel" in config


def test_every_package_folder_is_in_the_distribution() -> None:
    """A new subpackage (a folder with ``__init__.py`` under a mapped folder) must be listed in
    ``pyproject.toml``, or the wheel silently ships without it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = config["package-dir"]
    assert set(config["packages"]) == set(folders)
    found = set()
    for package, folder in folders.items():
        if package.count(".") != 1:
            continue  # nested mappings are found from their parent's folder
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    assert found <= set(config["packages"]), sorted(found - set(config["packages"]))
