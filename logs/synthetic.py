"""The synthetic world: rankgym's embedded default dataset, generated from a seed.

Small enough to generate in seconds on a laptop CPU, realistic enough that text encoders matter:

* items with natural-language titles from latent attributes (12 categories, brand, colour,
  material/use, price band, a hidden quality), e.g. "Nordik waterproof hiking boots, brown";
* queries written from a request's latent intent with paraphrase (synonyms, word order, partial
  mentions, misspellings), so exact word overlap alone does not solve the task; empty queries for
  recommendation sessions;
* users with latent category, brand and price preferences, a profile text and a pre-log history;
* sessions of several requests whose later queries refine the user's intent;
* a logging ranker (noisy lexical match + popularity, Plackett-Luce sampling with a temperature)
  that records each shown item's exact propensities (item-position and prefix,
  :mod:`rankgym.logs.plackett_luce`);
* a ground-truth click model (:mod:`rankgym.logs.ground_truth`, PBM or cascade) saved with the
  world.

Everything per impression is vectorised; Python loops run only per item, user and request, to
write texts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from rankgym.logs.atomic import atomic_directory
from rankgym.logs.candidates import CandidateOptions
from rankgym.logs.dynamics import DynamicsParams, play_sessions
from rankgym.logs.ground_truth import (
    CLICK_MODELS,
    LATENT_DIR,
    TRUTH_DIR,
    AttractivenessWeights,
    GroundTruth,
)
from rankgym.logs.plackett_luce import position_marginals, prefix_probabilities
from rankgym.logs.session_log import SessionLog, dict_column, ranges
from rankgym.logs.source import LogSource

# category -> (title nouns, query synonyms, material / use modifiers)
CATEGORIES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "hiking boots": (
        ["hiking boots", "trail boots"],
        ["hikers", "walking boots", "mountain boots", "trekking shoes"],
        ["waterproof", "leather", "lightweight", "insulated"],
    ),
    "running shoes": (
        ["running shoes", "trainers"],
        ["runners", "jogging sneakers", "sneakers for running", "marathon shoes"],
        ["cushioned", "breathable", "lightweight", "trail"],
    ),
    "rain jacket": (
        ["rain jacket", "waterproof shell"],
        ["raincoat", "anorak", "wet weather coat", "rain shell"],
        ["packable", "hooded", "breathable", "insulated"],
    ),
    "backpack": (
        ["backpack", "daypack"],
        ["rucksack", "knapsack", "school bag", "hiking pack"],
        ["20 litre", "40 litre", "laptop", "water-resistant"],
    ),
    "tent": (
        ["tent", "camping tent"],
        ["shelter", "dome tent", "backpacking tent", "bivvy"],
        ["2-person", "4-person", "ultralight", "family"],
    ),
    "headphones": (
        ["headphones", "over-ear headphones"],
        ["headset", "earphones", "cans", "earbuds"],
        ["wireless", "noise-cancelling", "studio", "bluetooth"],
    ),
    "coffee maker": (
        ["coffee maker", "espresso machine"],
        ["coffee machine", "espresso maker", "barista machine", "drip brewer"],
        ["programmable", "stainless steel", "compact", "automatic"],
    ),
    "blender": (
        ["blender", "smoothie blender"],
        ["mixer", "juicer", "food processor", "smoothie maker"],
        ["high-speed", "personal", "glass jar", "1000 watt"],
    ),
    "desk lamp": (
        ["desk lamp", "led lamp"],
        ["reading light", "table lamp", "office light", "study lamp"],
        ["dimmable", "adjustable", "usb", "clamp-on"],
    ),
    "office chair": (
        ["office chair", "desk chair"],
        ["task chair", "computer seat", "swivel chair", "gaming chair"],
        ["ergonomic", "mesh", "reclining", "padded"],
    ),
    "frying pan": (
        ["frying pan", "skillet"],
        ["fry pan", "saute pan", "omelette pan", "griddle"],
        ["non-stick", "cast iron", "stainless steel", "induction"],
    ),
    "wrist watch": (
        ["wrist watch", "watch"],
        ["timepiece", "wristwatch", "chronograph", "smartwatch"],
        ["analog", "digital", "water-resistant", "automatic"],
    ),
}
BRANDS = [
    "Nordik", "Altavia", "Kestrel", "Summitry", "Veloce", "Ironleaf", "Lumora", "Brewster",
    "Cascadia", "Pinecrest", "Solano", "Tidewell", "Orbis", "Haldane", "Quillon", "Marlowe",
    "Zephyra", "Granitek", "Aurelio", "Fennick", "Heronway", "Bramble", "Corvo", "Vantor",
]  # fmt: skip
COLOURS = ["black", "white", "brown", "red", "blue", "green", "grey", "navy", "beige", "olive"]
COLOUR_SYNONYMS = {
    "black": "jet black", "white": "ivory", "brown": "tan", "red": "crimson", "blue": "sky blue",
    "green": "forest green", "grey": "charcoal", "navy": "dark blue", "beige": "cream",
    "olive": "khaki",
}  # fmt: skip
PRICE_BANDS = ["budget", "mid-range", "premium", "luxury"]
PRICE_TITLE = ["value", "", "pro", "signature"]
PRICE_QUERY = [["cheap", "budget", "affordable"], [], ["premium", "high-end"], ["luxury", "best"]]
BASE_PRICE = np.array([25.0, 60.0, 140.0, 320.0])


DEFAULT_ABANDONMENT = 0.3  # cascade worlds: see SyntheticWorld.abandonment
MAX_REQUESTS = 8  # requests per session, at most (a sequential world's latent sessions: all 8)


@dataclass
class SyntheticWorld(LogSource, CandidateOptions):
    """Configuration of the synthetic world (``conf/dataset/synthetic.yaml``).

    Candidate sets (:class:`~rankgym.logs.candidates.CandidateOptions`): ``logged`` by default;
    with ``logged+sampled`` (or ``catalog``) the ground truth values every candidate, so what
    negative sampling does to a policy can be measured against the truth.

    Args:
        name: dataset name.
        seed: the same seed gives byte-identical files.
        scale: multiplies users and sessions (1.0 is ~100k impressions; 20 is ~2M).
        n_items: catalog size.
        n_users: users at scale 1.
        n_sessions: sessions at scale 1.
        mean_requests_per_session: requests per session are ``1 + Poisson(mean - 1)``, at most 8.
        min_list, max_list: shown items per request are uniform in ``[min_list, max_list]``.
        recommendation_share: share of sessions with empty queries (pure recommendation).
        history_min, history_max: pre-log history length per user.
        typo_rate: probability that a query word is misspelled.
        synonym_rate: probability that a query names the category with a synonym.
        logging_temperature: Plackett-Luce temperature of the logging ranker (higher: more random).
        lexical_weight, popularity_weight: logging score weights.
        propensity_samples: Monte Carlo draws per request for the item-position propensities
            of lists longer than ``EXACT_MAX_LIST`` (shorter ones are exact).
        click_model: ``pbm`` or ``cascade`` ground truth.
        abandonment: cascade only: probability that the user leaves after an item they do not
            click, in ``[0, 1)``; ``None``: the cascade default ``DEFAULT_ABANDONMENT``
            (``pbm`` worlds must leave it ``None``).
        examination_power: PBM examination is ``(1 / (1 + position)) ** examination_power``.
        dynamics: ``None`` (the bandit world) or the parameters of the sequential world's
            continuation, satiation and return (:class:`~rankgym.logs.dynamics.DynamicsParams`;
            a mapping of overrides, ``{}`` for the defaults). Every session then has
            ``MAX_REQUESTS`` latent requests; the logging policy's users reach as many of them,
            and come back for as many of their sessions, as its slates make them. The log holds
            what they reached; ``truth/latent/`` the whole latent timeline (PBM worlds only).
    """

    name: str = "synthetic"
    seed: int = 0
    scale: float = 1.0
    n_items: int = 3000
    n_users: int = 1000
    n_sessions: int = 3500
    mean_requests_per_session: float = 3.0
    min_list: int = 6
    max_list: int = 12
    recommendation_share: float = 0.2
    history_min: int = 3
    history_max: int = 15
    typo_rate: float = 0.04
    synonym_rate: float = 0.5
    logging_temperature: float = 1.0
    lexical_weight: float = 1.0
    popularity_weight: float = 0.7
    propensity_samples: int = 200
    click_model: str = "pbm"
    examination_power: float = 1.0
    abandonment: float | None = None
    dynamics: DynamicsParams | dict | None = None

    def __post_init__(self) -> None:
        self.check_candidate_options()
        if self.dynamics is not None and not isinstance(self.dynamics, DynamicsParams):
            allowed = [f.name for f in fields(DynamicsParams)]
            unknown = sorted(set(self.dynamics) - set(allowed))
            if unknown:
                raise ValueError(
                    f"dataset.dynamics.{unknown[0]} is not a dynamics parameter; allowed: "
                    + ", ".join(allowed)
                )
            self.dynamics = DynamicsParams(**dict(self.dynamics))
        if self.dynamics is not None and self.click_model != "pbm":
            raise ValueError(
                f"dataset.dynamics applies to click_model=pbm; got {self.click_model!r} "
                "(allowed with dynamics: pbm)"
            )
        n_cat = len(CATEGORIES)
        checks = {
            "scale": (self.scale > 0, "> 0"),
            "n_items": (self.n_items >= 4 * n_cat, f">= {4 * n_cat} (4 per category)"),
            "n_users": (self.n_users >= 1, ">= 1"),
            "n_sessions": (self.n_sessions >= 2, ">= 2"),
            "mean_requests_per_session": (self.mean_requests_per_session >= 1, ">= 1"),
            "min_list": (1 <= self.min_list <= self.max_list, "in [1, max_list]"),
            "max_list": (self.max_list <= 4 * n_cat, f"<= {4 * n_cat}"),
            "recommendation_share": (0 <= self.recommendation_share <= 1, "in [0, 1]"),
            "history_min": (0 <= self.history_min <= self.history_max, "in [0, history_max]"),
            "typo_rate": (0 <= self.typo_rate <= 1, "in [0, 1]"),
            "synonym_rate": (0 <= self.synonym_rate <= 1, "in [0, 1]"),
            "logging_temperature": (self.logging_temperature > 0, "> 0"),
            "propensity_samples": (self.propensity_samples >= 1, ">= 1"),
            "examination_power": (self.examination_power >= 0, ">= 0"),
        }
        for key, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"dataset.{key}={getattr(self, key)!r}; allowed: {allowed}")
        if self.abandonment is not None and self.click_model != "cascade":
            raise ValueError(
                f"dataset.abandonment={self.abandonment} applies to click_model=cascade only; "
                "allowed with pbm: null"
            )
        if self.abandonment is not None and not 0 <= self.abandonment < 1:
            raise ValueError(f"dataset.abandonment={self.abandonment}; allowed: [0, 1) or null")
        if self.click_model not in CLICK_MODELS:
            raise ValueError(
                f"dataset.click_model={self.click_model!r}; allowed: {', '.join(CLICK_MODELS)}"
            )

    @property
    def cascade_abandonment(self) -> float:
        """The truth's abandonment: 0 for PBM, else ``abandonment`` or the cascade default."""
        if self.click_model != "cascade":
            return 0.0
        return DEFAULT_ABANDONMENT if self.abandonment is None else float(self.abandonment)

    def build(self) -> SessionLog:
        """Generate and return the log (the ground truth is returned by :meth:`generate`)."""
        return self.generate()[0]

    def write(self, out: str | Path) -> SessionLog:
        """Generate and write the log plus ``truth/`` (and, with dynamics,
        ``truth/latent/``) atomically into ``out``."""
        log, latent, truth = self._generate()
        with atomic_directory(out, marker="meta.json") as tmp:
            log.write_into(tmp)
            truth.save(tmp)
            if latent is not None:
                latent_dir = Path(tmp) / TRUTH_DIR / LATENT_DIR
                latent_dir.mkdir(parents=True)
                latent.write_into(latent_dir)
        return log

    def generate(self) -> tuple[SessionLog, GroundTruth]:
        """Generate the world: the canonical log and its ground truth."""
        log, _, truth = self._generate()
        return log, truth

    def generate_latent(self) -> tuple[SessionLog, SessionLog, GroundTruth]:
        """A sequential world's log, its whole latent timeline (as a log) and its truth."""
        if self.dynamics is None:
            raise ValueError("generate_latent needs dataset.dynamics (a sequential world)")
        log, latent, truth = self._generate()
        assert latent is not None
        return log, latent, truth

    def _generate(self) -> tuple[SessionLog, SessionLog | None, GroundTruth]:
        """The log, the latent timeline (``None`` in a bandit world) and the truth."""
        generator = _Generator(self)
        log, truth = generator.run()
        latent = None if generator.latent is None else self.with_candidates(generator.latent)
        return self.with_candidates(log), latent, truth


