"""Export a ranking policy to a self-contained ranker directory (ONNX, no pickle anywhere).

:func:`export_ranker` writes, atomically (a reader sees no half-written ranker):

* ``scorer.onnx``: the policy's scoring graph. Inputs, for ``B`` requests of ``N`` candidates
  scored at ``P`` positions (all three axes dynamic): ``query`` ``[B, d]``, ``user`` ``[B, d]``
  (the pooled history), ``context_features`` ``[B, F_c]`` (the history's pooled item features,
  the user's own, then the user's learned vector), ``candidates`` ``[B, N, d]``,
  ``candidate_features`` ``[B, N, F_i]``, ``bias`` ``[B, N]`` (the item table's learned bias),
  ``mask`` ``bool[B, N]`` and ``positions`` ``int64[P]``. Outputs: ``scores`` ``[B, P, N]``
  (masked candidates score :data:`~rankgym.agents.scorer.MASKED`) and ``parts`` ``[B, P, N, 4]``,
  the additive parts of each score (:data:`rankgym.agents.ranker.PARTS`).
* the tables: ``items.json`` (item ids; an item's code is its index), ``items.npy``,
  ``item_bias.npy``, ``item_features.npy``, ``queries.json`` + ``queries.npy`` (the known
  queries' vectors), ``users.json`` + ``user_features.npy`` when the policy reads user features,
  ``users.json`` + ``user_vectors.npy`` when it learned a vector per user (the ranker gives
  users it does not know the zero vector);
* the text encoder: ``encoder.onnx`` + ``tokenizer.json`` for transformer encoders (queries and
  new items are encoded at serving time without torch), or ``hashing.json`` (the hashing
  encoder is numpy: its parameters are enough);
* ``manifest.json``: format, policy and run, encoder, dims, slate semantics, pooling, library
  versions and the sha256 of every file, all checked by :meth:`rankgym.agents.ranker.Ranker.load`.

Trained SB3 policies (PPO, A2C, DQN) export their :class:`~rankgym.agents.scorer.CandidateScorer`;
their score depends on the position, so the ranker fills a slate greedily slot by slot, as the
environment does. The ``cosine`` and ``popularity`` baselines export as graphs of their own
formula, ranked by sorting, so an A/B test compares them with the same serving code.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rankgym.agents.baselines import CosinePolicy, PopularityPolicy, SB3Policy
from rankgym.agents.ranker import FORMAT, FORMAT_VERSION, MANIFEST, SCORER_INPUTS, file_sha256
from rankgym.agents.scorer import MASKED, CandidateScorer
from rankgym.encoders.encoded_log import EncodedLog
from rankgym.encoders.hashing import HashingEncoder
from rankgym.encoders.transformer import TransformerEncoder, pool_tokens
from rankgym.envs.replay import ReplayConfig, user_feature_table
from rankgym.logs.atomic import atomic_directory

log = logging.getLogger(__name__)

OPSET = 18
EXPORTABLE = ("ppo", "a2c", "dqn", "cosine", "popularity")


class _PolicyGraph(nn.Module):
    """A trained scorer's scores and score parts from vectors (the ONNX scoring graph)."""

    def __init__(self, scorer: CandidateScorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(
        self,
        query: torch.Tensor,
        user: torch.Tensor,
        context_features: torch.Tensor,
        candidates: torch.Tensor,
        candidate_features: torch.Tensor,
        bias: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        context = torch.cat([query, user, context_features], dim=1)
        enc = self.scorer.encode_vectors(
            query, user, context, candidates, candidate_features, mask, positions,
            positions_axis=True,
        )  # fmt: skip
        return self.scorer.score(enc, bias), self.scorer.score_parts(enc, bias)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; zero rows stay zero (as
    ``rankgym.agents.baselines._unit_rows``)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


class _BaselineGraph(nn.Module):
    """``cosine`` (``cos(q, i) + cos(u, i)`` [+ features' cosine], in float64 as the policy
    computes it) or ``popularity`` (the item table's bias: the smoothed training CTR)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(
        self,
        query: torch.Tensor,
        user: torch.Tensor,
        context_features: torch.Tensor,
        candidates: torch.Tensor,
        candidate_features: torch.Tensor,
        bias: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        zero = torch.zeros_like(bias, dtype=torch.float64)
        if self.kind == "cosine":
            items = _unit(candidates.double())
            parts = [
                (items * _unit(query.double()).unsqueeze(1)).sum(-1),
                (items * _unit(user.double()).unsqueeze(1)).sum(-1),
                zero,
                (
                    _unit(candidate_features.double())
                    * _unit(context_features.double()).unsqueeze(1)
                ).sum(-1),
            ]
        else:
            parts = [zero, zero, bias.double(), zero]
        stacked = torch.stack(parts, dim=-1).unsqueeze(1)  # [B, 1, N, 4]
        shape = (bias.shape[0], positions.shape[0], bias.shape[1])
        scores = stacked.sum(-1).masked_fill(~mask.unsqueeze(1), MASKED).expand(shape)
        return scores.float(), stacked.expand(*shape, 4).float()


class _EncoderGraph(nn.Module):
    """A transformer encoder's pooled (and normalised) embeddings from token ids."""

    def __init__(self, encoder: TransformerEncoder) -> None:
        super().__init__()
        self.model, self.pooling, self.normalize = encoder.model, encoder.pooling, encoder.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_tokens(hidden, attention_mask, self.pooling, self.normalize)


def _onnx_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    outputs: list[str],
    dynamic: dict[str, dict[int, Any]],
    file: Path,
) -> None:
    """``torch.onnx.export`` (the dynamo exporter) with its console chatter kept in the log."""
    chatter = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(), args, input_names=list(names), output_names=outputs,
                dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True, verbose=False,
            )  # fmt: skip
            program.save(str(file), external_data=False)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    log.debug("onnx export of %s: %s", file.name, chatter.getvalue())


