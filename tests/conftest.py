"""Shared fixtures: a small synthetic world generated once per test session."""

from __future__ import annotations

import pytest

from rankgym.logs import SessionLog
from rankgym.logs.ground_truth import GroundTruth
from rankgym.logs.synthetic import SyntheticWorld

SMALL_WORLD = {"n_items": 400, "n_users": 120, "n_sessions": 300, "propensity_samples": 50}


@pytest.fixture(scope="session")
def small_world() -> tuple[SessionLog, GroundTruth]:
    """A small synthetic log and its ground truth (a few thousand impressions)."""
    return SyntheticWorld(**SMALL_WORLD).generate()