class _Generator:
    """One generation run; holds the RNG and the latent state shared by the steps."""

    def __init__(self, cfg: SyntheticWorld) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.cat_names = list(CATEGORIES)
        self.latent: SessionLog | None = None  # a sequential world's whole latent timeline

    def run(self) -> tuple[SessionLog, GroundTruth]:
        cfg = self.cfg
        self._items()
        self._users()
        self._requests()
        item_tokens = _token_matrix(self.titles, self.vocab)
        query_tokens = _token_matrix(self.query_table, self.vocab)
        self._impressions(item_tokens, query_tokens)
        truth = GroundTruth(
            item_ids=self.item_ids,
            item_category=self.item_cat,
            item_brand=self.item_brand,
            item_colour=self.item_colour,
            item_price=self.item_price,
            item_quality=self.item_quality,
            user_ids=self.user_ids,
            user_category_pref=self.user_cat_pref,
            user_brand_affinity=self.user_brand_aff,
            user_price=self.user_price,
            request_ids=self.request_ids,
            request_user=self.req_user,
            request_category=self.req_cat,
            request_brand=self.req_brand,
            request_colour=self.req_colour,
            request_price=self.req_price,
            examination=(1.0 / np.arange(1, 65)) ** cfg.examination_power,
            click_model=cfg.click_model,
            weights=AttractivenessWeights(),
            abandonment=cfg.cascade_abandonment,
            dynamics=cfg.dynamics,
        )
        if cfg.dynamics is None:
            self._clicks(truth)
            self._history(truth)
            return self._to_log(), truth
        reached = self._sequential_clicks(truth)
        self._history(truth)
        self.latent = self._to_log(source="synthetic-latent")
        return self._to_log(reached), truth

    # ------------------------------------------------------------------ catalog
    def _items(self) -> None:
        cfg, rng = self.cfg, self.rng
        n_cat = len(self.cat_names)
        # each category is sold by 6 brands; each item picks one of them
        cat_brands = np.stack([rng.choice(len(BRANDS), 6, replace=False) for _ in range(n_cat)])
        self.cat_brands = cat_brands
        cat = np.sort(rng.integers(0, n_cat, cfg.n_items))
        cat[:n_cat] = np.arange(n_cat)  # every category has items
        cat = np.sort(cat)
        self.item_cat = cat.astype(np.int32)
        self.item_brand = cat_brands[cat, rng.integers(0, 6, cfg.n_items)].astype(np.int32)
        self.item_colour = rng.integers(0, len(COLOURS), cfg.n_items).astype(np.int32)
        self.item_modifier = rng.integers(0, 4, cfg.n_items)
        self.item_price = rng.choice(4, cfg.n_items, p=[0.3, 0.35, 0.25, 0.1]).astype(np.int32)
        self.item_quality = rng.normal(0, 1, cfg.n_items).astype(np.float64)
        brand_fame = rng.normal(0, 0.7, len(BRANDS))
        self.popularity = np.exp(
            0.8 * self.item_quality + brand_fame[self.item_brand] + rng.normal(0, 0.8, cfg.n_items)
        )
        self.cat_start = np.searchsorted(cat, np.arange(n_cat))
        self.cat_count = np.bincount(cat, minlength=n_cat)
        noun_pick = rng.integers(0, 2, cfg.n_items)
        price_value = BASE_PRICE[self.item_price] * np.exp(rng.normal(0, 0.25, cfg.n_items))
        titles = []
        for i in range(cfg.n_items):
            nouns, _, mods = CATEGORIES[self.cat_names[cat[i]]]
            words = [BRANDS[self.item_brand[i]], PRICE_TITLE[self.item_price[i]],
                     mods[self.item_modifier[i]], nouns[noun_pick[i]]]  # fmt: skip
            title = " ".join(w for w in words if w)
            titles.append(f"{title}, {COLOURS[self.item_colour[i]]} - ${price_value[i]:.0f}")
        self.titles = np.array(titles, dtype=object)
        width = len(str(cfg.n_items - 1))
        self.item_ids = np.array([f"i{i:0{width}d}" for i in range(cfg.n_items)], dtype=object)
        self.vocab: dict[str, int] = {}

    # ------------------------------------------------------------------ users
    def _users(self) -> None:
        cfg, rng = self.cfg, self.rng
        n_users = max(1, round(cfg.n_users * cfg.scale))
        n_cat = len(self.cat_names)
        self.user_cat_pref = rng.dirichlet(np.full(n_cat, 0.3), n_users)
        self.user_brand_aff = rng.normal(0, 1, (n_users, len(BRANDS)))
        self.user_price = rng.choice(4, n_users, p=[0.35, 0.35, 0.2, 0.1]).astype(np.int32)
        self.user_colour = rng.integers(0, len(COLOURS), n_users)
        self.user_activity = rng.gamma(1.5, 1.0, n_users)
        width = len(str(n_users - 1))
        self.user_ids = np.array([f"u{u:0{width}d}" for u in range(n_users)], dtype=object)
        top_cats = np.argsort(-self.user_cat_pref, axis=1)[:, :2]
        top_brand = np.argmax(self.user_brand_aff, axis=1)
        texts = []
        for u in range(n_users):
            cats = " and ".join(self.cat_names[c] for c in top_cats[u])
            texts.append(
                f"Shops for {cats}. Likes {BRANDS[top_brand[u]]}. "
                f"Prefers {PRICE_BANDS[self.user_price[u]]} products."
            )
        self.user_texts = np.array(texts, dtype=object)

    # ------------------------------------------------------------------ sessions and queries
    def _requests(self) -> None:
        cfg, rng = self.cfg, self.rng
        n_sess = max(2, round(cfg.n_sessions * cfg.scale))
        n_users = len(self.user_ids)
        act = self.user_activity / self.user_activity.sum()
        sess_user = rng.choice(n_users, n_sess, p=act)
        sess_rec = rng.random(n_sess) < cfg.recommendation_share
        n_req = np.minimum(1 + rng.poisson(cfg.mean_requests_per_session - 1, n_sess), MAX_REQUESTS)
        if cfg.dynamics is not None:  # latent sessions: how many are reached is the dynamics'
            n_req = np.full(n_sess, MAX_REQUESTS)
        sess_start = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 30 * 86400, n_sess))
        sess_cat = _sample_rows(rng, self.user_cat_pref[sess_user])
        self.sess_user, self.sess_start = sess_user, sess_start

        self.n_req_per_session = n_req
        req_sess = np.repeat(np.arange(n_sess), n_req)
        step = ranges(np.zeros(n_sess, np.int64), n_req)  # 0, 1, ... within each session
        n_r = len(req_sess)
        user = sess_user[req_sess]
        rec = sess_rec[req_sess]
        # a session keeps its category; 15% of later requests drift to another preferred one
        drift = (step > 0) & (rng.random(n_r) < 0.15)
        cat = np.where(drift, _sample_rows(rng, self.user_cat_pref[user]), sess_cat[req_sess])
        # later requests refine the intent with the user's own preferences
        p_attr = np.minimum(0.15 + 0.2 * step, 0.8)
        sellers = self.cat_brands[cat]  # [R, 6] brands selling the intended category
        liked = sellers[np.arange(n_r), np.argmax(self.user_brand_aff[user[:, None], sellers], 1)]
        brand = np.where(rng.random(n_r) < p_attr, liked, -1)
        colour = np.where(rng.random(n_r) < p_attr * 0.8, self.user_colour[user], -1)
        price = np.where(rng.random(n_r) < p_attr * 0.6, self.user_price[user], -1)
        modifier = np.where(rng.random(n_r) < 0.3, rng.integers(0, 4, n_r), -1)
        self.req_user = user.astype(np.int32)
        self.req_rec = rec
        self.req_cat = np.where(rec, -1, cat).astype(np.int32)
        self.req_brand = np.where(rec, -1, brand).astype(np.int32)
        self.req_colour = np.where(rec, -1, colour).astype(np.int32)
        self.req_price = np.where(rec, -1, price).astype(np.int32)
        self.req_rec_cat = cat  # what a recommendation session is about (for candidates only)
        self.req_time = sess_start[req_sess] + step * 45 + rng.integers(0, 40, n_r)
        self.req_sess = req_sess
        width = len(str(n_r - 1))
        self.request_ids = np.array([f"r{r:0{width}d}" for r in range(n_r)], dtype=object)
        self.session_ids = np.array(
            [f"s{s:0{len(str(n_sess - 1))}d}" for s in range(n_sess)], dtype=object
        )

        # query texts: a Python loop per request (not per impression) assembling words
        texts = []
        n_rand = 8
        rand = rng.random((n_r, n_rand))
        picks = rng.integers(0, 1 << 30, (n_r, n_rand))
        for r in range(n_r):
            if rec[r]:
                texts.append("")
                continue
            texts.append(
                _write_query(
                    self.cat_names[cat[r]],
                    int(brand[r]),
                    int(colour[r]),
                    int(price[r]),
                    int(modifier[r]),
                    rand[r],
                    picks[r],
                    cfg,
                )
            )
        self.query_table, self.req_query = np.unique(
            np.array(texts, dtype=object), return_inverse=True
        )

    # ------------------------------------------------------------------ logging policy
    def _impressions(self, item_tokens: np.ndarray, query_tokens: np.ndarray) -> None:
        cfg, rng = self.cfg, self.rng
        n_r = len(self.request_ids)
        size = rng.integers(cfg.min_list, cfg.max_list + 1, n_r)
        offsets = np.concatenate([[0], np.cumsum(size)])
        n = int(offsets[-1])
        imp_req = np.repeat(np.arange(n_r), size)

        # retrieval: most candidates from the intended category, the rest by global popularity
        in_cat_share = np.where(self.req_rec, 0.5, 0.6)
        want_cat = self.req_rec_cat[imp_req]
        items = np.empty(n, dtype=np.int64)
        todo = np.ones(n, dtype=bool)
        pop_cdf = np.cumsum(self.popularity) / self.popularity.sum()
        for _ in range(50):  # resample duplicates within a request; converges in a few rounds
            idx = np.flatnonzero(todo)
            from_cat = rng.random(len(idx)) < in_cat_share[imp_req[idx]]
            c = want_cat[idx]
            in_cat = self.cat_start[c] + (rng.random(len(idx)) * self.cat_count[c]).astype(int)
            popular = np.minimum(np.searchsorted(pop_cdf, rng.random(len(idx))), cfg.n_items - 1)
            items[idx] = np.where(from_cat, in_cat, popular)
            order = np.lexsort((np.arange(n), items, imp_req))
            dup = np.zeros(n, dtype=bool)
            same = (imp_req[order][1:] == imp_req[order][:-1]) & (
                items[order][1:] == items[order][:-1]
            )
            dup[order[1:][same]] = True
            todo = dup
            if not todo.any():
                break
        else:  # pragma: no cover - needs an absurdly small catalog
            raise RuntimeError("could not draw distinct candidates; increase n_items")

        overlap = _overlap(query_tokens[self.req_query[imp_req]], item_tokens[items])
        score = cfg.lexical_weight * overlap + cfg.popularity_weight * np.log(
            self.popularity[items]
        )
        logits = score / cfg.logging_temperature
        key = logits + rng.gumbel(size=n)
        order = np.lexsort((-key, imp_req))  # Plackett-Luce draw = sort by logit + Gumbel
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n) - offsets[imp_req[order]]
        self.imp_req, self.imp_item, self.imp_pos = imp_req, items, position
        # the propensities' own generator (Monte Carlo beyond the exact limit only), so that
        # computing them never changes the rest of the world
        self.imp_prop, self.imp_prefix_prop = _pl_propensities(
            np.random.default_rng([cfg.seed, 1]),
            logits,
            position,
            imp_req,
            offsets,
            cfg.propensity_samples,
        )
        # earlier versions estimated every propensity by Monte Carlo from this generator; skip
        # the draws they made, so that a seed keeps giving the same world (clicks, histories)
        width = int(np.diff(offsets).max())
        rng.bit_generator.advance(cfg.propensity_samples * n_r * width)

    def _clicks(self, truth: GroundTruth) -> None:
        # ranking matrix [R, Lmax] of shown items by position, then the truth gives P(click)
        n_r = len(self.request_ids)
        width = int(self.imp_pos.max()) + 1
        ranking = np.full((n_r, width), -1, dtype=np.int64)
        ranking[self.imp_req, self.imp_pos] = self.imp_item
        u = self.rng.random(len(self.imp_req))
        if truth.click_model == "pbm":  # positions are examined independently
            p = truth.click_probs(np.arange(n_r), ranking)[self.imp_req, self.imp_pos]
            self.imp_click = (u < p).astype(np.int8)
            return
        # cascade: top-down, the user clicks the first attractive item examined and stops, or
        # leaves after a skipped item with probability `abandonment`
        attr = truth.attractiveness(np.arange(n_r)[:, None], np.maximum(ranking, 0))
        would = np.zeros((n_r, width), dtype=bool)
        would[self.imp_req, self.imp_pos] = u < attr[self.imp_req, self.imp_pos]
        leave = np.zeros((n_r, width), dtype=bool)
        if truth.abandonment > 0:
            w = self.rng.random(len(self.imp_req))
            leave[self.imp_req, self.imp_pos] = ~would[self.imp_req, self.imp_pos] & (
                w < truth.abandonment
            )
        first = np.argmax(would | leave, axis=1)  # the first click or departure
        clicked = would[np.arange(n_r), first][self.imp_req] & (self.imp_pos == first[self.imp_req])
        self.imp_click = clicked.astype(np.int8)

    def _sequential_clicks(self, truth: GroundTruth) -> np.ndarray:
        """Play the logging policy's users forward through their latent sessions under the
        truth (:func:`~rankgym.logs.dynamics.play_sessions`). Returns ``bool[R]``: the latent
        requests reached; sets the clicks and re-times every request."""
        dyn = truth.user_dynamics()
        assert dyn is not None
        rng = np.random.default_rng([self.cfg.seed, 2])  # its own stream: the rest stays put
        width = int(self.imp_pos.max()) + 1
        ranking = np.full((len(self.request_ids), width), -1, dtype=np.int64)
        ranking[self.imp_req, self.imp_pos] = self.imp_item
        offsets = np.searchsorted(self.req_sess, np.arange(len(self.sess_user) + 1))
        reached, click, self.req_time = play_sessions(
            dyn,
            lambda rows, items: truth.attractiveness(rows[:, None], np.maximum(items, 0)),
            truth.examination,
            ranking,
            offsets,
            self.sess_user,
            self.sess_start,
            rng,
        )
        self.imp_click = click[self.imp_req, self.imp_pos]
        return reached

    def _history(self, truth: GroundTruth) -> None:
        # pre-log history: items the user clicked before the log, drawn from their preferences
        cfg, rng = self.cfg, self.rng
        n_users = len(self.user_ids)
        length = rng.integers(cfg.history_min, cfg.history_max + 1, n_users)
        owner = np.repeat(np.arange(n_users), length)
        n_draw = 4  # pick the most attractive of a few preferred-category items
        cats = _sample_rows(rng, np.repeat(self.user_cat_pref[owner], n_draw, axis=0))
        cand = self.cat_start[cats] + (rng.random(len(cats)) * self.cat_count[cats]).astype(int)
        cand = cand.reshape(-1, n_draw)
        # attractiveness without an intent: the user's own taste only
        brand_aff = self.user_brand_aff[owner[:, None], self.item_brand[cand]]
        price_gap = np.abs(self.item_price[cand] - self.user_price[owner][:, None])
        taste = brand_aff - 0.5 * price_gap + 0.5 * self.item_quality[cand]
        taste += rng.gumbel(size=taste.shape)
        self.hist_items = cand[np.arange(len(cand)), np.argmax(taste, axis=1)]
        self.hist_offsets = np.concatenate([[0], np.cumsum(length)])

    # ------------------------------------------------------------------ canonical tables
    def _to_log(self, reached: np.ndarray | None = None, source: str = "synthetic") -> SessionLog:
        """The canonical log: every request, or only those ``reached`` (a sequential world's)."""
        keep = slice(None) if reached is None else reached[self.imp_req]
        req = self.imp_req[keep]
        impressions = pa.table(
            {
                "session_id": dict_column(self.req_sess[req], self.session_ids),
                "request_id": dict_column(req, self.request_ids),
                "user_id": dict_column(self.req_user[req], self.user_ids),
                "timestamp": pa.array(self.req_time[req], pa.int64()),
                "query": dict_column(self.req_query[req], self.query_table),
                "item_id": dict_column(self.imp_item[keep], self.item_ids),
                "position": pa.array(self.imp_pos[keep], pa.int32()),
                "click": pa.array(self.imp_click[keep], pa.int8()),
                "propensity": pa.array(self.imp_prop[keep], pa.float64()),
                "prefix_propensity": pa.array(self.imp_prefix_prop[keep], pa.float64()),
            }
        )
        items = pa.table(
            {
                "item_id": pa.array(self.item_ids, pa.string()),
                "text": pa.array(self.titles, pa.string()),
                "category": pa.array([self.cat_names[c] for c in self.item_cat], pa.string()),
                "price_band": pa.array(self.item_price, pa.int32()),
            }
        )
        history = pa.ListArray.from_arrays(
            pa.array(self.hist_offsets, pa.int32()),
            pa.array(self.item_ids[self.hist_items], pa.string()),
        )
        users = pa.table(
            {
                "user_id": pa.array(self.user_ids, pa.string()),
                "text": pa.array(self.user_texts, pa.string()),
                "history": history,
            }
        )
        meta = {
            "source": source,
            "license": "generated by rankgym; no third-party data (Apache-2.0 with the code)",
            "params": asdict(self.cfg),
        }
        return SessionLog.from_tables(impressions, items, users, meta=meta)


