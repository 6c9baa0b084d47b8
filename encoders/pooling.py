"""User-state pooling: a user's state is a weighted mean of the embeddings of the items in
their history (oldest first), optionally mixed with a profile embedding.

Histories travel as a right-aligned ``int64[B, H]`` matrix (most recent item in the last column,
``-1`` padding on the left), built once from CSR form by :func:`pad_histories`, so that pooling a
batch of users is a single vectorised gather and weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POOLING_METHODS = ("mean", "decay", "last_k")

_GATHER_ELEMENTS = 1 << 22  # bound on the B * H * d gathered values held at once (float32)


def pad_histories(offsets: np.ndarray, items: np.ndarray, max_len: int) -> np.ndarray:
    """Right-aligned matrix of each user's last ``max_len`` items.

    Args:
        offsets: ``int64[U + 1]`` CSR offsets; user ``u``'s history (oldest first) is
            ``items[offsets[u]:offsets[u + 1]]``.
        items: ``int32[H]`` non-negative item codes.
        max_len: number of columns kept (the most recent items).

    Returns:
        ``int64[U, max_len]``: row ``u`` ends with the user's most recent item; shorter
        histories are padded with ``-1`` on the left.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items)
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 1:
        raise ValueError(f"max_len={max_len!r}: expected an int >= 1")
    if offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError(f"offsets: expected a 1-D array of U + 1 >= 1 values, got {offsets.shape}")
    if items.ndim != 1:
        raise ValueError(f"items: expected a 1-D array, got shape {items.shape}")
    if offsets[0] < 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > len(items):
        raise ValueError(
            f"offsets must be non-decreasing within [0, len(items)={len(items)}], "
            f"got first={offsets[0]}, last={offsets[-1]}"
        )
    if len(items) and items.min() < 0:
        raise ValueError(f"items: codes must be >= 0 (-1 is padding), got {items.min()}")

    n_users = len(offsets) - 1
    take = np.minimum(np.diff(offsets), max_len)
    out = np.full((n_users, max_len), -1, dtype=np.int64)
    rows = np.repeat(np.arange(n_users), take)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(take) - take, take)  # 0 .. take-1
    first = offsets[1:] - take  # index in items of the oldest kept item
    out[rows, max_len - take[rows] + within] = items[first[rows] + within]
    return out


def append_history(history: np.ndarray, new_items: np.ndarray) -> np.ndarray:
    """Append items (``-1`` = nothing) to right-aligned histories, keeping the last ``H``.

    Args:
        history: ``int64[B, H]``, ``-1`` padding on the left.
        new_items: ``int64[B, S]`` in the order they happened.
    """
    both = np.concatenate([history, new_items], axis=1)
    order = np.argsort(both >= 0, axis=1, kind="stable")  # padding first, items keep their order
    return np.take_along_axis(both, order, axis=1)[:, -history.shape[1] :]


