"""A tiny randomly initialised BERT built in memory: fast tests with no weights on disk."""

from __future__ import annotations

import string
from typing import Any

import torch

from rankgym.encoders.transformer import TransformerEncoder

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab(words: list[str] | None = None) -> list[str]:
    """Special tokens, single characters (also as ``##`` continuations) and some whole words.

    Characters guarantee that WordPiece can spell any lower-case ASCII text without ``[UNK]``.
    """
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    if words is None:
        from rankgym.logs.synthetic import BRANDS, CATEGORIES, COLOURS

        words = sorted(
            {w for c, (nouns, syns, mods) in CATEGORIES.items()
             for t in [c, *nouns, *syns, *mods] for w in t.split()}
            | {b.lower() for b in BRANDS} | set(COLOURS)
        )  # fmt: skip
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    return vocab + [w for w in words if w not in set(vocab)]


def tiny_bert(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_position: int = 64,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A small ``BertModel`` with seeded random weights and a matching fast tokenizer.

    The global torch RNG is left untouched (weights come from a forked, seeded generator).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = tiny_vocab()
    ids = {tok: i for i, tok in enumerate(vocab)}
    core = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    core.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_position,
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    return model.eval(), tokenizer


def tiny_bert_encoder(
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    name: str = "tiny",
) -> TransformerEncoder:
    """A :class:`TransformerEncoder` over :func:`tiny_bert` (``conf/encoder/tiny.yaml``)."""
    model, tokenizer = tiny_bert(hidden=hidden, layers=layers, seed=seed)
    return TransformerEncoder(
        model=model,
        tokenizer=tokenizer,
        pooling=pooling,
        normalize=normalize,
        batch_size=batch_size,
        device=device,
        progress=False,
        name=name,
    )
