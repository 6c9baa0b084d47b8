"""The neural click model's own input vectors: texts, feature columns, item statistics, and the
user states pooled over them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankgym.encoders.encoded_log import EncodedLog
from rankgym.encoders.pooling import UserPooling, append_history, pad_histories
from rankgym.envs.click_models.base import logged_rankings
from rankgym.logs import SessionLog


@dataclass(frozen=True)
class Tables:
    """Items, queries, profiles and user features as ``float32`` rows in one ``D``-wide space.

    Attributes:
        items: ``[n_items, D]``: ``[text, item features, 0]`` (then the item statistic).
        queries: ``[n_queries, D]``: ``[text, 0, 0]``.
        user_profiles: ``[n_users, D]``: ``[text, 0, 0]``.
        user_features: ``[n_users, D]``: ``[0, 0, user features]``, added to the pooled state,
            so ``u * i`` pairs the history's features with the item's.
        shown: ``int64[n_items]`` each item's impressions in the training log (with item
            statistics, while fitting; empty otherwise and after loading).
    """

    items: np.ndarray
    queries: np.ndarray
    user_profiles: np.ndarray
    user_features: np.ndarray
    shown: np.ndarray

    @classmethod
    def of(cls, encoded: EncodedLog, use_features: bool) -> Tables:
        """The tables of ``encoded``'s texts and (with ``use_features``) feature columns."""
        ifeat = encoded.item_features if use_features else encoded.item_features[:, :0]
        ufeat = encoded.user_features if use_features else encoded.user_features[:, :0]
        d, fi, fu = encoded.dim, ifeat.shape[1], ufeat.shape[1]
        pad = lambda a, left, right: np.pad(a, ((0, 0), (left, right)))  # noqa: E731
        as32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        tables = [
            pad(np.hstack([encoded.items, ifeat]), 0, fu),
            pad(encoded.queries, 0, fi + fu),
            pad(encoded.user_profiles, 0, fi + fu),
            pad(ufeat, d + fi, 0),
        ]
        # a dimension that is 0 in every table changes no input of the MLP: drop it (a log
        # without texts, such as OBD, keeps only its features; 10x less work per candidate)
        used = np.zeros(d + fi + fu, dtype=bool)
        for table in tables:
            used |= (table != 0).any(axis=0)
        items, queries, profiles, features = (as32(table[:, used]) for table in tables)
        return cls(items, queries, profiles, features, np.zeros(0, dtype=np.int64))

    def with_item_statistics(self, train: SessionLog) -> Tables:
        """One more item column: the item's impressions in ``train``, ``log1p`` and z-scored.

        How often the logger showed an item says something its text does not (it shows more
        often what it ranks higher), most for items too rarely shown for their own bias to be
        learned. The other tables get a zero column.
        """
        shown = np.bincount(train.item.astype(np.int64), minlength=train.n_items)
        column = _shown_column(shown, shown)
        zeros = lambda a: np.zeros((len(a), 1), dtype=np.float32)  # noqa: E731
        queries, profiles, features = (
            np.hstack([a, zeros(a)]) for a in (self.queries, self.user_profiles, self.user_features)
        )
        return Tables(np.hstack([self.items, column[:, None]]), queries, profiles, features, shown)

    def shown_column(self, shown: np.ndarray) -> np.ndarray:
        """``log1p(shown)`` z-scored by the training log's per-item counts (``self.shown``)."""
        return _shown_column(shown, self.shown)

    def left_out_statistics(self, log: SessionLog, width: int) -> np.ndarray:
        """``float32[R, width]``: the item column of each logged slot of ``log`` (a part of the
        training log), its count without the slot's own session: a fitted or calibrating
        request sees what a held-out one does, not its own impressions (counting them made the
        simulator undervalue every policy by 1-14% on the PBM world)."""
        session = log.request_session[log.impression_request]
        key = session.astype(np.int64) * log.n_items + log.item.astype(np.int64)
        _, inverse, own = np.unique(key, return_inverse=True, return_counts=True)
        shown = self.shown[log.item.astype(np.int64)] - own[inverse]
        out = np.zeros((log.n_requests, width), dtype=np.float32)
        keep = log.position < width
        out[log.impression_request[keep], log.position[keep]] = self.shown_column(shown[keep])
        return out

    def pool(self, pooling: UserPooling, history: np.ndarray, users: np.ndarray) -> np.ndarray:
        """``float32[B, D]`` user states of ``history`` (item codes) over the item rows, plus
        the users' features."""
        state = pooling.pool(self.items, history, self.user_profiles[users])
        return state + self.user_features[users]

    def request_states(
        self, log: SessionLog, pooling: UserPooling, session: bool = True
    ) -> np.ndarray:
        """``float32[R, D]`` each logged request's user state, built as the env builds it.

        The env starts a session from the user's pre-log history and appends the items clicked
        in each request before pooling the next one's state; so does this, with the logged
        clicks. (Fitting on pre-log states alone and serving in-session ones made the model
        overestimate every policy.) ``session=False``: the pre-log history alone, for a model
        served so (``session_history``).
        """
        initial = pad_histories(
            log.user_history_offsets, log.user_history_items, pooling.history_len
        )
        rankings, clicks = logged_rankings(log)
        clicked = np.where(clicks == 1, rankings, -1)
        starts = log.session_offsets[:-1].astype(np.int64)
        lengths = np.diff(log.session_offsets)
        history = initial[log.request_user[starts]]
        states = np.zeros((log.n_requests, self.items.shape[1]), dtype=np.float32)
        for j in range(int(lengths.max(initial=0))):  # the j-th request of every session
            alive = np.flatnonzero(lengths > j)
            req = starts[alive] + j
            states[req] = self.pool(pooling, history[alive], log.request_user[req])
            if session:
                history[alive] = append_history(history[alive], clicked[req])
        return states


def _shown_column(shown: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``log1p(shown)`` z-scored by ``log1p(reference)``'s mean and deviation."""
    ref = np.log1p(reference)
    return ((np.log1p(shown) - ref.mean()) / max(float(ref.std()), 1e-6)).astype(np.float32)
