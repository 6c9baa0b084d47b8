"""Ranker: an exported policy (``rankgym.agents.export``) ranking requests with numpy + onnxruntime.

Serving code imports this module only: it needs numpy, onnxruntime and (for an exported
transformer encoder) ``tokenizers``, and never imports torch, stable-baselines3 or gymnasium,
so it runs on a box with none of rankgym's training stack::

    ranker = Ranker.load("outputs/train/RUN/ranker")
    ranker.rank("usb-c charger", ["i12", "i7"], ["i3", "i9", {"item_id": "new", "text": "..."}])
    # [("i9", 1.83), ("new", 1.41), ("i3", 0.27)]

A request is a query (``None`` for a recommendation request: the empty query), the user's
history (item ids, oldest first; the last ``history_len`` are pooled as in training) and the
candidates (item ids, or ``{"item_id", "text"}`` for items the ranker has never seen: their text
is encoded and their learned bias is the ranker's ``unknown_item_bias``). Anything the ranker
cannot score faithfully (an unknown item without a text, an unknown query without an encoder,
no candidates, too many, duplicates) is a :class:`RankerError` naming it: never a silent wrong
ranking.

Slates follow the policy's semantics: trained policies score each candidate for a position, so
the slate is filled greedily slot by slot (the environment's deterministic slate); baselines
sort. Positions past the trained slate size are ordered by the last trained position's scores.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rankgym.encoders.pooling import pooling_weights

FORMAT = "rankgym-ranker"  # what agents.export writes (it imports these from here)
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCORER_INPUTS = ("query", "user", "context_features", "candidates", "candidate_features",
                 "bias", "mask", "positions")  # fmt: skip
PARTS = ("query", "user", "item_bias", "remainder")  # explain(): the additive parts of a score
REQUEST_KEYS = ("query", "user_history", "candidates", "k", "user_id")
_ENCODE_BATCH = 64

Item = str | int | Mapping[str, Any]


class RankerError(ValueError):
    """A ranker directory that cannot be loaded, or a request that cannot be ranked."""


@dataclass
class _Batch:
    """A batch of requests as the scorer's inputs (candidates padded to the longest)."""

    inputs: dict[str, np.ndarray]
    ids: list[list[str]]
    n_rank: np.ndarray  # int64[B]: how many items each request returns


