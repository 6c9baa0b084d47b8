"""Embedding tables for a SessionLog: one row per item, query and user code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankgym.encoders.base import TextEncoder
from rankgym.encoders.features import feature_table
from rankgym.encoders.store import EmbeddingStore
from rankgym.logs import SessionLog


@dataclass(eq=False)
class EncodedLog:
    """Text embeddings aligned with a :class:`SessionLog`'s string tables.

    Row ``i`` of ``items`` embeds ``log.item_texts[i]``; likewise ``queries`` for
    ``log.query_texts`` and ``user_profiles`` for ``log.user_texts``. Every split of a log shares
    these tables, because splits never renumber items, queries or users.

    Attributes:
        items: ``float32[I, d]``.
        queries: ``float32[Q, d]``.
        user_profiles: ``float32[U, d]`` (zeros where the profile text is empty).
        encoder_name: the encoder's name.
        fingerprint: the encoder's fingerprint; later artifacts (reward models, rankers) record it
            and refuse tables made by another encoder.
        item_features: ``float32[I, F_i]`` the log's item feature columns as numbers
            (:func:`rankgym.encoders.features.feature_table`; ``F_i = 0`` without feature columns).
        user_features: ``float32[U, F_u]`` likewise for users.
    """

    items: np.ndarray
    queries: np.ndarray
    user_profiles: np.ndarray
    encoder_name: str
    fingerprint: str
    item_features: np.ndarray | None = None
    user_features: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.item_features is None:
            self.item_features = np.zeros((len(self.items), 0), dtype=np.float32)
        if self.user_features is None:
            self.user_features = np.zeros((len(self.user_profiles), 0), dtype=np.float32)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.items.shape[1])

    def check(self, log: SessionLog) -> None:
        """Raise when the tables do not fit ``log`` (another dataset or a stale cache)."""
        for name, table, expected in (
            ("items", self.items, log.n_items),
            ("queries", self.queries, len(log.query_texts)),
            ("user_profiles", self.user_profiles, log.n_users),
        ):
            if len(table) != expected:
                raise ValueError(
                    f"encoded {name} has {len(table)} rows but the log has {expected}: the "
                    "embeddings were made for another dataset"
                )
            if table.shape[1] != self.dim:
                raise ValueError(f"encoded {name} has dim {table.shape[1]}, expected {self.dim}")
        for name, table, expected in (
            ("item_features", self.item_features, log.n_items),
            ("user_features", self.user_features, log.n_users),
        ):
            if len(table) != expected:
                raise ValueError(
                    f"encoded {name} has {len(table)} rows but the log has {expected}: the "
                    "features were made for another dataset"
                )


def encode_log(
    log: SessionLog,
    encoder: TextEncoder,
    store: EmbeddingStore | None = None,
    progress: bool = True,
) -> EncodedLog:
    """Encode the item, query and user-profile texts of ``log`` (each distinct text once).

    With a ``store``, texts encoded by an earlier run (of any dataset) are read from disk.
    Empty user profiles and empty item texts get zero vectors, so "no text" carries no signal
    (items described by features only). The log's feature columns become ``item_features`` and
    ``user_features``.
    """
    texts = np.concatenate([log.item_texts, log.query_texts, log.user_texts]).tolist()
    if store is not None:
        vectors = store.embed(texts, encoder, progress=progress)
    else:
        distinct, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
        vectors = encoder.encode(distinct.tolist())[inverse]
    n_items, n_queries = log.n_items, len(log.query_texts)
    users = vectors[n_items + n_queries :].copy()
    users[log.user_texts == ""] = 0.0
    items, no_text = vectors[:n_items], log.item_texts == ""
    if no_text.any():
        items = items.copy()
        items[no_text] = 0.0
    return EncodedLog(
        items=items,
        queries=vectors[n_items : n_items + n_queries],
        user_profiles=users,
        encoder_name=encoder.name,
        fingerprint=encoder.fingerprint,
        item_features=feature_table(log.item_features, n_items)[0],
        user_features=feature_table(log.user_features, log.n_users)[0],
    )
