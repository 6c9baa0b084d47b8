"""TransformerEncoder: equal to sentence-transformers, fingerprints, bad paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankgym.encoders.tiny import tiny_bert, tiny_bert_encoder
from rankgym.encoders.transformer import TransformerEncoder, default_model_path

TEXTS = [
    "Nordik waterproof hiking boots, brown - $129",
    "cheap jogging snekers",
    "",
    "frying pan by Heronway",
    "Shops for headphones and frying pan. Likes Marlowe. Prefers luxury products.",
    "word " * 400,  # longer than max_length: truncated
]


@pytest.fixture(scope="module")
def minilm() -> TransformerEncoder:
    return TransformerEncoder(progress=False)


def test_equals_sentence_transformers(minilm: TransformerEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(default_model_path(), device="cpu")
    expected = reference.encode(TEXTS * 3, normalize_embeddings=True, batch_size=4)
    got = minilm.encode(TEXTS * 3)
    assert got.dtype == np.float32 and got.shape == (18, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert (minilm.pooling, minilm.max_length, minilm.dim) == ("mean", 256, 384)


def test_input_order_is_kept(minilm: TransformerEncoder) -> None:
    forward = minilm.encode(TEXTS)
    backward = minilm.encode(TEXTS[::-1])
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-6)
    assert minilm.encode([]).shape == (0, 384)


def test_fingerprint_tracks_everything_that_changes_output(minilm: TransformerEncoder) -> None:
    assert minilm.fingerprint == TransformerEncoder(progress=False).fingerprint
    base = tiny_bert_encoder()
    assert base.fingerprint == tiny_bert_encoder().fingerprint
    variants = [
        tiny_bert_encoder(seed=1),
        tiny_bert_encoder(pooling="cls"),
        tiny_bert_encoder(normalize=False),
        TransformerEncoder(model=tiny_bert()[0], tokenizer=tiny_bert()[1], max_length=8),
    ]
    prints = {base.fingerprint, *(v.fingerprint for v in variants)}
    assert len(prints) == 5
    for v in variants:  # and each really changes the vectors
        assert not np.allclose(v.encode(TEXTS), base.encode(TEXTS), atol=1e-4)
    assert base.fingerprint != minilm.fingerprint


def test_cls_pooling_and_normalisation() -> None:
    import torch

    model, tokenizer = tiny_bert()
    enc = TransformerEncoder(model=model, tokenizer=tokenizer, pooling="cls", normalize=False)
    batch = tokenizer(["red boots"], return_tensors="pt")
    with torch.no_grad():
        cls = model(**batch).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(enc.encode(["red boots"])[0], cls, atol=1e-6)
    norms = np.linalg.norm(tiny_bert_encoder().encode(TEXTS), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(
        FileNotFoundError,
        match=r"no-such-model' is not a directory; expected "
        r"config\.json, model weights",
    ):
        TransformerEncoder(str(missing))


def test_incomplete_model_dir_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(
        FileNotFoundError,
        match=r"is missing model\.safetensors or pytorch_model\.bin; .*found: config\.json, "
        r"vocab\.txt",
    ):
        TransformerEncoder(str(tmp_path))


def test_unloadable_model_dir(tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("not a model")
    with pytest.raises(FileNotFoundError, match="transformers could not load a model"):
        TransformerEncoder(str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "max"}, r"encoder\.pooling='max'; allowed: mean, cls"),
        ({"device": "tpu"}, r"encoder\.device='tpu'; allowed: auto, cpu, cuda"),
        ({"batch_size": 0}, r"encoder\.batch_size=0; allowed: >= 1"),
    ],
)
def test_bad_settings(kwargs: dict, message: str) -> None:
    model, tokenizer = tiny_bert()
    with pytest.raises(ValueError, match=message):
        TransformerEncoder(model=model, tokenizer=tokenizer, **kwargs)
