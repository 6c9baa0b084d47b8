"""User-state pooling and history padding against small hand-computed references."""

from __future__ import annotations

import numpy as np
import pytest

from rankgym.encoders import pooling
from rankgym.encoders.pooling import POOLING_METHODS, pad_histories, pool_user_state

# 4 items in 2-D, easy to follow by hand
EMB = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 3.0]], dtype=np.float32)
HIST = np.array(
    [
        [-1, -1, 0, 1],  # oldest 0, most recent 1
        [2, 3, 0, 1],  # full
        [-1, -1, -1, -1],  # empty
        [-1, -1, -1, 3],  # one item
    ],
    dtype=np.int64,
)


def reference(method: str, decay: float = 0.8, k: int = 5) -> np.ndarray:
    """Python-loop reference: weighted mean over each user's non-padded items."""
    out = np.zeros((len(HIST), EMB.shape[1]))
    for b, row in enumerate(HIST):
        items = [int(c) for c in row if c >= 0]
        ages = list(range(len(items) - 1, -1, -1))  # 0 = most recent
        if method == "mean":
            w = [1.0] * len(items)
        elif method == "decay":
            w = [decay**a for a in ages]
        else:
            w = [1.0 if a < k else 0.0 for a in ages]
        if sum(w) > 0:
            out[b] = sum(wi * EMB[i] for wi, i in zip(w, items, strict=True)) / sum(w)
    return out


def test_mean_by_hand() -> None:
    got = pool_user_state(EMB, HIST, "mean")
    assert got.dtype == np.float32 and got.shape == (4, 2)
    np.testing.assert_allclose(got[0], [0.5, 0.5])
    np.testing.assert_allclose(got[1], [0.5, 1.5])  # (1+0+2-1)/4, (0+1+2+3)/4
    np.testing.assert_array_equal(got[2], [0.0, 0.0])
    np.testing.assert_allclose(got[3], [-1.0, 3.0])


def test_decay_by_hand() -> None:
    got = pool_user_state(EMB, HIST, "decay", decay=0.5)
    # row 0: item 1 weight 1, item 0 weight 0.5 -> ([0.5, 0] + [0, 1]) / 1.5
    np.testing.assert_allclose(got[0], [1 / 3, 2 / 3], rtol=1e-6)
    # row 1: weights 1/8, 1/4, 1/2, 1 on items 2, 3, 0, 1
    expected = (EMB[2] / 8 + EMB[3] / 4 + EMB[0] / 2 + EMB[1]) / (1 / 8 + 1 / 4 + 1 / 2 + 1)
    np.testing.assert_allclose(got[1], expected, rtol=1e-6)


def test_last_k_by_hand() -> None:
    got = pool_user_state(EMB, HIST, "last_k", k=2)
    np.testing.assert_allclose(got[1], (EMB[0] + EMB[1]) / 2)
    np.testing.assert_allclose(got[3], EMB[3])
    np.testing.assert_array_equal(got[2], [0.0, 0.0])


@pytest.mark.parametrize("method", POOLING_METHODS)
@pytest.mark.parametrize(("decay", "k"), [(0.8, 5), (0.3, 1), (1.0, 3)])
def test_methods_match_loop_reference(method: str, decay: float, k: int) -> None:
    got = pool_user_state(EMB, HIST, method, decay=decay, k=k)
    np.testing.assert_allclose(got, reference(method, decay, k), rtol=1e-6, atol=1e-7)
    assert not np.isnan(got).any()


def test_decay_one_and_large_k_equal_mean() -> None:
    mean = pool_user_state(EMB, HIST, "mean")
    np.testing.assert_allclose(pool_user_state(EMB, HIST, "decay", decay=1.0), mean, rtol=1e-6)
    np.testing.assert_allclose(pool_user_state(EMB, HIST, "last_k", k=4), mean, rtol=1e-6)


