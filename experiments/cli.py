"""The ``rankgym`` command: ``rankgym <command> [overrides or arguments]``.

Each command is one module of :mod:`rankgym.experiments`, so ``rankgym train agent=dqn`` runs
exactly what ``python -m rankgym.experiments.train agent=dqn`` runs: Hydra commands take Hydra
overrides (and ``-m`` for a sweep), the others their own arguments (``rankgym compare --help``).
"""

from __future__ import annotations

import importlib
import sys

# command -> what it does (the module rankgym.experiments.<command> runs it)
COMMANDS = {
    "prepare": "generate or convert a dataset into the canonical format (and embed its texts)",
    "train": "train a policy (or value a baseline); the default experiment",
    "evaluate": "value finished runs under another reward model",
    "compare": "tabulate a sweep: seed intervals, paired tests, plots",
    "fidelity": "value a zoo of policies under the truth, fitted simulators and OPE",
    "export": "export a trained run as a self-contained ONNX ranker",
    "serve": "serve an exported ranker over HTTP",
    "bench": "the benchmarks behind BENCHMARKS.md",
    "obd": "the Open Bandit Dataset table",
}


def usage() -> str:
    """The command list that ``rankgym`` (or ``rankgym --help``) prints."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return (
        "usage: rankgym <command> [hydra overrides | arguments]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nexample: rankgym train agent=dqn seed=1   (rankgym train --help: the config groups)"
    )


def main(argv: list[str] | None = None) -> None:
    """Run ``rankgym.experiments.<command>`` with the remaining arguments.

    An unknown command exits with status 2 and names the allowed ones.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"rankgym: unknown command {command!r}; allowed: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    module = importlib.import_module(f"rankgym.experiments.{command}")
    # every main reads sys.argv: Hydra's overrides, or argparse's arguments
    sys.argv = [f"rankgym {command}", *rest]
    module.main()


if __name__ == "__main__":
    main()