# ---------------------------------------------------------------------- helpers
def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix, vectorised."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1)


def _typo(word: str, u: float, pick: int) -> str:
    """Misspell a word: drop, double or swap a letter (deterministic given u and pick)."""
    if len(word) < 4:
        return word
    k = 1 + pick % (len(word) - 2)
    if u < 1 / 3:
        return word[:k] + word[k + 1 :]
    if u < 2 / 3:
        return word[:k] + word[k] + word[k:]
    return word[: k - 1] + word[k] + word[k - 1] + word[k + 1 :]


def _write_query(
    category: str,
    brand: int,
    colour: int,
    price: int,
    modifier: int,
    u: np.ndarray,
    pick: np.ndarray,
    cfg: SyntheticWorld,
) -> str:
    """A paraphrased query for an intent: synonyms, shuffled order, partial mentions, typos."""
    nouns, synonyms, mods = CATEGORIES[category]
    noun = synonyms[pick[0] % len(synonyms)] if u[0] < cfg.synonym_rate else nouns[pick[0] % 2]
    words = []
    if modifier >= 0:
        words.append(mods[modifier])
    if colour >= 0:
        words.append(COLOUR_SYNONYMS[COLOURS[colour]] if u[1] < 0.3 else COLOURS[colour])
    if price >= 0 and PRICE_QUERY[price]:
        words.append(PRICE_QUERY[price][pick[1] % len(PRICE_QUERY[price])])
    if u[2] < 0.5:
        if brand >= 0:
            words.insert(0, BRANDS[brand])
        words.append(noun)
    else:
        words.append(noun)
        if brand >= 0:
            words.append(f"by {BRANDS[brand]}" if u[3] < 0.5 else BRANDS[brand])
    if u[4] < 0.25 and len(words) > 2:  # word order: move the noun to the front ("boots brown")
        words.insert(0, words.pop(words.index(noun)))
    text = " ".join(words).lower() if u[5] < 0.7 else " ".join(words)
    if u[6] < cfg.typo_rate * len(text.split()):
        parts = text.split()
        j = pick[2] % len(parts)
        parts[j] = _typo(parts[j], u[7], int(pick[3]))
        text = " ".join(parts)
    return text


