"""A weightless text encoder: hashed word and character n-gram features, randomly projected.

Useful as a fast baseline and in tests: no model download, no GPU, deterministic everywhere.
Each lower-cased word contributes its unigram feature and the character n-grams of ``<word>``
(so misspellings keep most of their features). Every feature is hashed with CRC-32 (stable
across processes and platforms, unlike Python's salted ``hash()``) and adds ``±weight`` to
``projections`` output coordinates, a fixed sparse random projection derived from the hash.
A word repeated in a text counts ``1 + log(tf)`` times (sublinear term frequency).

Feature hashes are cached per distinct word, so the Python work per text is tokenisation and
dictionary look-ups; projection and accumulation are vectorised per batch.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from rankgym.encoders.base import digest

_TOKEN = re.compile(r"[^\W_]+")  # runs of letters and digits (Unicode-aware), "_" splits
_WORD_SALT = 0x5BD1E995  # start value xor for word unigrams, so "<ab>" word != "<ab>" n-gram
_CHAR_SALT = 0x1B873593
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MAX_CACHED_WORDS = 1 << 18  # bounded cache: cleared when full (~100 B per word)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 values (a new array): a cheap, well-mixed hash.

    The one copy in rankgym: the hashing encoder's features and the replay environments'
    counter-based random numbers both use it.
    """
    x = np.array(x, dtype=np.uint64)  # in-place array ops wrap around silently
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True)
class HashingEncoder:
    """Hashed word + character n-gram features with a fixed sparse random projection.

    Frozen, because cached word hashes depend on the settings.

    Attributes:
        dim: output dimension.
        char_ngrams: inclusive (min, max) lengths of the character n-grams of ``<word>``.
        word_weight: weight of each word unigram feature.
        char_weight: weight of each character n-gram feature (0 disables n-grams).
        projections: output coordinates each feature adds ``±weight`` to.
        seed: hash seed, in ``[0, 2**32)``; another seed gives an independent projection.
        normalize: L2-normalise each row (an empty text stays a zero vector).
        name: short human-readable name.
    """

    dim: int = 384
    char_ngrams: tuple[int, int] = (3, 5)
    word_weight: float = 1.0
    char_weight: float = 0.5
    projections: int = 4
    seed: int = 0
    normalize: bool = True
    name: str = "hashing"
    batch_size: int = field(default=4096, repr=False, compare=False)
    _cache: dict[str, list[int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.char_ngrams, list):  # e.g. from a YAML / Hydra config
            object.__setattr__(self, "char_ngrams", tuple(self.char_ngrams))
        _check_int("dim", self.dim, 1)
        ngrams = self.char_ngrams
        if (
            not isinstance(ngrams, tuple)
            or len(ngrams) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in ngrams)
            or not 1 <= ngrams[0] <= ngrams[1]
        ):
            raise ValueError(
                f"char_ngrams={ngrams!r}: expected a (min, max) pair of ints with 1 <= min <= max"
            )
        for name in ("word_weight", "char_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ValueError(f"{name}={value!r}: expected a finite number >= 0")
        if self.word_weight == 0 and self.char_weight == 0:
            raise ValueError("word_weight=0 and char_weight=0: at least one must be > 0")
        _check_int("projections", self.projections, 1, self.dim)
        _check_int("seed", self.seed, 0, 2**32 - 1)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize={self.normalize!r}: expected True or False")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name={self.name!r}: expected a non-empty string")
        _check_int("batch_size", self.batch_size, 1)

    @property
    def fingerprint(self) -> str:
        """Identity of the function text -> vector (every setting that changes the output)."""
        return digest(
            {
                "class": "HashingEncoder",
                "version": 1,
                "dim": self.dim,
                "char_ngrams": list(self.char_ngrams),
                "word_weight": float(self.word_weight),
                "char_weight": float(self.char_weight),
                "projections": self.projections,
                "seed": self.seed,
                "normalize": self.normalize,
                "name": self.name,
            }
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into a ``float32[len(texts), dim]`` array, in input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            out[start : start + len(batch)] = self._encode_batch(batch)
        return out

    def _word_hashes(self, word: str) -> list[int]:
        """CRC-32 hashes of a word's features: its unigram first, then its char n-grams."""
        hashes = self._cache.get(word)
        if hashes is not None:
            return hashes
        crc = zlib.crc32
        hashes = [crc(word.encode(), self.seed ^ _WORD_SALT)]
        if self.char_weight > 0:
            wrapped = f"<{word}>"
            lo, hi = self.char_ngrams
            char_seed = self.seed ^ _CHAR_SALT
            hashes.extend(
                crc(wrapped[i : i + n].encode(), char_seed)
                for n in range(lo, min(hi, len(wrapped)) + 1)
                for i in range(len(wrapped) - n + 1)
            )
        if len(self._cache) >= _MAX_CACHED_WORDS:
            self._cache.clear()
        self._cache[word] = hashes
        return hashes

    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Encode one batch: tokenise in Python, project and accumulate in numpy."""
        n, dim, n_proj = len(texts), self.dim, self.projections
        vocab: dict[str, int] = {}  # distinct words of the batch -> local id
        word_ids: list[int] = []
        counts = np.zeros(n, dtype=np.int64)
        for row, text in enumerate(texts):
            words = _TOKEN.findall(text.lower())
            counts[row] = len(words)
            word_ids.extend([vocab.setdefault(w, len(vocab)) for w in words])
        if not word_ids:
            return np.zeros((n, dim), dtype=np.float32)

        # (row, word) pairs with sublinear term frequency 1 + log(tf)
        n_words = len(vocab)
        keys = np.repeat(np.arange(n, dtype=np.int64), counts) * n_words + np.asarray(word_ids)
        keys, tf = np.unique(keys, return_counts=True)
        pair_rows, pair_words = np.divmod(keys, n_words)
        pair_tf = 1.0 + np.log(tf)

        # features of the batch's distinct words, flattened word by word
        feats = [self._word_hashes(w) for w in vocab]
        n_feats = np.fromiter(map(len, feats), dtype=np.int64, count=n_words)
        hashes = np.fromiter(chain.from_iterable(feats), dtype=np.uint64, count=int(n_feats.sum()))
        feat_start = np.cumsum(n_feats) - n_feats
        weights = np.full(hashes.shape, self.char_weight)
        weights[feat_start] = self.word_weight

        # fixed sparse projection: `projections` (coordinate, sign) pairs per feature hash
        salts = (np.arange(1, n_proj + 1, dtype=np.uint64) + np.uint64(self.seed)) * _GOLDEN
        mixed = splitmix64(hashes[:, None] ^ salts[None, :])
        coords = ((mixed >> np.uint64(32)) % np.uint64(dim)).astype(np.int64)
        signed = np.where(mixed & np.uint64(1), -1.0, 1.0) * weights[:, None]

        # expand (row, word) pairs into (row, feature) entries, then one bincount
        lengths = n_feats[pair_words]
        entry_start = np.cumsum(lengths) - lengths
        feat_idx = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(
            feat_start[pair_words] - entry_start, lengths
        )
        flat = np.repeat(pair_rows * dim, lengths)[:, None] + coords[feat_idx]
        vals = signed[feat_idx] * np.repeat(pair_tf, lengths)[:, None]
        out = np.bincount(flat.ravel(), weights=vals.ravel(), minlength=n * dim).reshape(n, dim)
        if self.normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", out, out))
            out /= np.where(norms > 0, norms, 1.0)[:, None]
        return out.astype(np.float32)


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    """Raise a ValueError naming the field unless ``lo <= value (<= hi)`` is an int."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        allowed = f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]"
        raise ValueError(f"{name}={value!r}: expected {allowed}")
