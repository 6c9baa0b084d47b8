"""The synthetic world: determinism, realism checks, propensities and the ground truth."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

from rankgym.logs import LogValidationError, SessionLog
from rankgym.logs.ground_truth import GroundTruth
from rankgym.logs.plackett_luce import position_marginals, prefix_probabilities
from rankgym.logs.synthetic import CATEGORIES, SyntheticWorld, _pl_propensities
from tests.conftest import SMALL_WORLD


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    SyntheticWorld(**SMALL_WORLD, seed=5).write(tmp_path / "a")
    SyntheticWorld(**SMALL_WORLD, seed=5).write(tmp_path / "b")
    SyntheticWorld(**SMALL_WORLD, seed=6).write(tmp_path / "c")
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert "truth/truth.json" in a and "impressions.parquet" in a
    assert a == b
    assert a["impressions.parquet"] != c["impressions.parquet"]


def test_a_seed_keeps_its_world_across_versions(small_world) -> None:
    """Shown items, positions, clicks and histories of the small world, pinned: results
    measured on a seed stay valid when the generator's internals change (as when its
    propensities became exact)."""
    log, _ = small_world
    digest = hashlib.sha256()
    for array in (log.item, log.position, log.click, log.user_history_items):
        digest.update(np.ascontiguousarray(array).tobytes())
    assert digest.hexdigest()[:16] == "a48a2e1830d49c56" and int(log.click.sum()) == 884


def test_world_has_the_promised_structure(small_world) -> None:
    log, truth = small_world
    assert len(CATEGORIES) >= 8
    assert len(np.unique(truth.item_category)) == len(CATEGORIES)
    # titles are built from the latent attributes
    for i in range(0, log.n_items, 37):
        title = log.item_texts[i]
        assert log.item_features["category"][i] in {
            c for c, (nouns, _, _) in CATEGORIES.items() if any(n in title for n in nouns)
        }
    # sessions have several requests; recommendation requests have empty queries
    assert 2.5 < log.n_requests / log.n_sessions < 3.5
    empty = log.query_texts[log.request_query] == ""
    assert 0.1 < empty.mean() < 0.3
    rows = truth.request_rows(log.request_ids)
    np.testing.assert_array_equal(empty, truth.request_category[rows] < 0)
    # every user has a pre-log history drawn mostly from their preferred categories
    lengths = np.diff(log.user_history_offsets)
    assert lengths.min() >= 3 and lengths.max() <= 15
    owner = np.repeat(np.arange(log.n_users), lengths)
    pref = truth.user_category_pref[owner, truth.item_category[log.user_history_items]]
    assert pref.mean() > 3 / len(CATEGORIES)  # far above a uniform draw


def test_queries_are_paraphrased(small_world) -> None:
    log, truth = small_world
    rows = truth.request_rows(log.request_ids)
    search = truth.request_category[rows] >= 0
    names = list(CATEGORIES)
    nouns_hit = [
        any(n in q.lower() for n in CATEGORIES[names[c]][0])
        for q, c in zip(
            log.query_texts[log.request_query[search]],
            truth.request_category[rows][search],
            strict=True,
        )
    ]
    share = float(np.mean(nouns_hit))
    assert 0.3 < share < 0.8  # often a synonym, so word overlap alone does not solve the task
    queries = set(log.query_texts)
    assert any(q.split()[0][0].isupper() for q in queries if q)  # casing varies
    assert len(queries) > 0.5 * search.sum()  # mostly distinct texts


def test_later_requests_refine_the_intent(small_world) -> None:
    log, truth = small_world
    rows = truth.request_rows(log.request_ids)
    step = np.arange(log.n_requests) - np.repeat(
        log.session_offsets[:-1], np.diff(log.session_offsets)
    )
    has_brand = truth.request_brand[rows] >= 0
    search = truth.request_category[rows] >= 0
    assert has_brand[search & (step >= 2)].mean() > has_brand[search & (step == 0)].mean() + 0.2


def _enumerate_plackett_luce(logits: np.ndarray) -> dict[tuple[int, ...], float]:
    """Every ranking of the items with its Plackett-Luce probability."""
    weights = np.exp(logits)
    out = {}
    for perm in itertools.permutations(range(len(logits))):
        p, left = 1.0, weights.sum()
        for item in perm:
            p *= weights[item] / left
            left -= weights[item]
        out[perm] = p
    return out


def test_plackett_luce_probabilities_equal_enumeration() -> None:
    rng = np.random.default_rng(3)
    lengths = np.array([5, 3, 5, 4])
    logits = rng.normal(size=(4, 5)) * 1.5
    marginals = position_marginals(logits, lengths)
    for r, n in enumerate(lengths):
        exact = np.zeros((n, n))
        for perm, p in _enumerate_plackett_luce(logits[r, :n]).items():
            exact[list(perm), np.arange(n)] += p
        np.testing.assert_allclose(marginals[r, :n, :n], exact, atol=1e-12)
    # prefix probabilities of one ranking: the sums of the enumeration over its completions
    ranking = (2, 0, 4, 1, 3)
    table = _enumerate_plackett_luce(logits[0])
    want = [sum(p for perm, p in table.items() if perm[: k + 1] == ranking[: k + 1])
            for k in range(5)]  # fmt: skip
    got = prefix_probabilities(logits[:1], np.array([ranking]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_logger_propensities_match_empirical_frequencies() -> None:
    """The recorded propensities equal the frequencies of the logger's own Gumbel-sort draws."""
    rng = np.random.default_rng(0)
    sizes = np.array([4, 6, 16])  # 16 items: beyond the exact limit, Monte Carlo
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    imp_req = np.repeat(np.arange(3), sizes)
    logits = rng.normal(size=len(imp_req))
    slot = np.arange(len(imp_req)) - offsets[imp_req]
    position = np.concatenate([rng.permutation(n) for n in sizes])  # one logged ranking each
    draws = 40_000
    hits = np.zeros(len(imp_req))
    prefix_hits = np.zeros(len(imp_req))
    for r, n in enumerate(sizes):
        rows = np.flatnonzero(imp_req == r)
        order = np.argsort(-(logits[rows] + rng.gumbel(size=(draws, n))), axis=1)
        placed = np.argsort(order, axis=1)  # position drawn for each slot
        same = placed == position[rows]
        hits[rows] = same.mean(axis=0)
        logged_order = np.argsort(position[rows])  # slots in logged display order
        prefix_ok = np.cumprod(order == logged_order, axis=1).mean(axis=0)
        prefix_hits[rows] = prefix_ok[position[rows]]
    prop, prefix = _pl_propensities(
        np.random.default_rng(1), logits, position, imp_req, offsets, n_samples=20_000
    )
    # exact (and 20k-draw Monte Carlo) vs 40k empirical draws: within 5 standard errors
    se = np.sqrt(prop * (1 - prop) / draws + prop * (1 - prop) / 20_000)
    assert (np.abs(hits - prop) < 5 * se + 1e-9).all()
    exact = imp_req < 2
    se_exact = np.sqrt(prop * (1 - prop) / draws)
    assert (np.abs(hits - prop)[exact] < 5 * se_exact[exact] + 1e-9).all()
    se_prefix = np.sqrt(prefix * (1 - prefix) / draws)
    assert (np.abs(prefix_hits - prefix) < 5 * se_prefix + 1e-9).all()
    assert np.isfinite(slot).all()


