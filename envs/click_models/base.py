"""The click-model (reward-model) contract shared by every model and both environments.

Every click model in rankgym is *attractiveness x position structure*:

* ``attractiveness(context, requests, items, history)``: probability that the user clicks a
  candidate once they examine it. It depends on the request (query, user) and the item, never on
  the ranking, so the environments compute it once per request.
* ``structure``: how examination depends on the ranking.

  - ``pbm``: position ``k`` is examined with probability ``examination[k]``, independently;
  - ``cascade``: top-down until the first click;
  - ``dcm``: top-down; after a click at ``k`` the user goes on with probability
    ``continuation[k]``;

  in both, after a skipped item at ``k`` the user leaves with probability ``abandonment[k]``
  (0 unless the model says otherwise);
  - ``independent``: the attractiveness is the click probability (``logged``).

:meth:`ClickModel.click_probs` turns both into per-position click probabilities of any ranking;
:func:`slot_click_prob` does the same one slot at a time for the ``slot`` action mode.

A fitted model holds no state about the log it is applied to: whoever replays or evaluates a log
asks the model once for that log's :class:`LogContext` (:meth:`ClickModel.context`, which also
refuses a log of another dataset) and passes it to every call. One model object can therefore
serve a training env, an evaluation env and a fidelity report at the same time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rankgym.encoders.pooling import UserPooling
from rankgym.logs import SessionLog
from rankgym.logs.dynamics import UserDynamics

MAX_POSITIONS = 64


def log_fingerprint(log: SessionLog) -> str:
    """Identity of a dataset's item, user and query tables (what a fitted model's codes mean)."""
    h = hashlib.sha256()
    for table in (log.item_ids, log.user_ids, log.query_texts):
        h.update(str(len(table)).encode())
        h.update("\x1f".join(map(str, table)).encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True, eq=False)
class LogContext:
    """What a click model reads about the log it is applied to, computed once per log.

    Attributes:
        log: the log whose request codes the calls take.
        arrays: per-log arrays a model precomputes (truth rows, pre-log user states...).
    """

    log: SessionLog
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class ClickModel:
    """Base class of the reward models (``conf/reward/*.yaml``).

    Subclasses set ``name`` and ``structure``, fill ``examination`` / ``continuation`` when
    their structure uses them, and implement :meth:`attractiveness`; fitted models implement
    :meth:`fit`, and persistent ones :meth:`state` / :meth:`from_state`.

    Attributes:
        examination: ``float64[MAX_POSITIONS]`` PBM examination probability per position.
        continuation: ``float64[MAX_POSITIONS]`` DCM probability of going on after a click.
        abandonment: ``float64[MAX_POSITIONS]`` cascade / DCM probability of leaving after a
            skipped item.
        needs_history: ``True`` when attractiveness depends on the user's current history
            (the environment then passes it on every request; the model pools it itself).
        pooling: the :class:`~rankgym.encoders.pooling.UserPooling` the model was fitted with, for
            models that read the history (the environment must keep and pool it the same way).
        encoder_fingerprint: the text encoder of the embeddings it was fitted on (``None``:
            it reads none of the run's embeddings).
        dataset: :func:`log_fingerprint` of the data it was fitted on (``None``: any log).
    """

    name: ClassVar[str] = "base"
    structure: str = "pbm"
    needs_history: ClassVar[bool] = False
    # True for a model that replays the clicks of the log it is applied to (not a model of
    # them): an off-policy estimator cannot use it as its control variate
    replays_clicks: ClassVar[bool] = False
    reads_embeddings: bool = False  # the fit depends on the run's text embeddings
    # config keys that change how a fitted model serves, not the fit (left out of its cache key)
    serving_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.examination = np.ones(MAX_POSITIONS)
        self.continuation = np.zeros(MAX_POSITIONS)
        self.abandonment = np.zeros(MAX_POSITIONS)
        self.dataset: str | None = None
        self.pooling: UserPooling | None = None
        self.encoder_fingerprint: str | None = None
        # a sequential world's user-response model, fitted beside the click model
        # (rankgym.envs.click_models.user_response); not part of the saved state
        self.response: UserDynamics | None = None

    # ------------------------------------------------------------------ to implement
    def fit(self, train: SessionLog, **context: Any) -> ClickModel:
        """Fit on training sessions (no-op for models that need no fitting); returns self."""
        return self

    def attractiveness(
        self,
        context: LogContext,
        requests: np.ndarray,
        items: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """``float64[B, K]`` click probability given examination.

        Args:
            context: :meth:`context` of the log whose request codes ``requests`` are.
            requests: ``int64[B]`` request codes.
            items: ``int64[B, K]`` item codes, ``-1`` for empty slots (probability 0).
            history: ``int64[B, H]`` each request's user history at that moment (item codes,
                right-aligned, ``-1`` padding), for models that need it; ``None``: the history
                the log had (earlier requests' logged clicks appended).
        """
        raise NotImplementedError

    def user_dynamics(self) -> UserDynamics | None:
        """Continuation, satiation and return, for a model of a sequential world (the
        replay engine then ends sessions and episodes by them); ``None``: each request is a
        bandit and episodes replay their logged requests. A fitted model serves the
        user-response model fitted beside it (``response``), if any."""
        return self.response

    # ------------------------------------------------------------------ shared behaviour
    def context(self, log: SessionLog) -> LogContext:
        """The per-log inputs of this model for ``log`` (subclasses add their arrays).

        Raises:
            ValueError: when the model was fitted on another dataset.
        """
        fingerprint = log_fingerprint(log)
        if self.dataset is not None and self.dataset != fingerprint:
            raise ValueError(
                f"reward model {self.name!r} was fitted on dataset {self.dataset} but the log is "
                f"dataset {fingerprint}: refit it on this dataset's training sessions"
            )
        return LogContext(log)

    def check_replay(self, pooling: UserPooling) -> None:
        """Refuse to serve histories kept another way than those the model was fitted on.

        A model that reads the history pools it with its own tables (saved with it), so the
        environment's encoder may differ from the one the model was fitted with; the history
        itself must be the same.

        Raises:
            ValueError: naming both poolings, and what to change.
        """
        if not self.needs_history:
            return
        if self.pooling is not None and self.pooling != pooling:
            raise ValueError(
                f"reward model {self.name!r} was fitted on user states pooled as {self.pooling} "
                f"but the env pools them as {pooling}: refit it with the env's pooling"
            )

    def click_probs(
        self,
        context: LogContext,
        requests: np.ndarray,
        rankings: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray:
        """``float64[B, L]`` click probability at each position of each ranking.

        ``rankings`` holds item codes in display order, ``-1`` for empty positions (never
        clicked; they do not stop a cascade).
        """
        rankings = np.atleast_2d(rankings)
        attr = self.attractiveness(context, np.asarray(requests), rankings, history)
        return positional_click_probs(attr, rankings >= 0, self)

    def member_click_probs(
        self,
        context: LogContext,
        requests: np.ndarray,
        rankings: np.ndarray,
        history: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """``float64[M, B, L]``: :meth:`click_probs` under each of an ensemble's ``M`` members
        alone (their spread is the model's epistemic uncertainty); ``None`` for a model that is
        not an ensemble of at least two members."""
        return None

    def log_likelihood(self, log: SessionLog, history: np.ndarray | None = None) -> float:
        """Mean log-likelihood per impression of ``log``'s clicks at their logged positions.

        For ``cascade`` / ``dcm`` the probability of each click is conditioned on the clicks
        above it (the sequential likelihood); for ``pbm`` / ``independent`` positions are
        independent.
        """
        rankings, clicks = logged_rankings(log)
        attr = self.attractiveness(self.context(log), np.arange(log.n_requests), rankings, history)
        attr = np.clip(attr, 1e-6, 1 - 1e-6)
        valid = rankings >= 0
        width = rankings.shape[1]
        if self.structure in ("pbm", "independent"):
            exam = self.examination[:width] if self.structure == "pbm" else np.ones(width)
            p = np.clip(attr * exam, 1e-6, 1 - 1e-6)
        elif self.structure == "cascade" and self.abandonment[:width].any():
            # P(click at k | no click above) = a_k r_k / P(no click above), with r_k the chance
            # to reach k with no click: prod_{j<k} (1 - a_j)(1 - abandonment_j); 0 after a click
            reach = np.cumprod((1 - attr) * (1 - self.abandonment[:width]), axis=1)
            reach = np.concatenate([np.ones((len(attr), 1)), reach[:, :-1]], axis=1)
            first = attr * reach
            none_above = 1 - np.concatenate(
                [np.zeros((len(attr), 1)), np.cumsum(first, axis=1)[:, :-1]], axis=1
            )
            after_click = np.cumsum(clicks, axis=1) - clicks > 0
            p = np.where(after_click, 1e-6, first / np.maximum(none_above, 1e-12))
            p = np.clip(p, 1e-6, 1 - 1e-6)
        else:
            # examined at k unless the user stopped above: cascade stops at the first click,
            # dcm after a click at j with probability 1 - continuation[j]
            if self.abandonment[:width].any():
                raise NotImplementedError("the dcm likelihood with abandonment is not built")
            go_on = 0.0 if self.structure == "cascade" else self.continuation[:width]
            step = np.where(clicks == 1, go_on, 1.0)
            step = np.where(valid, step, 1.0)
            examined = np.concatenate(
                [np.ones((len(step), 1)), np.cumprod(step, axis=1)[:, :-1]], axis=1
            )
            p = np.clip(attr * examined, 1e-6, 1 - 1e-6)
        ll = clicks * np.log(p) + (1 - clicks) * np.log(1 - p)
        return float(ll[valid].mean())

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save (subclasses add theirs)."""
        return {
            "examination": self.examination,
            "continuation": self.continuation,
            "abandonment": self.abandonment,
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned."""
        self.examination = arrays["examination"]
        self.continuation = arrays["continuation"]
        self.abandonment = arrays.get("abandonment", np.zeros(MAX_POSITIONS))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON), saved beside the arrays."""
        return {}

    def fit_config(self) -> dict[str, Any]:
        """:meth:`config` without the :attr:`serving_keys`: what the fit depends on."""
        return {k: v for k, v in self.config().items() if k not in self.serving_keys}

    def serve_as(self, other: ClickModel) -> ClickModel:
        """This fitted model, serving with ``other``'s :attr:`serving_keys` (a cached fit
        reused by a model that differs only in those); returns self."""
        return self

    def save(self, directory: str | Path) -> None:
        """Write ``model.json`` + ``arrays.npz`` (no pickles)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "structure": self.structure,
            "dataset": self.dataset,
            "pooling": None if self.pooling is None else asdict(self.pooling),
            "config": self.config(),
        }
        np.savez(out / "arrays.npz", **self.state())
        (out / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ClickModel:
        """Load a model written by :meth:`save` (the class is named in ``model.json``)."""
        import importlib
        import inspect

        src = Path(directory)
        if not (src / "model.json").is_file():
            raise FileNotFoundError(f"{src / 'model.json'}: missing; not a saved reward model")
        meta = json.loads((src / "model.json").read_text())
        module, _, qualname = meta["class"].rpartition(".")
        if not module.startswith("rankgym.envs.click_models"):
            raise ValueError(f"{src / 'model.json'}: class {meta['class']!r} is not a click model")
        klass = getattr(importlib.import_module(module), qualname)
        unknown = sorted(set(meta["config"]) - set(inspect.signature(klass).parameters))
        if unknown:
            raise ValueError(
                f"{src / 'model.json'}: saved with {', '.join(unknown)}, which {qualname} does "
                f"not take (written by another version of rankgym); delete {src} to refit it"
            )
        model = klass(**meta["config"])
        model.structure = meta["structure"]
        model.dataset = meta["dataset"]
        pooling = meta.get("pooling")
        model.pooling = None if pooling is None else UserPooling(**pooling)
        with np.load(src / "arrays.npz", allow_pickle=False) as arrays:
            model.load_state({k: arrays[k] for k in arrays.files})
        return model


def positional_click_probs(attr: np.ndarray, valid: np.ndarray, model: ClickModel) -> np.ndarray:
    """Per-position click probabilities from attractiveness in display order (``[B, L]``)."""
    attr = np.where(valid, attr, 0.0)
    width = attr.shape[1]
    if model.structure == "independent":
        return attr
    if model.structure == "pbm":
        return attr * model.examination[:width]
    go_on = 0.0 if model.structure == "cascade" else model.continuation[:width]
    stay = 1.0 - model.abandonment[:width]
    survive = (1.0 - attr) * stay + attr * go_on  # P(go past position k | examined k)
    examined = np.concatenate([np.ones((len(attr), 1)), np.cumprod(survive, axis=1)[:, :-1]], 1)
    return attr * examined


def slot_click_prob(
    attr: np.ndarray, position: np.ndarray, examined: np.ndarray, model: ClickModel
) -> tuple[np.ndarray, np.ndarray]:
    """One slot of :func:`positional_click_probs`, for building a slate left to right.

    Args:
        attr: ``float64[B]`` attractiveness of the item placed now.
        position: ``int64[B]`` the position it is placed at.
        examined: ``float64[B]`` probability that this position is examined given the items
            above it (start each slate at 1).

    Returns:
        (click probability at this slot, examination probability of the next slot).
    """
    if model.structure == "independent":
        return attr, examined
    if model.structure == "pbm":
        return attr * model.examination[position], examined
    go_on = 0.0 if model.structure == "cascade" else model.continuation[position]
    stay = 1.0 - model.abandonment[position]
    return attr * examined, examined * ((1.0 - attr) * stay + attr * go_on)


def sample_slot_click(
    attr: np.ndarray,
    position: np.ndarray,
    examining: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    model: ClickModel,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample the click of the item placed now: the sampled counterpart of slot_click_prob.

    Args:
        attr: ``float64[B]`` attractiveness of the placed item.
        position: ``int64[B]`` its position.
        examining: ``bool[B]`` whether the (cascade / dcm) user still scans at this position.
        u, v: ``float64[B]`` uniforms for the click, and for going on after it (a click) or
            leaving (a skip): the two events exclude each other, so one uniform serves both.

    Returns:
        (clicks, whether the user still scans the next position).
    """
    if model.structure == "pbm":
        return u < attr * model.examination[position], examining
    if model.structure == "independent":
        return u < attr, examining
    click = examining & (u < attr)
    go_on = 0.0 if model.structure == "cascade" else model.continuation[position]
    stays = v >= model.abandonment[position]
    return click, np.where(click, v < go_on, examining & stays)


def logged_rankings(log: SessionLog, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The logged rankings and clicks as ``[R, width]`` matrices (``-1`` / 0 where empty)."""
    width = width or int(log.position.max()) + 1
    keep = log.position < width
    req = log.impression_request[keep]
    pos = log.position[keep]
    rankings = np.full((log.n_requests, width), -1, dtype=np.int64)
    clicks = np.zeros((log.n_requests, width), dtype=np.float64)
    rankings[req, pos] = log.item[keep]
    clicks[req, pos] = log.click[keep]
    return rankings, clicks