class Ranker:
    """Ranks candidates with an exported policy; :meth:`load` builds one from a directory.

    Args:
        directory: the ranker directory (as loaded).
        manifest: its ``manifest.json``.
        session: the scorer's onnxruntime session.
        tables: ``items``, ``item_bias``, ``item_features``, ``queries`` (+ ``user_features``,
            ``user_vectors``).
        ids: ``items``, ``queries`` (+ ``users``) in code order.
        encoder: ``texts -> float32[n, d]`` or ``None`` (known items and queries only).
        max_candidates: the most candidates a request may carry.
    """

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        session: ort.InferenceSession,
        tables: dict[str, np.ndarray],
        ids: dict[str, list[str]],
        encoder: Any,
        max_candidates: int,
    ) -> None:
        self.directory, self.manifest, self.session = directory, manifest, session
        self.tables, self.encoder, self.max_candidates = tables, encoder, max_candidates
        self.item_code = {item: i for i, item in enumerate(ids["items"])}
        self.query_code = {q: i for i, q in enumerate(ids["queries"])}
        self.user_code = {u: i for i, u in enumerate(ids.get("users", []))}
        dims = manifest["dims"]
        self.dim, self.fi, self.fu = dims["embedding"], dims["item_features"], dims["user_features"]
        self.fv = dims.get("user_vectors", 0)  # rankers from before learned user vectors: 0
        pooling = manifest["user_pooling"]
        self.history_len = int(pooling["history_len"])
        self._pooling = (pooling["method"], float(pooling["decay"]), int(pooling["last_k"]))
        self.slate_size = int(manifest["slate_size"])
        self.greedy = manifest["action"] == "greedy"
        self.unknown_bias = np.float32(manifest["unknown_item_bias"])

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], max_candidates: int | None = None,
        threads: int | None = None,
    ) -> Ranker:  # fmt: skip
        """Load and verify a ranker directory written by ``rankgym export``.

        Every file the manifest lists must be there with its sha256, the tables must have the
        manifest's shapes and the scorer the expected inputs; any mismatch is a one-line
        :class:`RankerError` naming the file.

        Args:
            directory: the ranker directory.
            max_candidates: the most candidates per request (default: the manifest's).
            threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        """
        root = Path(directory)
        manifest = _read_manifest(root)
        for name, expected in manifest["files"].items():
            file = root / name
            if not file.is_file():
                raise RankerError(f"{file}: missing (listed in {MANIFEST})")
            if file_sha256(file) != expected:
                raise RankerError(f"{file}: changed since export (sha256 differs from {MANIFEST})")
        dims = manifest["dims"]
        d, fi, fu = dims["embedding"], dims["item_features"], dims["user_features"]
        n_items, n_queries = manifest["items"], manifest["queries"]
        shapes = {
            "items.npy": (n_items, d), "item_bias.npy": (n_items,),
            "item_features.npy": (n_items, fi), "queries.npy": (n_queries, d),
        }  # fmt: skip
        fv = dims.get("user_vectors", 0)
        if fu:
            shapes["user_features.npy"] = (manifest["users"], fu)
        if fv:
            shapes["user_vectors.npy"] = (manifest["users"], fv)
        tables = {name[:-4]: _read_npy(root, name, shape) for name, shape in shapes.items()}
        ids = {"items": _read_ids(root, "items.json", n_items),
               "queries": _read_ids(root, "queries.json", n_queries)}  # fmt: skip
        if fu or fv:
            ids["users"] = _read_ids(root, "users.json", manifest["users"])
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        session = _session(root / "scorer.onnx", options)
        names = tuple(i.name for i in session.get_inputs())
        if names != SCORER_INPUTS:
            raise RankerError(f"{root / 'scorer.onnx'}: inputs {names}; expected {SCORER_INPUTS}")
        encoder = _load_encoder(root, manifest, options)
        limit = manifest["max_candidates"] if max_candidates is None else max_candidates
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RankerError(f"max_candidates={limit!r}; allowed: an int >= 1")
        return cls(root, manifest, session, tables, ids, encoder, limit)

    # ------------------------------------------------------------------ ranking
    def rank(
        self,
        query: str | None,
        user_history: Sequence[Item] = (),
        candidates: Sequence[Item] = (),
        k: int | None = None,
        user_id: str | None = None,
    ) -> list[tuple[str, float]]:
        """The ranked candidates as ``(item_id, score)``, best first (``k`` of them; default all).

        Raises:
            RankerError: an input that cannot be ranked faithfully, naming it.
        """
        return self.rank_batch([_request(query, user_history, candidates, k, user_id)])[0]

    def rank_batch(self, requests: Sequence[Mapping[str, Any]]) -> list[list[tuple[str, float]]]:
        """:meth:`rank` for many requests (dicts with :data:`REQUEST_KEYS`) in one scorer call."""
        batch = self._prepare(requests)
        scores, _ = self._score(batch)
        out = []
        for b, (order, pos) in enumerate(self._orders(scores, batch)):
            s = scores[b, pos, order]
            out.append([(batch.ids[b][i], float(v)) for i, v in zip(order, s, strict=True)])
        return out

    def explain(
        self,
        query: str | None,
        user_history: Sequence[Item] = (),
        candidates: Sequence[Item] = (),
        k: int | None = None,
        user_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`rank` with, per ranked candidate, the additive parts of its score.

        Each entry: ``item_id``, ``rank`` (0 = first), ``position`` (the slot whose score
        placed it), ``score`` and ``parts`` (:data:`PARTS`: similarity to the query and to the
        user state, the learned item bias, the network's remainder), which sum to ``score``.
        """
        return self.explain_batch([_request(query, user_history, candidates, k, user_id)])[0]

    def explain_batch(self, requests: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
        """:meth:`explain` for many requests in one scorer call."""
        batch = self._prepare(requests)
        scores, parts = self._score(batch)
        out = []
        for b, (order, pos) in enumerate(self._orders(scores, batch)):
            rows = []
            for r, (i, p) in enumerate(zip(order, pos, strict=True)):
                rows.append({
                    "item_id": batch.ids[b][i], "rank": r, "position": int(p),
                    "score": float(scores[b, p, i]),
                    "parts": {n: float(v) for n, v in zip(PARTS, parts[b, p, i], strict=True)},
                })  # fmt: skip
            out.append(rows)
        return out

    def scores(
        self,
        query: str | None,
        user_history: Sequence[Item] = (),
        candidates: Sequence[Item] = (),
        user_id: str | None = None,
    ) -> np.ndarray:
        """``float32[P, N]``: every candidate's score at each slate position (``P`` is the slate
        size for a greedy policy, 1 for a sorting baseline), in the candidates' order.

        A greedy policy's scores compare candidates for one position; across positions they
        need not be on one scale.
        """
        batch = self._prepare([_request(query, user_history, candidates, None, user_id)])
        batch.n_rank[:] = len(candidates)
        return self._score(batch)[0][0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32[n, d]`` embeddings of ``texts`` with the exported encoder."""
        if self.encoder is None:
            raise RankerError(
                f"{self.directory}: exported without a text encoder (with_encoder=false), so "
                "only the items and queries it was exported with can be ranked"
            )
        return self.encoder(list(texts))

    def summary(self) -> dict[str, Any]:
        """What ``/health`` reports: policy, run, encoder, sizes and semantics."""
        m = self.manifest
        return {
            "policy": m["policy"], "run": m["run"],
            "encoder": {k: m["encoder"].get(k) for k in ("name", "kind", "fingerprint")},
            "items": m["items"], "queries": m["queries"], "slate_size": m["slate_size"],
            "max_candidates": self.max_candidates, "action": m["action"],
            "dims": m["dims"], "format_version": m["format_version"],
        }  # fmt: skip

    # ------------------------------------------------------------------ internals
    def _prepare(self, requests: Sequence[Mapping[str, Any]]) -> _Batch:
        """Validate requests, look up (or encode) every vector, pad into scorer inputs."""
        if not requests:
            raise RankerError("no requests")
        parsed = [self._parse(n, r) for n, r in enumerate(requests)]
        # texts to encode, once each: unknown queries and unknown items' texts
        texts: dict[str, int] = {}
        for req in parsed:
            if req["query_code"] is None:
                texts.setdefault(req["query"], len(texts))
            for _, code, text in req["history"] + req["candidates"]:
                if code is None:
                    texts.setdefault(text, len(texts))
        encoded = self.encode(list(texts)) if texts else np.zeros((0, self.dim), np.float32)
        b = len(parsed)
        n = max(len(r["candidates"]) for r in parsed)
        h = self.history_len
        d, fi, fu, fv = self.dim, self.fi, self.fu, self.fv
        inputs = {
            "query": np.zeros((b, d), np.float32), "user": np.zeros((b, d), np.float32),
            "context_features": np.zeros((b, fi + fu + fv), np.float32),
            "candidates": np.zeros((b, n, d), np.float32),
            "candidate_features": np.zeros((b, n, fi), np.float32),
            "bias": np.zeros((b, n), np.float32), "mask": np.zeros((b, n), bool),
        }  # fmt: skip
        history_vecs = np.zeros((b, h, d), np.float32)
        history_feats = np.zeros((b, h, fi), np.float32)
        history_codes = np.full((b, h), -1, np.int64)  # -1 padding; >= 0 a history slot
        ids, n_rank = [], np.zeros(b, np.int64)
        for r, req in enumerate(parsed):
            q = req["query_code"]
            inputs["query"][r] = (
                self.tables["queries"][q] if q is not None else encoded[texts[req["query"]]]
            )
            recent = req["history"][-h:]
            start = h - len(recent)  # right-aligned, most recent last, as in training
            history_codes[r, start:] = 0
            self._fill(recent, encoded, texts, history_vecs[r, start:], history_feats[r, start:])
            cands = req["candidates"]
            bias = self._fill(cands, encoded, texts, inputs["candidates"][r],
                              inputs["candidate_features"][r])  # fmt: skip
            inputs["bias"][r, : len(cands)] = bias
            inputs["mask"][r, : len(cands)] = True
            if fu and req["user_code"] is not None:  # an unknown user keeps zero features
                user_feats = self.tables["user_features"][req["user_code"]]
                inputs["context_features"][r, fi : fi + fu] = user_feats
            if fv and req["user_code"] is not None:  # an unknown user keeps the zero vector
                inputs["context_features"][r, fi + fu :] = self.tables["user_vectors"][
                    req["user_code"]
                ]
            ids.append([c[0] for c in cands])
            n_rank[r] = len(cands) if req["k"] is None else min(req["k"], len(cands))
        weights = pooling_weights(history_codes, *self._pooling)
        inputs["user"] = np.einsum("bh,bhd->bd", weights, history_vecs).astype(np.float32)
        if fi:
            pooled = np.einsum("bh,bhf->bf", weights, history_feats).astype(np.float32)
            inputs["context_features"][:, :fi] = pooled
        return _Batch(inputs, ids, n_rank)

    def _fill(
        self,
        items: list[tuple[str, int | None, str | None]],
        encoded: np.ndarray,
        texts: dict[str, int],
        vectors: np.ndarray,
        features: np.ndarray,
    ) -> np.ndarray:
        """Write the items' vectors and features into the first rows of ``vectors`` and
        ``features`` (known items from the tables, new ones from ``encoded``, zero features);
        return their biases."""
        codes = np.array([-1 if c is None else c for _, c, _ in items], dtype=np.int64)
        known = np.flatnonzero(codes >= 0)
        vectors[known] = self.tables["items"][codes[known]]
        features[known] = self.tables["item_features"][codes[known]]
        new = np.flatnonzero(codes < 0)
        if len(new):
            vectors[new] = encoded[[texts[items[i][2]] for i in new]]
        bias = np.full(len(items), self.unknown_bias, dtype=np.float32)
        bias[known] = self.tables["item_bias"][codes[known]]
        return bias

    def _parse(self, n: int, request: Mapping[str, Any]) -> dict[str, Any]:
        """One request checked and resolved to codes (``None`` code: encode its text)."""
        where = f"request {n}"
        if not isinstance(request, Mapping):
            raise RankerError(f"{where}: expected a mapping with keys {', '.join(REQUEST_KEYS)}")
        unknown = sorted(set(request) - set(REQUEST_KEYS))
        if unknown:
            allowed = ", ".join(REQUEST_KEYS)
            raise RankerError(f"{where}: unknown keys {unknown}; allowed: {allowed}")
        query = request.get("query")
        query = "" if query is None else query
        if not isinstance(query, str):
            kind = type(query).__name__
            raise RankerError(f"{where}: query must be a string or null, got {kind}")
        query_code = self.query_code.get(query)
        if query_code is None and self.encoder is None:
            raise RankerError(
                f"{where}: query {query!r} is not one the ranker was exported with, and it has "
                "no text encoder to encode it (export with with_encoder=true)"
            )
        cands = request.get("candidates") or []
        if not isinstance(cands, Sequence) or isinstance(cands, str) or not cands:
            raise RankerError(f"{where}: candidates must be a non-empty list of items")
        if len(cands) > self.max_candidates:
            raise RankerError(
                f"{where}: {len(cands)} candidates; this ranker accepts at most "
                f"{self.max_candidates} (max_candidates)"
            )
        candidates = [self._item(f"{where} candidate {j}", c) for j, c in enumerate(cands)]
        seen: set[str] = set()
        for item_id, _, _ in candidates:
            if item_id in seen:
                raise RankerError(f"{where}: candidate {item_id!r} appears twice")
            seen.add(item_id)
        history = request.get("user_history") or []
        if not isinstance(history, Sequence) or isinstance(history, str):
            raise RankerError(f"{where}: user_history must be a list of items (oldest first)")
        history = [self._item(f"{where} user_history {j}", c) for j, c in enumerate(history)]
        k = request.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise RankerError(f"{where}: k={k!r}; allowed: an int >= 1 or null (all)")
        user_id = request.get("user_id")
        # a user the ranker was not exported with (or none) is a new user: zero features and
        # vector (the z-scored columns' mean, no profile text, the cold-start vector)
        user_code = self.user_code.get(str(user_id)) if user_id is not None else None
        return {"query": query, "query_code": query_code, "candidates": candidates,
                "history": history, "k": k, "user_code": user_code}  # fmt: skip

    def _item(self, where: str, item: Item) -> tuple[str, int | None, str | None]:
        """``(item_id, code or None, text)`` of an item given as an id or a mapping."""
        if type(item) is str and item in self.item_code:  # the common case, first
            return item, self.item_code[item], None
        text = None
        if isinstance(item, Mapping):
            extra = sorted(set(item) - {"item_id", "text"})
            if extra or "item_id" not in item:
                raise RankerError(
                    f"{where}: an item mapping has keys item_id and (optionally) text; got "
                    f"{sorted(item)}"
                )
            text = item.get("text")
            if text is not None and not isinstance(text, str):
                raise RankerError(f"{where}: text must be a string, got {type(text).__name__}")
            item = item["item_id"]
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise RankerError(f"{where}: item_id must be a string, got {type(item).__name__}")
        item_id = str(item)
        code = self.item_code.get(item_id)
        if code is None:
            if text is None:
                raise RankerError(
                    f"{where}: unknown item {item_id!r} without a text; give "
                    '{"item_id", "text"} so it can be encoded'
                )
            if self.encoder is None:
                raise RankerError(
                    f"{where}: unknown item {item_id!r}, and this ranker has no text encoder "
                    "(export with with_encoder=true)"
                )
        return item_id, code, text

    def _score(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``[B, P, N]`` and parts ``[B, P, N, 4]`` at the positions to fill."""
        p = min(self.slate_size, int(batch.n_rank.max())) if self.greedy else 1
        feeds = {**batch.inputs, "positions": np.arange(p, dtype=np.int64)}
        scores, parts = self.session.run(None, feeds)
        return scores, parts

    def _orders(self, scores: np.ndarray, batch: _Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per request: candidate indices best first and the position each was scored at.

        Greedy: slot ``p`` takes the best candidate not yet placed under position ``p``'s
        scores (ties: the lower index, as the environment's argmax); past the scored positions
        the rest follow the last position's scores. Sort: the stable order of the scores.
        """
        mask = batch.inputs["mask"]
        out = []
        last = scores.shape[1] - 1
        for b, n in enumerate(batch.n_rank.tolist()):
            free = mask[b].copy()
            order: list[int] = []
            for p in range(min(n, last)):
                keyed = np.where(free, scores[b, p], -np.inf)
                best = int(np.argmax(keyed))
                order.append(best)
                free[best] = False
            keyed = np.where(free, scores[b, last].astype(np.float64), -np.inf)
            rest = np.argsort(-keyed, kind="stable")[: n - len(order)]
            order.extend(rest.tolist())
            positions = np.minimum(np.arange(len(order)), last)
            out.append((np.asarray(order, dtype=np.int64), positions))
        return out


def _request(
    query: str | None,
    user_history: Sequence[Item],
    candidates: Sequence[Item],
    k: int | None,
    user_id: str | None,
) -> dict[str, Any]:
    """One request in :meth:`Ranker.rank_batch`'s form."""
    return {"query": query, "user_history": user_history, "candidates": candidates, "k": k,
            "user_id": user_id}  # fmt: skip


# ---------------------------------------------------------------------- loading helpers
def _read_manifest(root: Path) -> dict[str, Any]:
    file = root / MANIFEST
    if not file.is_file():
        raise RankerError(f"{file}: missing; a ranker directory is written by experiments.export")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RankerError(f"{file}: not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RankerError(f"{file}: not a rankgym ranker manifest (format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RankerError(
            f"{file}: format_version {manifest.get('format_version')!r}; this rankgym reads "
            f"{FORMAT_VERSION}: export the run again"
        )
    required = ("files", "dims", "items", "queries", "slate_size", "max_candidates", "action",
                "user_pooling", "encoder", "policy", "unknown_item_bias")  # fmt: skip
    missing = [key for key in required if key not in manifest]
    if missing:
        raise RankerError(f"{file}: missing keys {missing}")
    if manifest["action"] not in ("greedy", "sort"):
        raise RankerError(f"{file}: action={manifest['action']!r}; allowed: greedy, sort")
    needed = {"scorer.onnx", "items.json", "items.npy", "item_bias.npy", "item_features.npy",
              "queries.json", "queries.npy"}  # fmt: skip
    if manifest["dims"].get("user_features"):
        needed |= {"users.json", "user_features.npy"}
    if manifest["dims"].get("user_vectors"):
        needed |= {"users.json", "user_vectors.npy"}
    needed |= {"onnx": {"encoder.onnx", "tokenizer.json"}, "hashing": {"hashing.json"}}.get(
        manifest["encoder"].get("kind"), set()
    )
    unlisted = sorted(needed - set(manifest["files"]))
    if unlisted:
        raise RankerError(f"{file}: does not list {unlisted} under files")
    return manifest


def file_sha256(file: Path) -> str:
    """The sha256 of a file (the manifest lists one per file)."""
    h = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_npy(root: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    file = root / name
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise RankerError(f"{file}: not a plain .npy array ({err})") from None
    if array.shape != shape:
        raise RankerError(f"{file}: shape {array.shape}; {MANIFEST} says {shape}")
    return array.astype(np.float32, copy=False)


def _read_ids(root: Path, name: str, n: int) -> list[str]:
    file = root / name
    try:
        ids = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RankerError(f"{file}: not JSON ({err})") from None
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
        raise RankerError(f"{file}: expected a list of {n} strings ({MANIFEST})")
    return ids


def _session(file: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RankerError(f"{file}: not loadable by onnxruntime ({first})") from None


def _load_encoder(root: Path, manifest: dict, options: ort.SessionOptions) -> Any:
    """``texts -> float32[n, d]`` for the exported encoder, or ``None``."""
    spec = manifest["encoder"]
    d = manifest["dims"]["embedding"]
    if spec.get("kind") == "hashing":
        from rankgym.encoders.hashing import HashingEncoder

        params = json.loads((root / "hashing.json").read_text())
        try:
            encoder = HashingEncoder(**params)
        except (TypeError, ValueError) as err:
            raise RankerError(f"{root / 'hashing.json'}: {err}") from None
        if encoder.fingerprint != spec["fingerprint"] or encoder.dim != d:
            raise RankerError(
                f"{root / 'hashing.json'}: gives encoder fingerprint {encoder.fingerprint}, the "
                f"ranker was exported with {spec['fingerprint']}"
            )
        return encoder.encode
    if spec.get("kind") != "onnx":
        return None
    from tokenizers import Tokenizer

    session = _session(root / "encoder.onnx", options)
    try:
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    except Exception as err:  # tokenizers raises a plain Exception on a bad file
        raise RankerError(f"{root / 'tokenizer.json'}: not loadable ({err})") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(spec["max_length"]))
    pad = int(spec["pad_token_id"])

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), d), np.float32)
        encodings = tokenizer.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(-lengths, kind="stable")  # batches of similar lengths pad less
        for start in range(0, len(texts), _ENCODE_BATCH):
            idx = order[start : start + _ENCODE_BATCH]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), pad, np.int64)
            attention = np.zeros((len(idx), width), np.int64)
            for row, i in enumerate(idx):
                ids[row, : lengths[i]] = encodings[i].ids
                attention[row, : lengths[i]] = 1
            feeds = {"input_ids": ids, "attention_mask": attention}
            out[idx] = session.run(None, feeds)[0]
        return out

    if encode([""]).shape != (1, d):
        raise RankerError(f"{root / 'encoder.onnx'}: does not give {d}-d embeddings")
    return encode
