"""HashingEncoder: protocol, determinism across processes, similarity behaviour, validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rankgym.encoders.base import TextEncoder
from rankgym.encoders.hashing import HashingEncoder

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["red leather hiking boots", "Stainless-steel frying pan, 28 cm", "", "a a a b"]


def cosine(encoder: HashingEncoder, a: str, b: str) -> float:
    va, vb = encoder.encode([a, b])
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_protocol_shape_dtype_norm() -> None:
    enc = HashingEncoder(dim=64)
    assert isinstance(enc, TextEncoder)
    assert enc.name == "hashing"
    out = enc.encode(TEXTS)
    assert out.shape == (4, 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[[0, 1, 3]], axis=1), 1.0, rtol=1e-5)
    assert not np.isnan(out).any()
    assert enc.encode([]).shape == (0, 64)


def test_empty_and_punctuation_only_texts_are_zero() -> None:
    out = HashingEncoder().encode(["", "  ,.;!? --", "boots"])
    assert not out[:2].any() and not np.isnan(out).any()
    assert np.linalg.norm(out[2]) == pytest.approx(1.0, rel=1e-5)


def test_unnormalized_keeps_scale() -> None:
    out = HashingEncoder(normalize=False).encode(["boots", "boots boots boots"])
    assert np.linalg.norm(out[0]) > 1.0
    # repeated words are weighted 1 + log(tf), not tf
    np.testing.assert_allclose(out[1], out[0] * (1 + np.log(3)), rtol=1e-5)


def test_tokenisation_is_case_and_punctuation_insensitive() -> None:
    enc = HashingEncoder()
    a, b = enc.encode(["Hiking-Boots, 42", "hiking boots 42"])
    np.testing.assert_array_equal(a, b)
    digits = enc.encode(["boots 42", "boots 43"])
    assert not np.array_equal(digits[0], digits[1])


def test_batches_match_one_shot() -> None:
    texts = [f"item {i} blue shoe size {i % 13}" for i in range(50)]
    one = HashingEncoder(batch_size=4096).encode(texts)
    small = HashingEncoder(batch_size=7).encode(texts)
    np.testing.assert_allclose(one, small, rtol=1e-6, atol=1e-7)
    # the cache does not change results
    enc = HashingEncoder()
    np.testing.assert_array_equal(enc.encode(texts), enc.encode(texts))


def test_deterministic_across_processes() -> None:
    code = (
        "import sys, numpy as np; from rankgym.encoders.hashing import HashingEncoder; "
        f"sys.stdout.buffer.write(HashingEncoder(dim=32).encode({TEXTS!r}).tobytes())"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=True
        ).stdout
        for _ in range(2)
    ]
    here = HashingEncoder(dim=32).encode(TEXTS).tobytes()
    assert runs[0] == runs[1] == here


def test_shared_words_beat_unrelated() -> None:
    enc = HashingEncoder()
    same = cosine(enc, "red leather hiking boots", "leather hiking boots red")
    unrelated = cosine(enc, "red leather hiking boots", "stainless steel frying pan")
    assert same == pytest.approx(1.0, abs=1e-5)  # bag of words: order does not matter
    assert cosine(enc, "red leather hiking boots", "brown hiking boots") > unrelated + 0.3
    assert abs(unrelated) < 0.3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_misspelling_keeps_similarity(seed: int) -> None:
    enc = HashingEncoder(seed=seed)
    typo = cosine(enc, "hikng boots", "hiking boots")
    assert typo > 0.5
    assert typo > cosine(enc, "hikng boots", "stainless steel frying pan") + 0.3
    # without char n-grams the misspelt word shares nothing
    words_only = HashingEncoder(seed=seed, char_weight=0.0)
    assert cosine(words_only, "hikng", "hiking") == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"dim": 256},
        {"char_ngrams": (2, 4)},
        {"projections": 2},
        {"char_weight": 0.25},
        {"word_weight": 2.0},
    ],
)
def test_settings_change_fingerprint_and_vectors(change: dict) -> None:
    base, other = HashingEncoder(), HashingEncoder(**change)
    assert base.fingerprint != other.fingerprint
    a, b = base.encode(TEXTS[:2]), other.encode(TEXTS[:2])
    assert a.shape != b.shape or not np.allclose(a, b)


def test_same_settings_same_fingerprint() -> None:
    a, b = HashingEncoder(seed=3, char_ngrams=(2, 4)), HashingEncoder(seed=3, char_ngrams=[2, 4])
    assert a.fingerprint == b.fingerprint and a == b
    assert HashingEncoder(batch_size=10).fingerprint == HashingEncoder().fingerprint
    assert HashingEncoder(normalize=False).fingerprint != HashingEncoder().fingerprint
    assert len(a.fingerprint) == 24


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, r"dim=0: expected an int >= 1"),
        ({"dim": 8.0}, r"dim=8.0"),
        ({"char_ngrams": (5, 3)}, r"char_ngrams=\(5, 3\).*1 <= min <= max"),
        ({"char_ngrams": (0, 3)}, r"char_ngrams"),
        ({"word_weight": -1.0}, r"word_weight=-1.0: expected a finite number >= 0"),
        ({"word_weight": 0.0, "char_weight": 0.0}, r"at least one must be > 0"),
        ({"projections": 0}, r"projections=0: expected an int in \[1, 384\]"),
        ({"dim": 8, "projections": 9}, r"projections=9: expected an int in \[1, 8\]"),
        ({"seed": -1}, r"seed=-1: expected an int in \[0, 4294967295\]"),
        ({"normalize": 1}, r"normalize=1"),
        ({"name": ""}, r"name=''"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HashingEncoder(**kwargs)


def test_single_string_rejected() -> None:
    with pytest.raises(TypeError, match="sequence of texts"):
        HashingEncoder().encode("boots")  # type: ignore[arg-type]
