"""A TPE sampler for searches that are resumed (``conf/hparams_search/*_optuna.yaml``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.samplers import TPESampler


class ResumableTPESampler(TPESampler):
    """Optuna's TPE sampler whose random numbers for trial ``n`` are seeded by ``(seed, n)``.

    A seeded ``TPESampler`` starts its random stream again in every process, so a resumed
    study proposes again the settings it already tried: checked here, trial 2 of a resumed
    search repeated trial 0 exactly. With the stream reseeded per trial, trial ``n`` draws the
    same numbers whether the search ran in one go or was killed and resumed, and the trials
    after a resume are new ones. Arguments are ``TPESampler``'s.
    """

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed
        self._seeded_for: int | None = None

    def _reseed_for(self, trial: Any) -> None:
        if self._base_seed is None or self._seeded_for == trial.number:
            return
        self._seeded_for = trial.number
        seed = (self._base_seed * 1_000_003 + trial.number) % 2**32
        self._rng = np.random.RandomState(seed)
        self._random_sampler._rng = np.random.RandomState(seed)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        """TPE's joint sampling (``multivariate``), from this trial's random stream."""
        self._reseed_for(trial)
        return super().sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, dist: Any) -> Any:
        """TPE's per-parameter sampling, from this trial's random stream."""
        self._reseed_for(trial)
        return super().sample_independent(study, trial, param_name, dist)
