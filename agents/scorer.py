"""CandidateScorer: one network scores every candidate of a request from the same weights."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

VARIANTS = ("mlp", "dot")
MASKED = -1e9  # logit / Q-value of a candidate that may not be placed (finite: no NaN)


def obs_mode_of(space: spaces.Dict) -> str:
    """``ids`` when candidates are integer codes, else ``embeddings``."""
    return "ids" if np.issubdtype(space["candidates"].dtype, np.integer) else "embeddings"


class CandidateScorer(nn.Module):
    """Scores each candidate from (query, user, item, position) with weights shared across them.

    Because the same function scores every candidate, the policy is permutation-equivariant,
    works for any ``K`` and is exactly what a ranker export ships. Masked candidates score
    :data:`MASKED`.

    * ``mlp``: ``MLP([item_h, ctx_h, item_h * ctx_h])`` with ``item_h = W_i item`` and
      ``ctx_h = W_c [query, user] + position embedding``;
    * ``dot``: ``<item_h, ctx_h>``;

    both plus a learned weighting of two cosine features (candidate with query, with user
    state): the similarity ranker's signal as an input, so learning starts from it.

    In ``ids`` observations the frozen embedding tables live on the module (buffers, moved with
    it to the GPU), the user state is the history items' embeddings weighted by the
    observation's ``user_weights`` (the env's pooling), and a learned
    per-item bias (``item_bias``) can capture what the texts do not say (quality, popularity).

    Feature tables (the dataset's feature columns, :mod:`rankgym.encoders.features`) join the text:
    an item's features are concatenated to its embedding before ``W_i``, the user's features to
    ``[query, user]`` before ``W_c``; the history is pooled over ``[embedding, features]``, so
    a user state exists for items described by features only.

    Args:
        observation_space: the env's ``Dict`` space (decides the observation mode and sizes).
        tables: ``items`` / ``queries`` arrays for ``ids`` mode, and ``item_features`` /
            ``user_features`` when the env has them (``None`` when loading: the buffers then
            come from the state dict, sized by ``table_shapes``).
        table_shapes: ``{"items": (I, d), "queries": (Q, d)}`` (+ the feature tables').
        variant: ``mlp`` or ``dot``.
        hidden: width of the projections.
        item_bias: learn a bias per item (``ids`` mode).
        max_positions: positions the position embedding covers.
        user_embedding: width of a learned vector per user (0: none), appended to the context:
            what a user prefers beyond what their history's texts say (brands, price, taste).
            Users the env never showed keep the zero vector (the cold-start user). Needs the
            observation's ``user_id``.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        tables: dict[str, np.ndarray] | None = None,
        table_shapes: dict[str, tuple[int, int]] | None = None,
        variant: str = "mlp",
        hidden: int = 64,
        item_bias: bool = True,
        max_positions: int = 64,
        user_embedding: int = 0,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"agent.scorer.variant={variant!r}; allowed: {', '.join(VARIANTS)}")
        if hidden < 1:
            raise ValueError(f"agent.scorer.hidden={hidden}; allowed: >= 1")
        if type(user_embedding) is not int or user_embedding < 0:
            raise ValueError(
                f"agent.scorer.user_embedding={user_embedding!r}; allowed: an int >= 0"
            )
        if user_embedding and "user_id" not in observation_space.spaces:
            raise ValueError(
                "agent.scorer.user_embedding needs the observation's user_id, which this env "
                "does not give (an env from an older rankgym?)"
            )
        self.mode = obs_mode_of(observation_space)
        self.variant = variant
        self.k = int(observation_space["mask"].shape[0])
        if self.mode == "ids":
            names = ["items", "queries"]
            names += [n for n in ("item_features", "user_features") if n in (tables or {})]
            if tables is not None:
                table_shapes = {n: tuple(tables[n].shape) for n in names}
            if table_shapes is None:
                raise ValueError("ids observations need the embedding tables (or their shapes)")
            self._table_shapes = {n: tuple(v) for n, v in table_shapes.items()}
            n_items, dim = table_shapes["items"]
            fi = table_shapes.get("item_features", (n_items, 0))[1]
            fu = table_shapes.get("user_features", (0, 0))[1]
            # last item row: padding (zeros)
            self._add_table("items", (n_items + 1, dim), tables, n_items)
            self._add_table("queries", tuple(table_shapes["queries"]), tables)
            self._add_table("item_features", (n_items + 1, fi), tables, n_items)
            self._add_table(
                "user_features", tuple(table_shapes.get("user_features", (0, 0))), tables
            )
            self.bias = nn.Embedding(n_items + 1, 1) if item_bias else None
            if self.bias is not None:
                nn.init.zeros_(self.bias.weight)
        else:
            dim = int(observation_space["query"].shape[0])
            fi = _width(observation_space, "candidate_features") // self.k
            fu = _width(observation_space, "user_features") - fi  # after the pooled history's
            self.bias = None
        self.dim, self.item_feature_dim, self.user_feature_dim = dim, fi, fu
        self.user_embedding_dim = user_embedding
        self.user_vectors: nn.Embedding | None = None
        if user_embedding:
            # the last row is the cold-start user (codes < 0): never trained, always zero
            n_users = int(observation_space["user_id"].high.max()) + 1
            self.user_vectors = nn.Embedding(n_users + 1, user_embedding)
            nn.init.zeros_(self.user_vectors.weight)
        self.item_proj = nn.Linear(dim + fi, hidden)
        self.ctx_proj = nn.Linear(2 * dim + fi + fu + user_embedding, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        if variant == "mlp":
            self.head = nn.Sequential(
                nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )
        self.similarity = nn.Linear(2, 1)  # weights of the two cosine features
        self.hidden = hidden
        self.bf16 = False  # bfloat16 products in autocast() (agents.training.learner_precision)
        self._unit_cache: torch.Tensor | None = None  # _unit_items()
        self._cosine_memo: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(_forget_unit_items)

    def _add_table(
        self,
        name: str,
        shape: tuple[int, ...],
        tables: dict[str, np.ndarray] | None,
        rows: int | None = None,
    ) -> None:
        """A frozen buffer of ``shape``, filled from ``tables[name]`` (first ``rows`` rows)."""
        buffer = torch.zeros(shape)
        if tables is not None and name in tables and shape[-1] > 0:
            buffer[: rows if rows is not None else shape[0]] = torch.as_tensor(
                tables[name], dtype=torch.float32
            )
        # empty tables are not saved: checkpoints from before feature tables still load
        self.register_buffer(name, buffer, persistent=shape[-1] > 0)

    @property
    def table_shapes(self) -> dict[str, tuple[int, int]] | None:
        """Shapes of the frozen tables (``ids`` mode), what a checkpoint needs to rebuild them."""
        return None if self.mode != "ids" else dict(self._table_shapes)

    def autocast(self) -> torch.autocast:
        """The context the policies compute in: bfloat16 products while :attr:`bf16` is set,
        float32 otherwise. Entered per forward pass, so that autocast's cache of bfloat16
        weights never outlives an optimizer step."""
        device = self.item_proj.weight.device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16)

    def encode(self, obs: dict[str, torch.Tensor]) -> Encoded:
        """Project the observation: context, candidates, mask, codes and similarity features."""
        mask = obs["mask"] > 0.5
        position = obs["position"].long().reshape(-1)
        if self.mode == "ids":
            pad = self.items.shape[0] - 1
            codes = obs["candidates"].long()
            codes = torch.where(codes >= 0, codes, pad)
            item_h = self._project_items(codes)
            items = item_feats = None
            if item_h is None:
                items, item_feats = self.items[codes], self.item_features[codes]
            history = obs["user"].long()
            history = torch.where(history >= 0, history, pad)
            # the env's pooling weights (padding weighs 0): the state the env itself pools,
            # summed by embedding_bag without materialising the [B, H, d] history
            weights = obs["user_weights"].to(self.items.dtype)
            user = nn.functional.embedding_bag(
                history, self.items, per_sample_weights=weights, mode="sum"
            )
            user_feats = [
                nn.functional.embedding_bag(
                    history, self.item_features, per_sample_weights=weights, mode="sum"
                )
                if self.item_feature_dim
                else user[:, :0]
            ]
            if self.user_feature_dim:
                user_feats.append(self.user_features[obs["user_id"].long().reshape(-1)])
            query = self.queries[obs["query"].long().reshape(-1)]
            user_feats += self._user_vectors(obs)
            sims = self._cosines(obs, query, user, codes)
        else:
            b, k = mask.shape  # k: the space's K, or 1 in DQN's placed-candidate samples
            items = obs["candidates"].reshape(b, k, self.dim)
            item_feats = obs.get("candidate_features", items[..., :0])
            item_feats = item_feats.reshape(b, k, self.item_feature_dim)
            codes, user, query = None, obs["user"], obs["query"]
            # [pooled history features, the user's own features], pooled by the env
            user_feats = [obs["user_features"]] if "user_features" in obs else []
            user_feats += self._user_vectors(obs)
            item_h = sims = None
        context = torch.cat([query, user, *user_feats], dim=1)
        return self.encode_vectors(
            query, user, context, items, item_feats, mask, position, codes,
            item_h=item_h, sims=sims,
        )  # fmt: skip

    def _cosines(
        self,
        obs: dict[str, torch.Tensor],
        query: torch.Tensor,
        user: torch.Tensor,
        codes: torch.Tensor,
    ) -> torch.Tensor:
        """``[B, K, 2]``: each candidate's cosine with the query and with the user state.

        The tables are frozen, so these are a function of the observation's candidates, query
        and history alone. A slot agent sees each request's candidates at every slot of its
        slate, so without autograd the rows whose inputs equal the previous call's are reused
        and only the others computed: the same values (this gather and ``bmm`` took a third
        of DQN's action selection, BENCHMARKS.md).
        """
        if torch.is_grad_enabled():
            return _cosine_features(query, user, self._unit_items()[codes])
        # copies: an observation's tensors may share memory with arrays the env reuses
        key = tuple(
            t.clone() for t in (codes, obs["query"].reshape(-1), obs["user"], obs["user_weights"])
        )
        memo = self._cosine_memo
        if memo is None or not _same_shapes(memo[0], key):
            return self._remember(key, _cosine_features(query, user, self._unit_items()[codes]))
        same = torch.ones(len(codes), dtype=torch.bool, device=codes.device)
        for new, old in zip(key, memo[0], strict=True):
            same &= (new == old).reshape(len(new), -1).all(1)
        sims = memo[1].clone()
        changed = (~same).nonzero().squeeze(1)
        if len(changed):
            sims[changed] = _cosine_features(
                query[changed], user[changed], self._unit_items()[codes[changed]]
            )
        return self._remember(key, sims)

    def _remember(self, key: tuple[torch.Tensor, ...], sims: torch.Tensor) -> torch.Tensor:
        """Keep ``sims`` as the cosines of the inputs ``key``; return them."""
        self._cosine_memo = (key, sims)
        return sims

    def _user_vectors(self, obs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``[the users' learned vectors]`` (``[]`` without them); unknown users (code < 0)
        get the zero row."""
        if self.user_vectors is None:
            return []
        codes = obs["user_id"].long().reshape(-1)
        cold = self.user_vectors.num_embeddings - 1
        return [self.user_vectors(torch.where(codes >= 0, codes, cold))]

    def _unit_items(self) -> torch.Tensor:
        """The item table scaled to unit rows (zero rows stay zero), computed once: the
        tables are frozen (a loaded state dict or a move to another device recomputes it)."""
        cached = self._unit_cache
        if cached is None or cached.device != self.items.device:
            cached = nn.functional.normalize(self.items, dim=-1)
            self._unit_cache = cached
        return cached

    def _project_items(self, codes: torch.Tensor) -> torch.Tensor | None:
        """``W_i [item, features]`` of ``codes`` from the projected item table, when the batch
        holds more candidate rows than the table (a training minibatch): one projection of
        ``I`` rows instead of ``B * K`` (the same values, up to float rounding). ``None`` for
        small batches, which project their own rows."""
        if codes.numel() <= self.items.shape[0]:
            return None
        table = self.item_proj(torch.cat([self.items, self.item_features], dim=-1))
        return table[codes]

    def encode_vectors(
        self,
        query: torch.Tensor,
        user: torch.Tensor,
        context: torch.Tensor,
        items: torch.Tensor | None,
        item_feats: torch.Tensor | None,
        mask: torch.Tensor,
        position: torch.Tensor,
        codes: torch.Tensor | None = None,
        positions_axis: bool = False,
        item_h: torch.Tensor | None = None,
        sims: torch.Tensor | None = None,
    ) -> Encoded:
        """:meth:`encode` from vectors rather than an observation (what an exported ranker has).

        ``query``/``user`` are ``[B, d]``, ``context`` ``[B, 2d + features]`` (query, user
        state, pooled history features, the user's own features, the user's learned vector),
        ``items`` ``[B, N, d]`` and ``item_feats`` ``[B, N, fi]``; ``position`` is ``[B]``, or
        with ``positions_axis`` ``[P]``, to score every request at ``P`` positions at once
        (``ctx`` is then ``[B, P, h]`` and :meth:`score` returns ``[B, P, N]``). ``item_h``: the
        candidates' projections when already computed (:meth:`encode` takes them from the item
        table), ``sims`` their ``[B, N, 2]`` cosines with the query and the user state when
        already computed; with both given, ``items`` and ``item_feats`` are not read
        (``None``).
        """
        position = position.clamp(0, self.position.num_embeddings - 1)
        ctx = self.ctx_proj(context)
        if positions_axis:
            ctx = ctx.unsqueeze(1) + self.position(position).unsqueeze(0)
        else:
            ctx = ctx + self.position(position)
        # cosine of the candidate with the query and with the user state: the signal a
        # similarity ranker uses, given to the network directly rather than rediscovered
        if sims is None:
            sims = _cosine_features(query, user, nn.functional.normalize(items, dim=-1))
        if item_h is None:
            item_h = self.item_proj(torch.cat([items, item_feats], dim=-1))
        return Encoded(ctx, item_h, mask, codes, sims)

    def score(self, enc: Encoded, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, K]`` scores from :meth:`encode`'s output; masked candidates get MASKED.

        ``bias`` (``[B, K]``) replaces the learned item bias: an exported ranker looks the
        bias up in its own item table (and gives unknown items 0).
        """
        network, sims, codes, mask = self._network(enc)
        # float32 whatever autocast computed them in (agents.training.learner_precision)
        scores = network.float() + self.similarity(sims).squeeze(-1).float()
        bias = self._bias(codes, bias, enc.ctx.dim() == 3)
        if bias is not None:
            scores = scores + bias
        return scores.masked_fill(~mask, MASKED)

    def score_parts(self, enc: Encoded, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., N, 4]`` additive parts of the unmasked scores (what a ranker explains).

        The parts are the weighted cosine with the query, the weighted cosine with the user
        state, the learned item bias (0 without one) and the network's remainder (its head
        plus the similarity weighting's intercept); they sum to :meth:`score` (up to float
        rounding) wherever the candidate may be placed.
        """
        network, sims, codes, _ = self._network(enc)
        w = self.similarity.weight.reshape(-1)
        bias = self._bias(codes, bias, enc.ctx.dim() == 3)
        bias = torch.zeros_like(network) if bias is None else bias
        parts = (sims[..., 0] * w[0], sims[..., 1] * w[1], bias, network + self.similarity.bias)
        return torch.stack(torch.broadcast_tensors(*parts), dim=-1)

    def _bias(
        self, codes: torch.Tensor | None, given: torch.Tensor | None, positions_axis: bool
    ) -> torch.Tensor | None:
        """The item bias: ``given`` (``[B, N]``), else the learned table's for ``codes``."""
        if given is not None:
            return given.unsqueeze(1) if positions_axis else given
        if self.bias is None or codes is None:
            return None
        return self.bias(codes).squeeze(-1)

    def _network(
        self, enc: Encoded
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The head's output ``[..., N]`` and the similarity features, codes and mask, each
        with the position axis of ``enc.ctx`` when it has one."""
        item_h, sims, mask, codes = enc.item_h, enc.sims, enc.mask, enc.codes
        if enc.ctx.dim() == 3:  # [B, P, h]: every request at P positions
            item_h, sims, mask = item_h.unsqueeze(1), sims.unsqueeze(1), mask.unsqueeze(1)
            codes = None if codes is None else codes.unsqueeze(1)
        c = enc.ctx.unsqueeze(-2)
        if self.variant == "mlp":
            # head[0] applied to relu([item_h, ctx, item_h * ctx]) as the sum of its three
            # blocks: the context's block once per request, not once per candidate, and no
            # [B, K, 3h] concatenation (the same function as the concatenated layer)
            first, h = self.head[0], self.hidden
            w_item, w_ctx, w_both = first.weight.split(h, dim=1)
            x = (
                nn.functional.linear(torch.relu(item_h), w_item)
                + nn.functional.linear(torch.relu(c), w_ctx, first.bias)
                + nn.functional.linear(torch.relu(item_h * c), w_both)
            )
            return self.head[2](torch.relu(x)).squeeze(-1), sims, codes, mask
        return (item_h * c).sum(-1) / self.hidden**0.5, sims, codes, mask

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, K]`` candidate scores."""
        return self.score(self.encode(obs))

    def pooled(self, enc: Encoded) -> torch.Tensor:
        """``[B, 2h]`` state summary for a critic: context and the mean placeable candidate."""
        m = enc.mask.unsqueeze(-1).float()
        mean_item = (enc.item_h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.cat([enc.ctx, mean_item], dim=1)


def _forget_unit_items(module: nn.Module, incompatible_keys: Any) -> None:
    """After a state dict is loaded, the tables may have changed: recompute the unit table
    and the cosines."""
    module._unit_cache = None
    module._cosine_memo = None


def _cosine_features(query: torch.Tensor, user: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``[B, N, 2]`` cosines of the unit candidates ``[B, N, d]`` with ``query`` and ``user``
    (``[B, d]``)."""
    probes = torch.stack(
        [nn.functional.normalize(query, dim=-1), nn.functional.normalize(user, dim=-1)], dim=1
    )
    # float32 under autocast too (agents.training.learner_precision): the memo of
    # CandidateScorer._cosines serves the learner's and the evaluation's calls alike
    with torch.autocast(unit.device.type, enabled=False):
        # [B, 2, d] @ [B, d, N], then [B, N, 2]: on the CPU this layout is ~5x faster than
        # [B, N, d] @ [B, d, 2] (the same sums)
        return torch.bmm(probes, unit.transpose(1, 2)).transpose(1, 2)


def _same_shapes(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    """Whether two tuples of tensors match in shape and device, element by element."""
    return all(x.shape == y.shape and x.device == y.device for x, y in zip(a, b, strict=True))


def _width(space: spaces.Dict, key: str) -> int:
    """Length of the ``key`` box of ``space`` (0 when absent)."""
    return int(space[key].shape[0]) if key in space.spaces else 0


class Encoded(NamedTuple):
    """What :meth:`CandidateScorer.encode` computes once and the heads share."""

    ctx: torch.Tensor  # [B, h] query + user + position
    item_h: torch.Tensor  # [B, K, h] projected candidates
    mask: torch.Tensor  # [B, K] bool, True = may be placed
    codes: torch.Tensor | None  # [B, K] item codes (ids mode; padding = the zero row)
    sims: torch.Tensor  # [B, K, 2] cosine with the query and with the user state