def test_world_records_consistent_propensities(small_world) -> None:
    log, _ = small_world
    assert not np.isnan(log.propensity).any() and not np.isnan(log.prefix_propensity).any()
    top = log.position == 0  # the first draw: its marginal is its prefix probability
    np.testing.assert_allclose(log.propensity[top], log.prefix_propensity[top], rtol=1e-12)
    # prefix probabilities fall down the ranking, and never exceed the item-position marginal
    order = np.lexsort((log.position, log.impression_request))
    same = log.impression_request[order][1:] == log.impression_request[order][:-1]
    prefix = log.prefix_propensity[order]
    assert (prefix[1:][same] <= prefix[:-1][same] * (1 + 1e-9)).all()
    assert (log.prefix_propensity <= log.propensity + 1e-12).all()


def test_logged_clicks_follow_the_ground_truth(small_world) -> None:
    log, truth = small_world
    rows = truth.request_rows(log.request_ids)
    width = int(log.position.max()) + 1
    ranking = np.full((log.n_requests, width), -1)
    req = log.impression_request
    ranking[req, log.position] = log.item
    probs = truth.click_probs(rows, ranking)[req, log.position]
    # total clicks within 4 standard deviations of the truth's expectation
    assert abs(log.click.sum() - probs.sum()) < 4 * np.sqrt((probs * (1 - probs)).sum())
    # PBM: CTR at the top is well above CTR at position 5, as the examination curve says
    assert log.click[log.position == 0].mean() > 2 * log.click[log.position == 5].mean()
    # single-request API agrees with the batched one
    r = 17
    single = truth.true_click_probs(
        int(rows[r]), log.item[log.request_offsets[r] : log.request_offsets[r + 1]]
    )
    np.testing.assert_allclose(single, truth.click_probs(rows[[r]], ranking[[r]])[0, : len(single)])


