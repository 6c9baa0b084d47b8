"""The neural click model's settings: one dataclass whose defaults are the measured ones.

``conf/reward/neural.yaml`` mirrors :class:`NeuralSettings` key for key and value for value
(tested), so ``NeuralClickModel()`` in a notebook is the simulator that ``reward=neural`` runs
and that the fidelity figures in BENCHMARKS.md describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STRUCTURES = ("pbm", "cascade")  # the click structures a fit can choose
CALIBRATIONS = ("none", "level")
FEATURES = ("lexical", "encoder")
DEVICES = ("cpu", "cuda", "auto")


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"reward.{key}={value!r}; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass(frozen=True)
class NeuralSettings:
    """How the neural click model is built and fitted (``reward.<field>`` in the config).

    Attributes:
        hidden: width of the MLP's two hidden layers.
        epochs: passes over the training requests.
        mlp_epochs: epochs after which the MLP stops learning while the item biases (and the
            examination or abandonment) go on for the rest of ``epochs`` (``None``: all of
            them). An MLP stopped early generalises better to the (query, item) pairs the log
            never showed, so the simulator's best policy is better in truth, but it ranks other
            policies less well (``conf/reward/neural_train.yaml``; BENCHMARKS.md).
        lr: Adam learning rate of the MLP and the item biases (10x for the examination and
            abandonment logits, each of which sees a whole position's data).
        batch_size: impressions per minibatch (whole requests).
        dropout: probability of dropping each hidden unit of the MLP while fitting, from each
            member's own seeded stream; serving uses every unit. One fit is less noisy with it:
            mean error of 3 fits 3.8% to 3.6% (PBM world) and 4.0% to 3.2% (cascade world).
        item_bias: a learned bias per item: what an item's text does not say (its quality).
            It starts at 0, so an item never logged keeps the text-only estimate.
        bias_decay: Adam weight decay of the item biases (shrinks rarely seen items).
        structure: ``pbm`` (examination per position, fixed from the pairs the logger showed
            at several positions), ``cascade`` (top-down until the first click, leaving after
            a skip with a learned probability) or ``auto``: the one with the higher held-out
            likelihood on 10% of the training sessions, one member of each fitted for at most
            5 epochs.
        calibrate: ``level``: fit on 90% of the training sessions, then shift each member's
            attractiveness logit so that its expected clicks of the other 10%'s logged rankings
            equal their observed clicks (the level of pairs never logged is set by how far a fit
            memorises its training pairs); under the cascade structure the abandonment is set
            there too, to the value of highest held-out likelihood (the joint fit explains skips
            by memorised low attractiveness instead: 0.22 against the world's 0.3). ``none``:
            fit on all training sessions, uncalibrated.
        crossfit: with ``calibrate: level``, member ``m`` holds out its own tenth of the
            training sessions (folds of one shuffle) and is calibrated there, so the ensemble's
            level is set on ``min(ensemble, 10)`` tenths rather than one (PBM world: tau 0.848
            to 0.905).
        item_stats: one more item input, the item's impressions in the training log (``log1p``,
            z-scored): the logger shows more often what it ranks higher. A training request sees
            the count without its own session's impressions, as a held-out request does.
        features: ``lexical`` (hashed words and n-grams of the log's texts, the same simulator
            whatever encoder the policy observes) or ``encoder`` (the run's text embeddings).
        use_features: also read the dataset's item and user feature columns
            (:mod:`rankgym.encoders.features`); no effect without them.
        profile: also read the user's profile text as an input of its own beside the pooled
            history: ``[.., p, p * i]`` (error 6.0% to 4.5% on the PBM world).
        match: also the dot products ``q.i``, ``u.i`` (and ``p.i``) as inputs, so a lexical
            match counts for words the log never paired (mean error of 3 fits 4.9% to 3.8% on
            the PBM world, 4.9% to 4.0% on the cascade one).
        session_history: append the items clicked earlier in a session to the user's history
            (as the env does) in fitting and serving; ``false``: the user state is the pre-log
            history alone. In a sequential world a user's in-session drift is satiation, which
            depends on what was shown, not only on what was clicked: a click model that learns
            it from the logger's clicks carries the logger's satiation to every policy, so there
            the user-response model (:mod:`~rankgym.envs.click_models.user_response`) owns it
            (``reward=neural_longterm``).
        ensemble: members fitted from seeds ``seed, seed + 1, ...``; the attractiveness is their
            mean (one fit's level moves by up to 20% with its seed alone).
        bootstrap: the variance of each member's session weights, a draw of its own (gamma
            with mean 1, seeded ``seed + m``; 1 is the Bayesian bootstrap; 0, the default,
            equal weights). Even without it the members differ as fits on other logs would in
            the tenth their level is calibrated on (``crossfit``) and in their seed, and their
            spread gives every simulated value its interval
            (:func:`rankgym.agents.evaluation.epistemic_interval`; 87-93% of the zoo covered
            on the default worlds). Most of that spread is the level's, the same share for every
            policy: sd 4.7% of a value with equal weights, 5.3-5.8% with variance 0.25 or 1.
            Variance 1 cost the served mean 0.02 of tau and 0.5% of error on both default
            worlds, 0.25 cost 1.1% of error on the cascade one (BENCHMARKS.md).
        penalty: served attractiveness is the members' mean minus ``penalty`` times their
            standard deviation (clipped at 0): a pessimistic simulator (MOPO-style) that pays
            less where its members disagree. On the PBM world no strength raised the true value
            of the simulator's own best policy; it lowers what the simulator believes
            (BENCHMARKS.md). 0: the mean. Needs ``ensemble >= 2``.
        seed: seeds initialisation, minibatch order, dropout masks and the splits.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available) for fitting.
    """

    hidden: int = 128
    epochs: int = 20
    mlp_epochs: int | None = None
    lr: float = 2e-3
    batch_size: int = 512
    dropout: float = 0.2
    item_bias: bool = True
    bias_decay: float = 1e-4
    structure: str = "auto"
    calibrate: str = "level"
    crossfit: bool = True
    item_stats: bool = True
    features: str = "lexical"
    use_features: bool = True
    profile: bool = True
    match: bool = True
    session_history: bool = True
    ensemble: int = 5
    bootstrap: float = 0.0
    penalty: float = 0.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        """Refuse a wrong value, naming ``reward.<field>`` and what is allowed; store numbers
        as plain ``int`` / ``float``."""
        for key in ("hidden", "epochs", "batch_size", "ensemble"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                _fail(key, value, "an int >= 1")
            object.__setattr__(self, key, int(value))
        if self.mlp_epochs is not None:
            if not _is_int(self.mlp_epochs) or self.mlp_epochs < 1:
                _fail("mlp_epochs", self.mlp_epochs, "an int >= 1, or null")
            object.__setattr__(self, "mlp_epochs", int(self.mlp_epochs))
        if not _is_int(self.seed):
            _fail("seed", self.seed, "an int")
        object.__setattr__(self, "seed", int(self.seed))
        if not _is_number(self.lr) or not self.lr > 0:
            _fail("lr", self.lr, "a number > 0")
        if not _is_number(self.bias_decay) or not self.bias_decay >= 0:
            _fail("bias_decay", self.bias_decay, "a number >= 0")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            _fail("dropout", self.dropout, "a probability in [0, 1)")
        if not _is_number(self.bootstrap) or not 0 <= self.bootstrap <= 1:
            _fail("bootstrap", self.bootstrap, "a variance in [0, 1] (0: equal weights)")
        if not _is_number(self.penalty) or not self.penalty >= 0:
            _fail("penalty", self.penalty, "a number >= 0")
        if self.penalty > 0 and self.ensemble < 2:
            _fail("penalty", self.penalty, "0 with ensemble=1 (it scales the members' spread)")
        for key in ("lr", "bias_decay", "dropout", "bootstrap", "penalty"):
            object.__setattr__(self, key, float(getattr(self, key)))
        for key in (
            "item_bias",
            "crossfit",
            "item_stats",
            "use_features",
            "profile",
            "match",
            "session_history",
        ):
            if not isinstance(getattr(self, key), bool):
                _fail(key, getattr(self, key), "true, false")
        choices = {
            "structure": (*STRUCTURES, "auto"),
            "calibrate": CALIBRATIONS,
            "features": FEATURES,
            "device": DEVICES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                _fail(key, getattr(self, key), ", ".join(allowed))
