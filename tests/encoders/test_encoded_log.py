"""encode_log: embedding tables aligned with the SessionLog codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.store import EmbeddingStore
from rankgym.encoders.tiny import tiny_bert_encoder


def test_tables_align_with_codes(small_world, tmp_path: Path) -> None:
    log, _ = small_world
    enc = tiny_bert_encoder()
    store = EmbeddingStore(tmp_path)
    encoded = encode_log(log, enc, store)
    assert encoded.items.shape == (log.n_items, enc.dim)
    assert encoded.queries.shape == (len(log.query_texts), enc.dim)
    assert encoded.fingerprint == enc.fingerprint and encoded.dim == enc.dim
    for i in (0, 17, log.n_items - 1):
        np.testing.assert_allclose(encoded.items[i], enc.encode([log.item_texts[i]])[0], atol=1e-6)
    q = int(np.flatnonzero(log.query_texts != "")[3])
    np.testing.assert_allclose(encoded.queries[q], enc.encode([log.query_texts[q]])[0], atol=1e-6)
    # a split shares the tables: request codes index the same rows
    _, test = log.split(0.2, seed=0)
    encoded.check(test)
    # without a store the result is the same
    plain = encode_log(log, enc)
    np.testing.assert_allclose(plain.items, encoded.items, atol=1e-6)
    # second pass through the store encodes nothing new
    encode_log(log, enc, store)
    assert store.last_new == 0


def test_empty_profiles_are_zero_and_mismatch_is_caught(small_world) -> None:
    log, _ = small_world
    enc = tiny_bert_encoder()
    emptied = log.select_sessions(np.arange(log.n_sessions))
    emptied.user_texts = log.user_texts.copy()
    emptied.user_texts[:5] = ""
    encoded = encode_log(emptied, enc)
    assert not encoded.user_profiles[:5].any() and encoded.user_profiles[5:].any()
    other = log.select_sessions(np.arange(3))
    other.query_texts = other.query_texts[:10]
    with pytest.raises(ValueError, match=r"encoded queries has \d+ rows but the log has 10"):
        encoded.check(other)
