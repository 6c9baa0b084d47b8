"""The shape every dataset source shares, so ``rankgym prepare`` treats them all alike."""

from __future__ import annotations

from pathlib import Path

from rankgym.logs.session_log import SessionLog


class LogSource:
    """Base of the dataset configs (``conf/dataset/*.yaml`` instantiate a subclass).

    Subclasses are dataclasses with a ``name`` field and validate their arguments in
    ``__post_init__``; they implement :meth:`build`. Sources that save more than the log (the
    synthetic world saves its ground truth) override :meth:`write`.
    """

    name: str

    def build(self) -> SessionLog:
        """Read the raw data and return the validated canonical log."""
        raise NotImplementedError

    def write(self, out: str | Path) -> SessionLog:
        """Build the log and write the canonical directory ``out`` atomically."""
        log = self.build()
        log.write(out)
        return log
