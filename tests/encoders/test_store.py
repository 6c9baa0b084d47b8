"""EmbeddingStore: encode once, resume after an interrupted run, dedup, precision."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rankgym.encoders.store import EmbeddingStore
from rankgym.encoders.tiny import tiny_bert_encoder


class Counting:
    """Wraps an encoder, counts the texts it is asked to encode, optionally dies mid-run."""

    def __init__(self, inner, fail_after_calls: int | None = None) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.fingerprint = inner.fingerprint
        self.texts: list[str] = []
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.texts.extend(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def tiny():
    return tiny_bert_encoder()


TEXTS = [f"item number {i} in red" for i in range(50)]


def test_second_call_encodes_nothing(tmp_path: Path, tiny) -> None:
    enc = Counting(tiny)
    store = EmbeddingStore(tmp_path, chunk_size=16)
    first = store.embed(TEXTS, enc)
    assert len(enc.texts) == 50 and store.last_new == 50
    again = EmbeddingStore(tmp_path).embed(TEXTS[::-1], enc)  # a new process, other order
    assert len(enc.texts) == 50
    np.testing.assert_array_equal(again, first[::-1])
    np.testing.assert_allclose(first, tiny.encode(TEXTS), atol=1e-6)


def test_duplicates_are_encoded_once(tmp_path: Path, tiny) -> None:
    enc = Counting(tiny)
    texts = ["a", "b", "a", "c", "b", "a"]
    out = EmbeddingStore(tmp_path).embed(texts, enc)
    assert sorted(enc.texts) == ["a", "b", "c"]
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[1], out[4])


def test_interrupted_run_resumes(tmp_path: Path, tiny) -> None:
    store = EmbeddingStore(tmp_path, chunk_size=10)
    dying = Counting(tiny, fail_after_calls=3)
    with pytest.raises(KeyboardInterrupt):
        store.embed(TEXTS, dying)
    assert store.size(tiny) == 30  # three complete shards survived
    # a shard killed between its vectors and its keys is invisible
    folder = store.directory(tiny)
    (folder / "orphan.vecs.npy").write_bytes(b"partial")
    resumed = Counting(tiny)
    out = EmbeddingStore(tmp_path, chunk_size=10).embed(TEXTS, resumed)
    assert sorted(resumed.texts) == sorted(TEXTS[30:])
    np.testing.assert_allclose(out, tiny.encode(TEXTS), atol=1e-6)


def test_float16_storage(tmp_path: Path, tiny) -> None:
    full = EmbeddingStore(tmp_path / "a").embed(TEXTS, tiny)
    half_store = EmbeddingStore(tmp_path / "b", dtype="float16")
    half = half_store.embed(TEXTS, tiny)
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=2e-3)
    size = lambda root: sum(p.stat().st_size for p in root.rglob("*.vecs.npy"))  # noqa: E731
    assert size(tmp_path / "b") < 0.6 * size(tmp_path / "a")


def test_encoders_do_not_share_vectors(tmp_path: Path, tiny) -> None:
    other = tiny_bert_encoder(seed=1)
    store = EmbeddingStore(tmp_path)
    a, b = store.embed(TEXTS, tiny), store.embed(TEXTS, other)
    assert store.directory(tiny) != store.directory(other)
    assert not np.allclose(a, b)
    assert store.size(tiny) == store.size(other) == 50
    assert (tiny, TEXTS[0]) in store and (tiny, "never seen") not in store


def test_manifest_mismatch_and_bad_arguments(tmp_path: Path, tiny) -> None:
    store = EmbeddingStore(tmp_path)
    store.embed(["x"], tiny)
    manifest = store.directory(tiny) / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dim": 32', '"dim": 64'))
    with pytest.raises(ValueError, match=r"manifest\.json: the store holds .*delete the directory"):
        EmbeddingStore(tmp_path).embed(["y"], tiny)
    with pytest.raises(ValueError, match=r"store dtype='int8'; allowed: float32, float16"):
        EmbeddingStore(tmp_path, dtype="int8")


def test_digests_ending_in_zero_bytes_round_trip(tmp_path: Path, tiny) -> None:
    """numpy's fixed-width bytes dtype would strip trailing NULs; many texts would then miss."""
    from rankgym.encoders.store import text_key

    texts = [f"t{i}" for i in range(3000)]
    assert any(text_key(t).endswith(b"\0") for t in texts)
    store = EmbeddingStore(tmp_path)
    first = store.embed(texts, tiny)
    again = EmbeddingStore(tmp_path)
    np.testing.assert_array_equal(again.embed(texts, tiny), first)
    assert again.last_new == 0


def test_opening_the_store_removes_what_killed_writers_left(tmp_path: Path) -> None:
    import os

    from rankgym.encoders.hashing import HashingEncoder

    encoder = HashingEncoder(dim=8)
    store = EmbeddingStore(tmp_path)
    store.embed(["a", "b"], encoder, progress=False)
    folder = store.directory(encoder)
    dead, live = 999_999_999, os.getpid()
    stale_tmp = folder / f".x.keys.npy.tmp-{dead}-abcd1234"
    live_tmp = folder / f".y.keys.npy.tmp-{live}-abcd1234"
    orphan = folder / f"{dead}-0123456789abcdef.vecs.npy"  # vectors whose keys never came
    for path in (stale_tmp, live_tmp, orphan):
        path.write_bytes(b"partial")
    again = EmbeddingStore(tmp_path)
    np.testing.assert_array_equal(again.embed(["a"], encoder, progress=False)[0],
                                  store.embed(["a"], encoder, progress=False)[0])  # fmt: skip
    assert not stale_tmp.exists() and not orphan.exists()
    assert live_tmp.exists()  # a running writer's temporary is left alone


def test_two_processes_on_one_store_encode_each_text_once(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    script = tmp_path / "encode.py"
    script.write_text(
        "import json, sys, time\n"
        "from rankgym.encoders.hashing import HashingEncoder\n"
        "from rankgym.encoders.store import EmbeddingStore\n"
        "class Slow:\n"
        "    inner = HashingEncoder(dim=8)\n"
        "    name, dim, fingerprint = inner.name, inner.dim, inner.fingerprint\n"
        "    def encode(self, texts):\n"
        "        time.sleep(0.3)\n"
        "        return self.inner.encode(texts)\n"
        "store = EmbeddingStore(sys.argv[1], chunk_size=50)\n"
        "store.embed([f'text {i}' for i in range(200)], Slow(), progress=False)\n"
        "print(json.dumps({'new': store.last_new}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "store")], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1000:] for o in outs]
    new = sorted(json.loads(o[0].strip().splitlines()[-1])["new"] for o in outs)
    assert new == [0, 200]  # one process encoded everything, the other nothing
    keys = sum(len(np.load(k)) for k in (tmp_path / "store").rglob("*.keys.npy"))
    assert keys == 200
