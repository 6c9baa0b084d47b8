"""User dynamics of the sequential synthetic world: continuation, satiation and return.

In the bandit world nothing a policy shows changes what comes next. With dynamics on
(``dataset.dynamics=true``, ``experiment=longterm``) three things do, all functions of the slate:

* **Satiation.** Each user carries a satiation level per item group (the synthetic world's
  category). Showing an item at position ``p`` adds the position's exposure weight
  ``1 / (1 + p)`` to its group; the level decays by ``satiation_decay`` per request and halves
  every ``satiation_half_life_days`` between sessions. Attractiveness is the truth's, with
  ``satiation_weight * level`` taken off its logit: repeating one category wins now and loses
  later.
* **Continuation.** After a request the user issues the next one of the session with
  probability ``continue_base + continue_slope * satisfied - disappointment * (clicks -
  satisfied)`` (clipped to ``[0, continue_max]``). ``clicks`` are the slate's expected clicks
  and ``satisfied`` the expected *satisfying* ones: each click probability times the item's
  satisfaction (:func:`item_satisfaction`: from its hidden quality and its price band, which
  its title shows). A click on a poor item disappoints: an attractive but poor item (a cheap
  one, often) wins a click now and shortens the session.
* **Return.** With ``env.episode=user``, after a session the user comes back for their next
  session with probability ``return_base + return_slope * session satisfaction`` (clipped to
  ``[0, return_max]``), after a gap whose mean is ``gap_days * exp(-gap_slope * session
  satisfaction)`` days; a user who does not return has left for good.

The same functions drive the logging policy's users when the world is generated and the
replay engine when a policy is trained or valued, so the logs' session lengths and return
gaps reflect the logger's quality and a policy's long-term value is measured under the same
truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class DynamicsParams:
    """The parameters of :class:`UserDynamics` (saved in ``truth/truth.json``)."""

    satiation_weight: float = 0.4
    satiation_decay: float = 0.8
    satiation_half_life_days: float = 3.0
    satisfaction_slope: float = 1.5
    satisfaction_price: float = 1.5
    continue_base: float = 0.6
    continue_slope: float = 0.6
    disappointment: float = 1.0
    continue_max: float = 0.95
    return_base: float = 0.35
    return_slope: float = 0.25
    return_max: float = 0.95
    gap_days: float = 6.0
    gap_slope: float = 0.3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"dynamics.{f.name}={value}; allowed: a finite number >= 0")
        for key in ("satiation_decay", "continue_max", "return_max", "continue_base"):
            if getattr(self, key) > 1:
                raise ValueError(f"dynamics.{key}={getattr(self, key)}; allowed: [0, 1]")
        if self.satiation_half_life_days == 0 or self.gap_days == 0:
            raise ValueError("dynamics.satiation_half_life_days and gap_days must be > 0")


class UserDynamics:
    """Continuation, satiation and return as vectorised functions of slates.

    Args:
        params: the parameters.
        item_group: ``int[I]`` the satiation group of each item code (``G`` groups).
        item_satisfaction: ``float[I]`` in ``[0, 1]``: how satisfying a click on the item is.
    """

    def __init__(
        self, params: DynamicsParams, item_group: np.ndarray, item_satisfaction: np.ndarray
    ) -> None:
        self.params = params
        self.item_group = np.asarray(item_group, dtype=np.int64)
        self.item_satisfaction = np.asarray(item_satisfaction, dtype=np.float64)
        self.n_groups = int(self.item_group.max(initial=-1)) + 1

    def initial_satiation(self, n: int) -> np.ndarray:
        """``float64[n, G]`` zeros: a user who has seen nothing recently."""
        return np.zeros((n, self.n_groups))

    def satiate(self, attr: np.ndarray, items: np.ndarray, satiation: np.ndarray) -> np.ndarray:
        """Attractiveness ``[B, K]`` of ``items`` (``-1`` padding) for users with
        ``satiation`` ``[B, G]``: the logit lowered by ``satiation_weight * level``."""
        group = self.item_group[np.maximum(items, 0)]
        level = np.take_along_axis(satiation, group, axis=1)
        p = np.clip(attr, 1e-9, 1 - 1e-9)
        logit = np.log(p) - np.log1p(-p) - self.params.satiation_weight * level
        return np.where(items >= 0, 1.0 / (1.0 + np.exp(-logit)), attr)

    def expose(self, satiation: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Satiation after a request showed ``slates`` (``[B, L]`` item codes by position,
        ``-1`` past the end): decay, then each shown item adds ``1 / (1 + position)``."""
        out = satiation * self.params.satiation_decay
        width = slates.shape[1]
        weight = np.broadcast_to(1.0 / (1.0 + np.arange(width)), slates.shape)
        shown = slates >= 0
        rows = np.broadcast_to(np.arange(len(slates))[:, None], slates.shape)
        np.add.at(out, (rows[shown], self.item_group[slates[shown]]), weight[shown])
        return out

    def recover(self, satiation: np.ndarray, gap_days: np.ndarray) -> np.ndarray:
        """Satiation after ``gap_days`` (``[B]``) away: halved every half-life."""
        factor = 0.5 ** (
            np.asarray(gap_days, dtype=np.float64) / self.params.satiation_half_life_days
        )
        return satiation * factor[:, None]

    def expected_recovery(self, session_satisfaction: np.ndarray) -> np.ndarray:
        """``float64[B]`` the mean factor satiation keeps over an exponential gap after a
        session: ``E[0.5 ** (gap / half_life)] = 1 / (1 + mean_gap * ln 2 / half_life)``."""
        rate = np.log(2.0) / self.params.satiation_half_life_days
        return 1.0 / (1.0 + self.mean_gap_days(session_satisfaction) * rate)

    def satisfaction(self, click_probs: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """``float64[B]`` expected satisfying clicks of slates with per-position
        ``click_probs`` (``[B, L]``)."""
        sat = self.item_satisfaction[np.maximum(slates, 0)]
        return np.where(slates >= 0, click_probs * sat, 0.0).sum(axis=1)

    def continue_prob(self, satisfied: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        """``float64[B]`` probability of issuing the session's next request after a slate
        with ``clicks`` expected clicks, ``satisfied`` of them satisfying."""
        p = self.params
        value = (
            p.continue_base + p.continue_slope * satisfied - p.disappointment * (clicks - satisfied)
        )
        return np.clip(value, 0.0, p.continue_max)

    def return_prob(self, session_satisfaction: np.ndarray) -> np.ndarray:
        """``float64[B]`` probability of coming back for the following session."""
        p = self.params
        return np.clip(p.return_base + p.return_slope * session_satisfaction, 0.0, p.return_max)

    def mean_gap_days(self, session_satisfaction: np.ndarray) -> np.ndarray:
        """``float64[B]`` mean days until a returning user's following session."""
        p = self.params
        return p.gap_days * np.exp(-p.gap_slope * np.asarray(session_satisfaction))


def item_satisfaction(quality: np.ndarray, price: np.ndarray, params: DynamicsParams) -> np.ndarray:
    """An item's click satisfaction: ``sigmoid(satisfaction_slope * quality +
    satisfaction_price * (price_band - 1.5))``, from its hidden quality and its price band
    (which its title shows: budget items win clicks and disappoint more)."""
    logit = params.satisfaction_slope * np.asarray(quality, dtype=np.float64)
    logit = logit + params.satisfaction_price * (np.asarray(price, dtype=np.float64) - 1.5)
    return 1.0 / (1.0 + np.exp(-logit))


def play_sessions(
    dynamics: UserDynamics,
    attractiveness: Callable[[np.ndarray, np.ndarray], np.ndarray],
    examination: np.ndarray,
    ranking: np.ndarray,
    session_offsets: np.ndarray,
    session_user: np.ndarray,
    session_start: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Play users forward through their latent sessions, each shown its logged ranking.

    Users step together (a vectorised loop over their k-th session and its j-th request):
    clicks follow the satiated attractiveness, satisfaction decides whether the session's next
    request comes, and after a session whether (and after how many days) the user comes back.
    The synthetic world plays its logging policy's users this way under the truth; a fitted
    user-response model plays the same slates to predict session lengths and return gaps.

    Args:
        dynamics: continuation, satiation and return.
        attractiveness: ``(rows int[n], items int[n, W]) -> float[n, W]`` unsatiated click
            probability given examination of the requests' items (``-1`` padding).
        examination: ``float[W]`` per position.
        ranking: ``int[R, W]`` each latent request's items by position (``-1`` past the end).
        session_offsets: ``int[S + 1]`` each latent session's requests (contiguous).
        session_user, session_start: ``int[S]`` each session's user and start (unix seconds).
        rng: the random stream of every draw.

    Returns:
        ``(reached bool[R], click int8[R, W], time int64[R])``: the requests the users
        reached, their clicks, and every request's time. Every latent session is timed in its
        user's order; one the user never reached as if they had come back after
        ``gap_days``, so that a timeline never interleaves.
    """
    n_r, width = ranking.shape
    first_req = np.asarray(session_offsets[:-1], dtype=np.int64)
    length = np.diff(session_offsets).astype(np.int64)
    max_len = int(length.max(initial=1))
    click = np.zeros((n_r, width), dtype=np.int8)
    reached = np.zeros(n_r, dtype=bool)
    time = np.zeros(n_r, dtype=np.int64)
    order = np.lexsort((session_start, session_user))  # each user's sessions in time
    counts = np.bincount(session_user)
    user_start = np.concatenate([[0], np.cumsum(counts)])
    users = np.flatnonzero(counts > 0)
    satiation = dynamics.initial_satiation(len(users))
    clock = np.asarray(session_start, dtype=np.float64)[order[user_start[users]]]
    alive = np.ones(len(users), dtype=bool)
    steps = np.arange(max_len)
    for k in range(int(counts.max(initial=0))):
        has = counts[users] > k
        sess = order[user_start[users[has]] + k]
        gone = ~alive[has]
        clock[np.flatnonzero(has)[gone]] += dynamics.params.gap_days * SECONDS_PER_DAY
        rows = first_req[sess][:, None] + steps
        stamp = clock[has][:, None] + 45 * steps + rng.integers(0, 40, rows.shape)
        valid = steps < length[sess][:, None]
        time[rows[valid]] = stamp[valid]
        here = np.flatnonzero(alive & has)
        if not len(here):
            continue
        sess = order[user_start[users[here]] + k]
        in_session = np.ones(len(here), dtype=bool)
        total = np.zeros(len(here))
        for j in range(max_len):
            act = np.flatnonzero(in_session)
            if not len(act):
                break
            rows = first_req[sess[act]] + j
            shown = ranking[rows]
            attr = dynamics.satiate(attractiveness(rows, shown), shown, satiation[here[act]])
            probs = np.where(shown >= 0, attr * examination[:width], 0.0)
            click[rows] = (rng.random(probs.shape) < probs) & (shown >= 0)
            reached[rows] = True
            pleased = dynamics.satisfaction(probs, shown)
            total[act] += pleased
            satiation[here[act]] = dynamics.expose(satiation[here[act]], shown)
            last = j + 1 >= length[sess[act]]
            in_session[act] = ~last & (
                rng.random(len(act)) < dynamics.continue_prob(pleased, probs.sum(axis=1))
            )
        back = rng.random(len(here)) < dynamics.return_prob(total)
        gap = rng.exponential(dynamics.mean_gap_days(total))
        alive[here] = back
        satiation[here] = dynamics.recover(satiation[here], gap)
        ended = time[first_req[sess]] + 45 * length[sess]  # after the session's last request
        clock[here] = ended + gap * SECONDS_PER_DAY
    return reached, click, time
