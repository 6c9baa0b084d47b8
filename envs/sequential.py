"""A sequential world's per-row user state in the replay engine: satiation, the session's
satisfaction, and how likely the user is still there.

:class:`~rankgym.envs.replay.ReplayEngine` owns one :class:`UserFlow` when its reward model has
dynamics (:meth:`~rankgym.envs.click_models.base.ClickModel.user_dynamics`). After each request
the flow decides what comes next, in one of two ways (``env.user_choices``):

* ``sampled``: the user's choices are drawn (counter-based, like the clicks): they issue the
  session's next request, or the session ends and, with ``episode=user``, they come back after a
  drawn gap, or leave. An episode ends when they leave.
* ``expected``: nothing is drawn. The episode walks the whole latent timeline and carries the
  probability that the user is still there, ``survival``: the product of the continuation
  probabilities so far, and at a session's end the probability of coming back (summed over
  where in the session the user could have left). A request's clicks are weighted by it, so an
  episode's reward is its expected clicks over every way the user could have left: the
  long-term value with no sampling noise. After a session, satiation is the mixture over those
  leaving points (exact up to the nonlinearity of attractiveness in satiation), recovered by
  the expected factor of the exponential gap.
"""

from __future__ import annotations

import numpy as np

from rankgym.logs.dynamics import UserDynamics


class UserFlow:
    """Per-row dynamics state of ``B`` replays.

    Attributes:
        satiation: ``float64[B, G]`` per item group.
        survival: ``float64[B]`` the probability that the user reached the current request
            (``expected`` mode; always 1 in ``sampled`` mode).
        transition: ``float64[B, 3]`` what the last finished request led to: the chance of
            the session's next request, the chance of leaving there and coming back for the
            following session, and 1 where the session ended there (``sampled``: 0 or 1 each).
            What a learner crediting a request with what follows it reads
            (:class:`~rankgym.agents.policies.PositionRolloutBuffer`).
    """

    def __init__(self, dynamics: UserDynamics, num_envs: int, expected: bool) -> None:
        self.dynamics, self.expected = dynamics, expected
        b = num_envs
        self.satiation = dynamics.initial_satiation(b)
        self.pleasure = np.zeros(b)  # the session's satisfying clicks so far
        self.survival = np.ones(b)
        self.transition = np.zeros((b, 3))
        # expected mode: the current session's reach, the chance of returning after it, and the
        # satiation the returning user brings (weighted by where they could have left)
        self.reach = np.ones(b)
        self.comeback = np.zeros(b)
        self.carry = np.zeros_like(self.satiation)

    def start(self, rows: np.ndarray) -> None:
        """New episodes: a user who has seen nothing recently and is surely there."""
        for array in (self.satiation, self.pleasure, self.comeback, self.carry):
            array[rows] = 0.0
        self.survival[rows] = self.reach[rows] = 1.0

    def satiate(self, rows: np.ndarray, attr: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The attractiveness of ``items`` for the users of ``rows``, given their satiation."""
        return self.dynamics.satiate(attr, items, self.satiation[rows])

    def advance(
        self,
        rows: np.ndarray,
        items: np.ndarray,
        probs: np.ndarray,
        next_in_session: np.ndarray,
        next_session: np.ndarray,
        draws: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        """After rows' requests showed ``items`` with click ``probs`` (``[n, L]``): where each
        goes next (an episode position, ``-1``: the episode ends).

        Args:
            next_in_session, next_session: the episode positions of the session's next request
                and of the following session's first (``-1``: none).
            draws: ``sampled`` mode: three uniforms per row (continue, return, gap).
        """
        dyn = self.dynamics
        clicks = probs.sum(axis=1)
        pleased = dyn.satisfaction(probs, items)
        self.satiation[rows] = dyn.expose(self.satiation[rows], items)
        self.pleasure[rows] += pleased
        session = self.pleasure[rows]
        goes_on = np.where(next_in_session >= 0, dyn.continue_prob(pleased, clicks), 0.0)
        can_return = next_session >= 0
        if draws is not None:
            u, v, w = draws
            stay = u < goes_on
            back = ~stay & can_return & (v < dyn.return_prob(session))
            if back.any():  # the days away (exponential around the mean) restore satiation
                gap = -dyn.mean_gap_days(session[back]) * np.log1p(-w[back])
                self.satiation[rows[back]] = dyn.recover(self.satiation[rows[back]], gap)
            self.transition[rows] = np.stack([stay, back, ~stay], axis=1)
        else:
            reach = self.reach[rows]
            # leaving here and coming back: its chance, and the satiation it brings
            returns = np.where(can_return, (1 - goes_on) * dyn.return_prob(session), 0.0)
            weight = reach * returns
            kept = weight * dyn.expected_recovery(session)
            self.comeback[rows] += weight
            self.carry[rows] += kept[:, None] * self.satiation[rows]
            stay = goes_on > 0
            back = ~stay & (self.comeback[rows] > 0)
            self.transition[rows] = np.stack([goes_on, returns, ~stay], axis=1)
            # the survival of the next request: within the session, times the continuation;
            # the following session's first, the session's whole chance of a return
            start = self.survival[rows] / reach
            self.survival[rows] = np.where(stay, self.survival[rows] * goes_on,
                                           start * self.comeback[rows])  # fmt: skip
            self.reach[rows] = np.where(stay, reach * goes_on, 1.0)
            if back.any():
                r = rows[back]
                self.satiation[r] = self.carry[r] / self.comeback[r][:, None]
                self.carry[r] = 0.0
                self.comeback[r] = 0.0
        self.pleasure[rows[back]] = 0.0
        return np.where(stay, next_in_session, np.where(back, next_session, -1))