def export_scorer(graph: nn.Module, dims: dict[str, int], file: Path) -> None:
    """Write ``graph`` (a policy or baseline graph) as ``file`` with dynamic B, N, P axes."""
    b, n, p = 2, 5, 3
    d, fc, fi = dims["embedding"], dims["context_features"], dims["item_features"]
    args = (
        torch.zeros(b, d), torch.zeros(b, d), torch.zeros(b, fc), torch.zeros(b, n, d),
        torch.zeros(b, n, fi), torch.zeros(b, n), torch.ones(b, n, dtype=torch.bool),
        torch.arange(p, dtype=torch.int64),
    )  # fmt: skip
    batch, cands = torch.export.Dim("batch"), torch.export.Dim("candidates")
    positions = torch.export.Dim("positions")
    dynamic = {
        "query": {0: batch}, "user": {0: batch}, "context_features": {0: batch},
        "candidates": {0: batch, 1: cands}, "candidate_features": {0: batch, 1: cands},
        "bias": {0: batch, 1: cands}, "mask": {0: batch, 1: cands}, "positions": {0: positions},
    }  # fmt: skip
    _onnx_export(graph, args, SCORER_INPUTS, ["scores", "parts"], dynamic, file)


def export_encoder(encoder: TransformerEncoder, directory: Path) -> dict[str, Any]:
    """``encoder.onnx`` + ``tokenizer.json`` in ``directory``; the manifest's encoder part."""
    if not hasattr(encoder.tokenizer, "backend_tokenizer"):
        raise ValueError(
            f"encoder {encoder.name}: its tokenizer ({type(encoder.tokenizer).__name__}) is not a "
            "fast (tokenizers) tokenizer, which serving needs; export with with_encoder=false"
        )
    encoder.tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    graph = _EncoderGraph(encoder).to("cpu")
    ids = torch.ones(2, 8, dtype=torch.int64)
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=encoder.max_length)
    dynamic = {"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}}
    _onnx_export(graph, (ids, torch.ones_like(ids)), ("input_ids", "attention_mask"),
                 ["embeddings"], dynamic, directory / "encoder.onnx")  # fmt: skip
    return {
        "kind": "onnx",
        "max_length": encoder.max_length,
        "pad_token_id": int(encoder.tokenizer.pad_token_id or 0),
    }


def _policy_kind(policy: Any) -> str:
    if isinstance(policy, SB3Policy):
        return "sb3"
    if isinstance(policy, CosinePolicy):
        return "cosine"
    if isinstance(policy, PopularityPolicy):
        return "popularity"
    name = getattr(policy, "name", type(policy).__name__)
    raise ValueError(
        f"policy {name!r} cannot be exported; allowed: {', '.join(EXPORTABLE)} (trained SB3 "
        "runs and the cosine and popularity baselines)"
    )


def policy_scorer(policy: SB3Policy) -> CandidateScorer:
    """The :class:`CandidateScorer` of a trained PPO/A2C (actor) or DQN (online Q-network)."""
    net = policy.model.policy
    scorer = getattr(net, "scorer", None) or getattr(getattr(net, "q_net", None), "scorer", None)
    if not isinstance(scorer, CandidateScorer):
        raise ValueError(f"policy {policy.name!r}: no CandidateScorer in its SB3 policy")
    return scorer


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("rankgym", "torch", "numpy", "onnx", "onnxscript", "stable-baselines3",
                 "transformers", "tokenizers"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _save_npy(directory: Path, name: str, array: np.ndarray) -> None:
    with open(directory / name, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def export_ranker(
    policy: Any,
    encoded: EncodedLog,
    item_ids: np.ndarray,
    query_texts: np.ndarray,
    user_ids: np.ndarray,
    env: ReplayConfig,
    out: str | Path,
    encoder: Any = None,
    with_encoder: bool | None = None,
    max_candidates: int = 1000,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write the ranker directory ``out`` for ``policy`` (see the module docstring).

    Args:
        policy: a trained :class:`SB3Policy`, a fitted :class:`CosinePolicy` or
            :class:`PopularityPolicy`.
        encoded: the run's text embeddings (and feature tables).
        item_ids, query_texts, user_ids: the dataset's ids, in code order.
        env: the run's replay options (slate size, user-state pooling, features).
        out: the directory to write (replaced only if it is absent, empty or a ranker).
        encoder: the run's text encoder, exported when ``with_encoder`` (default: on for
            transformer encoders, as ONNX, and for the hashing encoder, as its parameters).
        max_candidates: the most candidates a request may carry at serving time.
        run: what the manifest says about the training run (path, config digest, metrics).

    Returns:
        ``out``.
    """
    kind = _policy_kind(policy)
    limit = max_candidates
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_candidates={max_candidates!r}; allowed: an int >= 1")
    pooling = env.user_pooling
    if pooling.profile_weight > 0:
        raise ValueError(
            f"env.profile_weight={pooling.profile_weight}: a ranker pools the user's history "
            "only (no profile text); allowed for export: 0"
        )
    if with_encoder is None:
        with_encoder = isinstance(encoder, TransformerEncoder | HashingEncoder)
    if with_encoder and not isinstance(encoder, TransformerEncoder | HashingEncoder):
        raise ValueError(
            f"with_encoder=true needs a transformer or hashing encoder, got "
            f"{type(encoder).__name__}; export with with_encoder=false"
        )
    fingerprint = getattr(encoder, "fingerprint", encoded.fingerprint)
    if fingerprint != encoded.fingerprint:
        raise ValueError(
            f"encoder {getattr(encoder, 'name', '?')} has fingerprint {fingerprint}; the "
            f"embeddings were made by {encoded.fingerprint}: export with the run's own encoder"
        )
    graph, dims, item_bias, unknown_bias = _scoring(kind, policy, encoded, env, len(item_ids))
    fi, fu, fv = dims["item_features"], dims["user_features"], dims["user_vectors"]
    user_vectors = _user_vectors(policy, len(user_ids)) if fv else None
    # a position-free scorer (a whole-slate policy's) ranks by one sort: the greedy slot-by-slot
    # fill would give the same slate at P times the cost
    positional = kind == "sb3" and policy_scorer(policy).position.num_embeddings > 1
    action = "greedy" if positional else "sort"
    out = Path(out)
    with atomic_directory(out, marker=MANIFEST) as tmp:
        export_scorer(graph, dims, tmp / "scorer.onnx")
        (tmp / "items.json").write_text(json.dumps([str(i) for i in item_ids]))
        _save_npy(tmp, "items.npy", encoded.items)
        _save_npy(tmp, "item_bias.npy", item_bias)
        _save_npy(tmp, "item_features.npy", encoded.item_features[:, :fi])
        (tmp / "queries.json").write_text(json.dumps([str(q) for q in query_texts]))
        _save_npy(tmp, "queries.npy", encoded.queries)
        if fu or fv:
            (tmp / "users.json").write_text(json.dumps([str(u) for u in user_ids]))
        if fu:
            _save_npy(tmp, "user_features.npy", user_feature_table(encoded, env))
        if fv:
            _save_npy(tmp, "user_vectors.npy", user_vectors)
        enc = {"name": getattr(encoder, "name", None), "fingerprint": encoded.fingerprint,
               "kind": "none"}  # fmt: skip
        if with_encoder and isinstance(encoder, TransformerEncoder):
            enc.update(export_encoder(encoder, tmp))
        elif with_encoder and isinstance(encoder, HashingEncoder):
            params = {f.name: getattr(encoder, f.name) for f in dataclasses.fields(encoder)
                      if f.compare and not f.name.startswith("_")}  # fmt: skip
            (tmp / "hashing.json").write_text(json.dumps(params, indent=2) + "\n")
            enc["kind"] = "hashing"
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "policy": {"name": policy.name, "kind": kind, "algorithm": _algorithm(policy)},
            "run": run or {},
            "encoder": enc,
            "dims": dims,
            "items": len(item_ids),
            "queries": len(query_texts),
            "users": len(user_ids) if fu or fv else 0,
            "trained_candidates": env.max_candidates,
            "slate_size": env.slate_size,
            "max_candidates": max_candidates,
            "action": action,
            "unknown_item_bias": unknown_bias,
            "user_pooling": dataclasses.asdict(pooling),
            "opset": OPSET,
            "versions": _versions(),
        }
        manifest["files"] = {f.name: file_sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("exported %s (%s) to %s", policy.name, kind, out)
    return out


def _scoring(
    kind: str, policy: Any, encoded: EncodedLog, env: ReplayConfig, n_items: int
) -> tuple[nn.Module, dict[str, int], np.ndarray, float]:
    """The scoring graph of ``policy``, the manifest's dims, the item biases and the bias of
    an item the ranker does not know."""
    fi = encoded.item_features.shape[1] if env.features else 0
    fu = user_feature_table(encoded, env).shape[1]
    item_bias, unknown_bias, hidden = np.zeros(n_items, dtype=np.float32), 0.0, 0
    fv = 0  # the width of a learned vector per user (a trained scorer's user_embedding)
    if kind == "sb3":
        scorer = policy_scorer(policy)
        reads = (scorer.dim, scorer.item_feature_dim, scorer.user_feature_dim)
        if reads != (encoded.dim, fi, fu):
            raise ValueError(
                f"policy {policy.name!r} reads {scorer.dim}-d embeddings, "
                f"{scorer.item_feature_dim} item and {scorer.user_feature_dim} user features; "
                f"the run's encoder and env settings give {encoded.dim}, {fi} and {fu}: export "
                "with the run's own encoder and env settings (env.features, env.user_profile)"
            )
        if scorer.mode == "ids" and scorer.items.shape[0] - 1 != n_items:
            raise ValueError(
                f"policy {policy.name!r} holds {scorer.items.shape[0] - 1} items, the dataset "
                f"{n_items}: export with the run's own dataset"
            )
        if scorer.mode == "ids" and scorer.bias is not None:
            item_bias = scorer.bias.weight.detach().cpu().numpy()[:-1, 0]
        # a copy: the run's model stays where it is (perhaps on the GPU)
        graph: nn.Module = _PolicyGraph(copy.deepcopy(scorer).cpu().eval())
        fu, fv, hidden = scorer.user_feature_dim, scorer.user_embedding_dim, scorer.hidden
    else:
        # cosine reads the history's item features (when its features are on), popularity none
        fi = fi if kind == "cosine" and policy.features else 0
        fu = 0
        if kind == "popularity":
            item_bias, unknown_bias = policy.ctr.astype(np.float32), float(policy.global_ctr)
        graph = _BaselineGraph(kind)
    dims = {"embedding": int(encoded.dim), "item_features": int(fi), "user_features": int(fu),
            "user_vectors": int(fv), "context_features": int(fi + fu + fv),
            "hidden": int(hidden)}  # fmt: skip
    return graph, dims, item_bias, unknown_bias


def _user_vectors(policy: SB3Policy, n_users: int) -> np.ndarray:
    """The learned vector of each of the dataset's ``n_users`` users (code order)."""
    table = policy_scorer(policy).user_vectors
    assert table is not None  # dims["user_vectors"] > 0
    vectors = table.weight.detach().cpu().numpy()[:-1]  # the last row: the cold-start user
    if len(vectors) != n_users:
        raise ValueError(
            f"policy {policy.name!r} holds vectors of {len(vectors)} users, the dataset "
            f"{n_users}: export with the run's own dataset"
        )
    return vectors


def _algorithm(policy: Any) -> str | None:
    model = getattr(policy, "model", None)
    return type(model).__name__.lower().replace("masked", "") if model is not None else None
