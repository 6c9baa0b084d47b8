"""Content-addressed embedding cache: each text is encoded once per encoder, across runs.

Layout under ``root``::

    {encoder name}-{fingerprint}-{dtype}/
        manifest.json            name, fingerprint, dim, dtype (checked on open)
        {shard}.vecs.npy         dtype[m, dim] vectors
        {shard}.keys.npy         uint8[m, 16] blake2b-128 digests of the UTF-8 texts

A shard is written vectors first, keys last, each to a temporary file renamed into place; the
keys file is the commit marker, so a run killed mid-encode leaves only complete shards and the
next run encodes just the texts still missing. Vectors are memory-mapped on read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from rankgym.encoders.base import TextEncoder
from rankgym.logs.atomic import atomic_file, file_lock, process_alive, remove_stale_temporaries

log = logging.getLogger(__name__)

STORE_DTYPES = ("float32", "float16")
KEY_BYTES = 16


def text_key(text: str) -> bytes:
    """128-bit content digest of a text (the cache key within one encoder)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=KEY_BYTES).digest()


class EmbeddingStore:
    """Embeddings on disk keyed by (encoder fingerprint, text digest).

    Args:
        root: cache directory (``paths.cache_dir``/embeddings in the configs).
        dtype: storage precision, ``float32`` or ``float16`` (half the disk and page cache);
            :meth:`embed` always returns float32.
        chunk_size: texts encoded and committed per shard; an interrupted run loses at most
            one chunk of work.
    """

    def __init__(
        self, root: str | os.PathLike[str], dtype: str = "float32", chunk_size: int = 4096
    ) -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype={dtype!r}; allowed: {', '.join(STORE_DTYPES)}")
        if chunk_size < 1:
            raise ValueError(f"store chunk_size={chunk_size}; allowed: >= 1")
        self.root = Path(root)
        self.dtype = dtype
        self.chunk_size = chunk_size
        self._index: dict[str, dict[bytes, tuple[int, int]]] = {}
        self._shards: dict[str, list[np.ndarray]] = {}
        self._seen: dict[str, set[str]] = {}
        self.last_new = 0  # texts encoded by the last embed() call (the rest came from disk)

    def directory(self, encoder: TextEncoder) -> Path:
        """Where this encoder's vectors live."""
        return self.root / f"{encoder.name}-{encoder.fingerprint}-{self.dtype}"

    def embed(
        self, texts: Sequence[str], encoder: TextEncoder, progress: bool = True
    ) -> np.ndarray:
        """``float32[len(texts), dim]`` for the texts, encoding only those not stored yet.

        Duplicates within ``texts`` are encoded once.
        """
        folder = self._open(encoder)
        index = self._refresh(folder)
        keys = [text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in index and key not in missing:
                missing[key] = text
        if missing:  # one process encodes into a store at a time; the next finds its work
            with _locked(folder):
                index = self._refresh(folder)
                missing = {k: t for k, t in missing.items() if k not in index}
                self._encode(folder, encoder, missing, progress)
            index = self._refresh(folder)
        self.last_new = len(missing)
        return self._gather(folder, keys, encoder.dim)

    def _encode(
        self, folder: Path, encoder: TextEncoder, missing: dict[bytes, str], progress: bool
    ) -> None:
        if missing:
            todo = list(missing.items())
            show = progress and len(todo) > self.chunk_size
            bar = tqdm(
                total=len(todo),
                desc=f"embedding store ({encoder.name})",
                unit=" texts",
                disable=None if show else True,
            )
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                vectors = encoder.encode([t for _, t in chunk])
                self._commit(folder, [k for k, _ in chunk], vectors, encoder.dim)
                bar.update(len(chunk))
            bar.close()

    def __contains__(self, item: tuple[TextEncoder, str]) -> bool:
        encoder, text = item
        folder = self.directory(encoder)
        return folder.is_dir() and text_key(text) in self._refresh(folder)

    def size(self, encoder: TextEncoder) -> int:
        """Number of texts stored for this encoder."""
        folder = self.directory(encoder)
        return len(self._refresh(folder)) if folder.is_dir() else 0

    # ------------------------------------------------------------------ internals
    def _open(self, encoder: TextEncoder) -> Path:
        folder = self.directory(encoder)
        manifest = {
            "name": encoder.name,
            "fingerprint": encoder.fingerprint,
            "dim": int(encoder.dim),
            "dtype": self.dtype,
        }
        path = folder / "manifest.json"
        if path.is_file():
            found = json.loads(path.read_text())
            if found != manifest:
                raise ValueError(
                    f"{path}: the store holds {found}, but the encoder gives {manifest}; "
                    "delete the directory to rebuild it"
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
        _clean(folder)
        return folder

    def _refresh(self, folder: Path) -> dict[bytes, tuple[int, int]]:
        """Index shards committed since the last look (also by other processes)."""
        name = str(folder)
        index = self._index.setdefault(name, {})
        shards = self._shards.setdefault(name, [])
        seen = self._seen.setdefault(name, set())
        for keys_path in sorted(folder.glob("*.keys.npy")):
            shard = keys_path.name[: -len(".keys.npy")]
            if shard in seen:
                continue
            vecs_path = folder / f"{shard}.vecs.npy"
            raw = np.load(keys_path, allow_pickle=False).tobytes()
            keys = [raw[i : i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]
            vecs = np.load(vecs_path, mmap_mode="r", allow_pickle=False)
            if len(vecs) != len(keys):
                raise ValueError(f"{vecs_path}: {len(vecs)} vectors for {len(keys)} keys")
            seen.add(shard)
            shards.append(vecs)
            s = len(shards) - 1
            for row, key in enumerate(keys):
                index.setdefault(key, (s, row))
        return index

    def _commit(self, folder: Path, keys: list[bytes], vectors: np.ndarray, dim: int) -> None:
        if vectors.shape != (len(keys), dim):
            raise ValueError(f"encoder returned shape {vectors.shape}, expected {(len(keys), dim)}")
        shard = f"{os.getpid()}-{uuid.uuid4().hex}"  # the pid tells a killed writer's orphans
        stored = np.ascontiguousarray(vectors, dtype=self.dtype)
        _atomic_write(folder / f"{shard}.vecs.npy", lambda f: np.save(f, stored))
        # raw bytes, not numpy's "S16": that dtype strips trailing NUL bytes from digests
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES)
        _atomic_write(folder / f"{shard}.keys.npy", lambda f: np.save(f, key_array))

    def _gather(self, folder: Path, keys: list[bytes], dim: int) -> np.ndarray:
        index, shards = self._index[str(folder)], self._shards[str(folder)]
        where = np.array([index[k] for k in keys], dtype=np.int64).reshape(-1, 2)
        out = np.empty((len(keys), dim), dtype=np.float32)
        for s in np.unique(where[:, 0]):
            rows = where[:, 0] == s
            out[rows] = shards[s][where[rows, 1]]
        return out


def _clean(folder: Path) -> None:
    """Remove what killed writers left: temporary files, and vectors whose keys never came."""
    remove_stale_temporaries(folder)
    for vecs in folder.glob("*.vecs.npy"):
        shard = vecs.name[: -len(".vecs.npy")]
        if (folder / f"{shard}.keys.npy").exists():
            continue
        pid = shard.split("-")[0] if "-" in shard else ""
        if (pid.isdigit() and not process_alive(int(pid))) or (
            not pid and time.time() - vecs.stat().st_mtime > 3600  # an older store's naming
        ):
            vecs.unlink(missing_ok=True)


def _locked(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on the store folder (released by the OS if the process dies)."""
    return file_lock(folder / ".lock", f"the embedding store {folder}")


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary sibling and rename, so readers never see a partial file."""
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
