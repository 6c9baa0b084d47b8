"""The text-encoder contract every encoder in rankgym follows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into fixed-size float32 vectors.

    Attributes:
        name: short human-readable name (``minilm``, ``hashing``...).
        dim: output dimension.
        fingerprint: hex digest that changes whenever the output for some text would change
            (weights, tokenizer, pooling, max length, normalisation, dtype...). The embedding
            store keys its cache by it, so two encoders with one fingerprint must agree.
    """

    name: str
    dim: int

    @property
    def fingerprint(self) -> str:
        """Identity of the function text -> vector."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into a ``float32[len(texts), dim]`` array, in input order."""
        ...


def digest(parts: dict[str, Any]) -> str:
    """A short stable hex digest of JSON-serialisable settings (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]