def pool_user_state(
    item_embeddings: np.ndarray,
    histories: np.ndarray,
    method: str = "mean",
    decay: float = 0.8,
    k: int = 5,
    profile: np.ndarray | None = None,
    profile_weight: float = 0.0,
) -> np.ndarray:
    """Pool each user's history into a state vector.

    Slot weights: ``mean`` 1 per item; ``decay`` ``decay ** age``; ``last_k`` 1 for the ``k``
    most recent items. ``age`` is 0 for the most recent item and counts non-padded slots, so
    for right-aligned input (as from :func:`pad_histories`) it is the distance to the last
    column. The state is the weighted mean of the items' embeddings; an empty history gives
    zeros (never NaN).

    With a ``profile``, the state is ``(1 - profile_weight) * pooled + profile_weight *
    profile``, except that a user with an empty history gets the profile alone (when
    ``profile_weight > 0``): the mixture is renormalised over the sources the user has, so
    cold-start users are not shrunk towards zero.

    Args:
        item_embeddings: ``float[N, d]`` table indexed by item code.
        histories: ``int64[B, H]`` item codes in ``[0, N)``, ``-1`` for padding.
        method: one of :data:`POOLING_METHODS`.
        decay: per-step recency decay, in ``(0, 1]`` (used by ``decay``).
        k: number of recent items kept, ``>= 1`` (used by ``last_k``).
        profile: optional ``float[B, d]`` per-user profile embedding.
        profile_weight: weight of the profile, in ``[0, 1]``.

    Returns:
        ``float32[B, d]`` user states.
    """
    if method not in POOLING_METHODS:
        raise ValueError(f"method={method!r}: expected one of {POOLING_METHODS}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay={decay!r}: expected 0 < decay <= 1")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k={k!r}: expected an int >= 1")
    if not 0 <= profile_weight <= 1:
        raise ValueError(f"profile_weight={profile_weight!r}: expected 0 <= profile_weight <= 1")
    item_embeddings = np.asarray(item_embeddings)
    histories = np.asarray(histories)
    if item_embeddings.ndim != 2:
        raise ValueError(f"item_embeddings: expected [N, d], got shape {item_embeddings.shape}")
    if histories.ndim != 2 or not np.issubdtype(histories.dtype, np.integer):
        raise ValueError(
            f"histories: expected an integer [B, H] array, got {histories.dtype} {histories.shape}"
        )
    n_items, d = item_embeddings.shape
    bad = (histories >= n_items) | (histories < -1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"histories row {row} has item code {histories[row, col]} outside [0, {n_items}) "
            "(-1 is padding)"
        )
    n_users, hist_len = histories.shape
    if profile is not None:
        profile = np.asarray(profile)
        if profile.shape != (n_users, d):
            raise ValueError(f"profile: expected shape {(n_users, d)}, got {profile.shape}")

    weights = pooling_weights(histories, method, decay, k)
    total = (histories >= 0).sum(axis=1)
    pooled = np.zeros((n_users, d), dtype=np.float32)
    codes = np.where(histories >= 0, histories, 0)
    step = max(1, _GATHER_ELEMENTS // max(1, hist_len * d))
    for start in range(0, n_users, step):  # chunks bound the [B, H, d] gather's memory
        stop = start + step
        gathered = item_embeddings[codes[start:stop]].astype(np.float32, copy=False)
        pooled[start:stop] = np.einsum("bh,bhd->bd", weights[start:stop], gathered)

    if profile is not None and profile_weight > 0:
        mix = np.where(total > 0, np.float32(profile_weight), np.float32(1.0))[:, None]
        pooled = (1 - mix) * pooled + mix * profile.astype(np.float32, copy=False)
    return pooled.astype(np.float32, copy=False)


def pooling_weights(
    histories: np.ndarray, method: str = "mean", decay: float = 0.8, k: int = 5
) -> np.ndarray:
    """``float32[B, H]`` weight of each history slot in the pooled state (rows sum to 1 or 0).

    The one definition of the pooling methods: :func:`pool_user_state` applies these weights,
    and ``ids`` observations carry them so that policies pool exactly as the environment does.
    """
    valid = np.asarray(histories) >= 0
    if method == "mean":
        weights = valid.astype(np.float32)
    else:
        age = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1] - 1  # 0 = most recent non-padded item
        if method == "decay":
            weights = np.where(valid, float(decay) ** np.maximum(age, 0), 0.0)
        else:
            weights = (valid & (age < k)).astype(np.float64)
    total = weights.sum(axis=1, keepdims=True)
    return (weights / np.where(total > 0, total, 1)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class UserPooling:
    """How a user's state is pooled: the settings every consumer of the state shares.

    The replay engine pools with them, ``ids`` observations carry the resulting weights, and a
    click model that reads the user state (``neural``) is fitted with them, so the agent, the
    baselines and the reward model all see one user state.

    Args:
        history_len: most recent history items kept.
        method, decay, last_k: see :func:`pool_user_state`.
        profile_weight: weight of the profile embedding, in ``[0, 1]``.
    """

    history_len: int = 20
    method: str = "mean"
    decay: float = 0.8
    last_k: int = 5
    profile_weight: float = 0.0

    def weights(self, histories: np.ndarray) -> np.ndarray:
        """``float32[B, H]`` slot weights (see :func:`pooling_weights`)."""
        return pooling_weights(histories, self.method, self.decay, self.last_k)

    def pool(
        self, items: np.ndarray, histories: np.ndarray, profiles: np.ndarray | None = None
    ) -> np.ndarray:
        """``float32[B, d]`` states of right-aligned ``histories`` (``profiles``: ``[B, d]``)."""
        return pool_user_state(
            items, histories, method=self.method, decay=self.decay, k=self.last_k,
            profile=profiles if self.profile_weight > 0 else None,
            profile_weight=self.profile_weight,
        )  # fmt: skip

    def pre_log_states(
        self, items: np.ndarray, offsets: np.ndarray, history: np.ndarray, profiles: np.ndarray
    ) -> np.ndarray:
        """``float32[U, d]`` every user's state before the log (CSR histories, profiles)."""
        return self.pool(items, pad_histories(offsets, history, self.history_len), profiles)