@pytest.mark.parametrize("gather_elements", [1 << 22, 100])  # 100: chunks of one user
def test_random_batch_matches_reference_and_chunking(
    gather_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pooling, "_GATHER_ELEMENTS", gather_elements)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    lengths = rng.integers(0, 12, size=300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(0, 50, size=offsets[-1]).astype(np.int32)
    hist = pad_histories(offsets, items, 10)
    got = pool_user_state(emb, hist, "decay", decay=0.7)
    for u in range(300):
        recent = items[offsets[u] : offsets[u + 1]][-10:]
        w = 0.7 ** np.arange(len(recent))[::-1]
        want = (w @ emb[recent]) / w.sum() if len(recent) else np.zeros(8)
        np.testing.assert_allclose(got[u], want, rtol=1e-5, atol=1e-6)


def test_profile_mixing() -> None:
    profile = np.array([[10.0, 0.0]] * 4, dtype=np.float32)
    pooled = pool_user_state(EMB, HIST, "mean")
    got = pool_user_state(EMB, HIST, "mean", profile=profile, profile_weight=0.25)
    has = [0, 1, 3]
    np.testing.assert_allclose(got[has], 0.75 * pooled[has] + 0.25 * profile[has], rtol=1e-6)
    np.testing.assert_allclose(got[2], profile[2])  # empty history: the profile alone
    # profile_weight 0 ignores the profile, 1 keeps only it
    zero = pool_user_state(EMB, HIST, "mean", profile=profile, profile_weight=0.0)
    np.testing.assert_array_equal(zero, pooled)
    one = pool_user_state(EMB, HIST, "mean", profile=profile, profile_weight=1.0)
    np.testing.assert_allclose(one, profile)


def loop_pad(offsets: np.ndarray, items: np.ndarray, max_len: int) -> np.ndarray:
    out = np.full((len(offsets) - 1, max_len), -1, dtype=np.int64)
    for u in range(len(offsets) - 1):
        recent = items[offsets[u] : offsets[u + 1]][-max_len:]
        if len(recent):
            out[u, max_len - len(recent) :] = recent
    return out


@pytest.mark.parametrize("max_len", [1, 3, 8, 40])
def test_pad_histories_matches_loop(max_len: int) -> None:
    rng = np.random.default_rng(max_len)
    lengths = rng.integers(0, 20, size=200)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, 1000, size=offsets[-1]).astype(np.int32)
    got = pad_histories(offsets, items, max_len)
    assert got.dtype == np.int64 and got.shape == (200, max_len)
    np.testing.assert_array_equal(got, loop_pad(offsets, items, max_len))


def test_pad_histories_small_cases() -> None:
    offsets = np.array([0, 3, 3, 4], dtype=np.int64)
    items = np.array([5, 6, 7, 8], dtype=np.int32)
    np.testing.assert_array_equal(pad_histories(offsets, items, 2), [[6, 7], [-1, -1], [-1, 8]])
    assert pad_histories(np.array([0]), np.array([], dtype=np.int32), 3).shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "max"}, r"method='max': expected one of \('mean', 'decay', 'last_k'\)"),
        ({"decay": 0.0}, r"decay=0.0: expected 0 < decay <= 1"),
        ({"decay": 1.5}, r"decay=1.5"),
        ({"k": 0}, r"k=0: expected an int >= 1"),
        ({"profile_weight": 1.5}, r"profile_weight=1.5: expected 0 <= profile_weight <= 1"),
        ({"profile": np.zeros((3, 2)), "profile_weight": 0.5}, r"profile: expected shape"),
    ],
)
def test_pool_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pool_user_state(EMB, HIST, **kwargs)


def test_out_of_range_codes_name_first_bad_row() -> None:
    bad = HIST.copy()
    bad[1, 0] = 4
    bad[3, 3] = 99
    with pytest.raises(ValueError, match=r"histories row 1 has item code 4 outside \[0, 4\)"):
        pool_user_state(EMB, bad)
    bad = HIST.copy()
    bad[2, 1] = -2
    with pytest.raises(ValueError, match=r"histories row 2 has item code -2"):
        pool_user_state(EMB, bad)


@pytest.mark.parametrize(
    ("offsets", "items", "max_len", "match"),
    [
        ([0, 2], [1, 2], 0, r"max_len=0: expected an int >= 1"),
        ([0, 3], [1, 2], 2, r"offsets must be non-decreasing within \[0, len\(items\)=2\]"),
        ([0, 2, 1], [1, 2], 2, r"offsets must be non-decreasing"),
        ([0, 2], [1, -1], 2, r"items: codes must be >= 0"),
    ],
)
def test_pad_validation(offsets: list, items: list, max_len: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pad_histories(np.array(offsets), np.array(items), max_len)