def test_truth_ranks_better_than_logging_policy(small_world) -> None:
    """Sorting shown items by true attractiveness beats the logged order: there is room to learn."""
    log, truth = small_world
    rows = truth.request_rows(log.request_ids)
    logged_value, best_value = 0.0, 0.0
    for r in range(0, log.n_requests, 5):
        items = log.item[log.request_offsets[r] : log.request_offsets[r + 1]]
        logged_value += truth.true_click_probs(int(rows[r]), items).sum()
        attr = truth.attractiveness(rows[r], items)
        best_value += truth.true_click_probs(int(rows[r]), items[np.argsort(-attr)]).sum()
    assert best_value > 1.3 * logged_value


def test_cascade_variant(tmp_path: Path) -> None:
    log, truth = SyntheticWorld(**SMALL_WORLD, click_model="cascade").generate()
    assert truth.click_model == "cascade"
    rows = truth.request_rows(log.request_ids[:50])
    ranking = np.stack(
        [log.item[log.request_offsets[r] : log.request_offsets[r] + 6] for r in range(50)]
    )
    probs = truth.click_probs(rows, ranking)
    assert (probs.sum(axis=1) <= 1 + 1e-9).all()  # at most one click in a cascade
    attr = truth.attractiveness(rows[:, None], ranking)
    # reaching position 1: no click at 0 and not leaving after it (abandonment 0.3 by default)
    assert truth.abandonment == 0.3
    np.testing.assert_allclose(probs[:, 1], attr[:, 1] * (1 - attr[:, 0]) * 0.7)


def test_truth_save_load_and_mismatch(small_world, tmp_path: Path) -> None:
    log, truth = small_world
    truth.save(tmp_path)
    back = GroundTruth.load(tmp_path)
    rows = truth.request_rows(log.request_ids[:20])
    ranking = np.stack(
        [log.item[log.request_offsets[r] : log.request_offsets[r] + 5] for r in range(20)]
    )
    np.testing.assert_array_equal(back.click_probs(rows, ranking), truth.click_probs(rows, ranking))
    back.check_log(log.item_ids, log.user_ids)
    other, _ = SyntheticWorld(**{**SMALL_WORLD, "n_items": 500}).generate()
    with pytest.raises(LogValidationError, match="item table .* does not match"):
        truth.check_log(other.item_ids, other.user_ids)
    with pytest.raises(LogValidationError, match="request id 'nope' is not in the ground truth"):
        truth.request_rows(np.array(["nope"], dtype=object))
    with pytest.raises(FileNotFoundError, match="no ground truth here"):
        GroundTruth.load(tmp_path / "elsewhere")


