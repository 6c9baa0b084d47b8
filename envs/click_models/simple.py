"""Reward models that need no fitting: the logged click, and the synthetic ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rankgym.envs.click_models.base import MAX_POSITIONS, ClickModel, LogContext
from rankgym.logs import SessionLog
from rankgym.logs.dynamics import UserDynamics
from rankgym.logs.errors import LogValidationError
from rankgym.logs.ground_truth import TRUTH_DIR, GroundTruth


class LoggedClickModel(ClickModel):
    """Replays the logged click of an item in its request, wherever the policy puts it.

    Known bias: a click is tied to the item, not to the position it was shown at, so moving a
    clicked item from position 9 to position 0 earns the same reward, and an item the logging
    policy showed low (rarely examined, rarely clicked) looks unattractive. It is the classic
    replay baseline; prefer ``pbm``/``dcm``/``neural`` (or ``truth`` on the synthetic world).
    """

    name = "logged"
    structure = "independent"
    replays_clicks = True

    def context(self, log: SessionLog) -> LogContext:
        """The log itself; refuses a log with unshown candidates (they have no logged click)."""
        if log.has_unshown:
            source = log.meta.get("source", "this dataset")
            raise ValueError(
                f"reward=logged cannot value candidates that were never shown, and {source} has "
                f"{len(log.unshown_items)} of them (dataset.candidates="
                f"{log.meta.get('params', {}).get('candidates', '?')}): use a reward model "
                "fitted on the shown items (reward=pbm|dcm|cascade|neural) or "
                "dataset.candidates=logged"
            )
        return super().context(log)

    def attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """The logged click (0/1) of each item in the request; 0 for items not shown there."""
        log = context.log
        requests = np.asarray(requests, dtype=np.int64)
        items = np.atleast_2d(items)
        out = np.zeros(items.shape, dtype=np.float64)
        start, end = log.request_offsets[requests], log.request_offsets[requests + 1]
        width = int((end - start).max()) if len(requests) else 0
        for j in range(width):  # loop over list positions, vectorised over the batch
            row = np.minimum(start + j, len(log.item) - 1)
            ok = start + j < end
            shown, clicked = log.item[row], log.click[row]
            hit = ok[:, None] & (items == shown[:, None]) & (items >= 0)
            out = np.where(hit, clicked[:, None].astype(np.float64), out)
        return out


class TruthClickModel(ClickModel):
    """The synthetic world's ground truth (only for datasets written by ``dataset=synthetic``).

    Args:
        path: the synthetic dataset directory holding ``truth/``; or pass ``truth=``.
    """

    name = "truth"

    def __init__(self, path: str | None = None, truth: GroundTruth | None = None) -> None:
        super().__init__()
        if truth is None:
            if path is None:
                raise ValueError("reward=truth needs the synthetic dataset directory (path=...)")
            truth = GroundTruth.load(path)
        self.path = path
        self.truth = truth
        self.structure = truth.click_model
        exam = np.ones(MAX_POSITIONS)
        exam[: min(MAX_POSITIONS, len(truth.examination))] = truth.examination[:MAX_POSITIONS]
        self.examination = exam
        self.abandonment = np.full(MAX_POSITIONS, float(truth.abandonment))

    def context(self, log: SessionLog) -> LogContext:
        """Map the log's requests to truth rows; refuses a log from another world."""
        self.truth.check_log(log.item_ids, log.user_ids)
        context = super().context(log)
        rows = self.truth.request_rows(log.request_ids)
        users = self.truth.request_user[rows]
        if not np.array_equal(users, log.request_user):
            r = int(np.argmax(users != log.request_user))
            raise LogValidationError(
                TRUTH_DIR,
                f"request {log.request_ids[r]!r} belongs to user {log.request_user[r]} in the log "
                f"but to user {users[r]} in the ground truth: the log and truth come from "
                "different worlds",
            )
        context.arrays["rows"] = rows
        return context

    def attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """True click probability given examination."""
        items = np.atleast_2d(items)
        rows = context.arrays["rows"][np.asarray(requests, dtype=np.int64)]
        valid = items >= 0
        attr = self.truth.attractiveness(rows[:, None], np.where(valid, items, 0))
        return np.where(valid, attr, 0.0)

    def user_dynamics(self) -> UserDynamics | None:
        """The sequential world's true dynamics (``None`` in a bandit world), or a
        user-response model fitted beside the truth's clicks (``response``: what that model
        costs on its own, ``rankgym fidelity``)."""
        return self.response if self.response is not None else self.truth.user_dynamics()

    def config(self) -> dict[str, Any]:
        """Saved as a pointer to the dataset directory (the truth lives there)."""
        return {"path": str(Path(self.path).resolve()) if self.path else None}

    def save(self, directory: str | Path) -> None:
        """Save the pointer; the truth itself stays with its dataset."""
        if self.path is None:
            raise ValueError("an in-memory ground truth cannot be saved; build it with path=...")
        super().save(directory)