def _token_matrix(texts: np.ndarray, vocab: dict[str, int]) -> np.ndarray:
    """Lower-cased word ids per text, padded with -1 (shared vocab grows as needed)."""
    rows = [
        [vocab.setdefault(w, len(vocab)) for w in t.lower().replace(",", " ").split()]
        for t in texts
    ]
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), -1, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _overlap(query_tokens: np.ndarray, item_tokens: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Number of query words found in the item title, per impression (chunked to bound memory)."""
    out = np.empty(len(query_tokens), dtype=np.float64)
    for s in range(0, len(query_tokens), chunk):
        q, t = query_tokens[s : s + chunk], item_tokens[s : s + chunk]
        hit = (q[:, :, None] == t[:, None, :]).any(axis=2) & (q >= 0)
        out[s : s + chunk] = hit.sum(axis=1)
    return out


def _pl_propensities(
    rng: np.random.Generator,
    logits: np.ndarray,
    position: np.ndarray,
    imp_req: np.ndarray,
    offsets: np.ndarray,
    n_samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The Plackett-Luce logger's (item-position, prefix) probabilities of each impression.

    Exact (:mod:`rankgym.logs.plackett_luce`) for lists of up to ``EXACT_MAX_LIST`` items; the
    item-position marginals of longer lists are Monte Carlo estimates over ``n_samples`` draws.
    """
    n_r = len(offsets) - 1
    sizes = np.diff(offsets)
    width = int(sizes.max())
    slot = np.arange(len(logits)) - offsets[imp_req]
    padded = np.full((n_r, width), -np.inf)
    padded[imp_req, slot] = logits
    order = np.full((n_r, width), -1, dtype=np.int64)
    order[imp_req, position] = slot
    prefix = prefix_probabilities(padded, order)[imp_req, position]
    finite = np.where(np.isfinite(padded), padded, 0.0)
    marginals = position_marginals(finite, sizes, n_samples, rng)
    return marginals[imp_req, slot, position], prefix