def test_truth_follows_a_split(small_world) -> None:
    log, truth = small_world
    _, test = log.split(0.3, seed=1)
    rows = truth.request_rows(test.request_ids)
    full_rows = truth.request_rows(log.request_ids)
    assert set(rows) <= set(full_rows)
    assert (truth.request_user[rows] == test.request_user).all()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"scale": 0}, r"dataset.scale=0; allowed: > 0"),
        ({"min_list": 9, "max_list": 5}, r"dataset.min_list=9; allowed: in \[1, max_list\]"),
        ({"click_model": "dbn"}, r"dataset.click_model='dbn'; allowed: pbm, cascade"),
        ({"n_items": 10}, r"dataset.n_items=10; allowed: >= 48"),
        ({"abandonment": 0.2}, r"dataset.abandonment=0.2 applies to click_model=cascade only"),
        ({"click_model": "cascade", "abandonment": 1.0}, r"abandonment=1.0; allowed: \[0, 1\)"),
    ],
)
def test_bad_config_values(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticWorld(**override)


def test_scale_grows_sessions_not_catalog() -> None:
    small, _ = SyntheticWorld(**SMALL_WORLD).generate()
    big, _ = SyntheticWorld(**SMALL_WORLD, scale=3).generate()
    assert big.n_items == small.n_items
    assert 2.5 < big.n_impressions / small.n_impressions < 3.5


@pytest.mark.slow
def test_scale_reaches_millions_of_impressions(tmp_path: Path) -> None:
    log = SyntheticWorld(scale=20, propensity_samples=20).write(tmp_path / "big")
    assert log.n_impressions > 1_500_000
    assert SessionLog.read(tmp_path / "big").n_impressions == log.n_impressions


def test_cascade_world_has_at_most_one_click_per_request() -> None:
    log, truth = SyntheticWorld(**SMALL_WORLD, click_model="cascade").generate()
    clicks = np.add.reduceat(log.click, log.request_offsets[:-1])
    assert clicks.max() == 1 and clicks.sum() > 50
    # the clicked item is the first attractive one: its CTR matches the cascade probability
    rows = truth.request_rows(log.request_ids)
    width = int(log.position.max()) + 1
    ranking = np.full((log.n_requests, width), -1)
    ranking[log.impression_request, log.position] = log.item
    expected = truth.click_probs(rows, ranking).sum()
    assert abs(clicks.sum() - expected) < 4 * np.sqrt(expected)


@pytest.mark.parametrize("options", [{}, {"click_model": "cascade"}], ids=["pbm", "cascade"])
def test_every_world_can_tell_policies_apart(options: dict) -> None:
    """The truth's random-to-oracle spread is >= 25% of the oracle's value.

    Measured (seed 0): PBM 0.888 -> 1.357 (35%); cascade with the default abandonment 0.3:
    0.597 -> 0.831 (28%); a cascade without abandonment: 0.932 -> 0.936 (0.4%).
    """
    from rankgym.agents.baselines import RandomPolicy
    from rankgym.agents.evaluation import evaluate
    from rankgym.agents.fidelity import TruthOraclePolicy
    from rankgym.encoders.encoded_log import encode_log
    from rankgym.encoders.hashing import HashingEncoder
    from rankgym.envs.click_models.simple import TruthClickModel
    from rankgym.envs.replay import ReplayConfig

    log, truth = SyntheticWorld(propensity_samples=5, **options).generate()
    _, test = log.split(0.2, seed=0)
    encoded = encode_log(log, HashingEncoder(dim=16), progress=False)
    model = TruthClickModel(truth=truth)
    value = {
        p.name: evaluate(
            p, test, encoded, model, ReplayConfig(obs_mode="ids"), bootstrap=0
        ).metrics["expected_clicks"]
        for p in (RandomPolicy(), TruthOraclePolicy(model))
    }
    spread = (value["truth-oracle"] - value["random"]) / value["truth-oracle"]
    assert spread >= 0.25, value
