"""Open Bandit Dataset adapter: a fixture copied from the real sample, and the real sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rankgym.logs.errors import LogValidationError
from rankgym.logs.obd import OBDSource, bernoulli_ts_marginals, bernoulli_ts_prior, fetch_sdist
from rankgym.logs.session_log import SessionLog

FIXTURE = Path(__file__).parent.parent / "fixtures" / "obd"


@pytest.fixture
def log() -> SessionLog:
    return OBDSource(path=str(FIXTURE)).build()


def test_fixture_counts(log: SessionLog) -> None:
    # 8 rows; rows 1714/1715 and 1816/1817 share timestamp + user features
    assert (log.n_impressions, log.n_requests, log.n_users, log.n_items) == (8, 6, 5, 80)
    assert sorted(log.request_sizes.tolist()) == [1, 1, 1, 1, 2, 2]
    assert int(log.click.sum()) == 1
    # one user (rows 586 and 1816/1817) appears on two days: two sessions
    assert log.n_sessions == 6
    days = sorted(s.rsplit("-", 3)[1:] == ["2019", "11", "25"] for s in log.session_ids)
    assert days.count(True) == 2
    assert list(log.query_texts) == [""]


def test_positions_zero_based_and_propensities_kept(log: SessionLog) -> None:
    # raw positions 3,3,3,1,1,3,2,1 -> 0-based; within a request sorted by position
    assert sorted(log.position.tolist()) == [0, 0, 0, 1, 2, 2, 2, 2]
    assert log.position.min() == 0
    np.testing.assert_allclose(log.propensity, 0.0125)
    two = np.flatnonzero(log.request_sizes == 2)
    items = [
        log.item_ids[log.item[log.request_offsets[r] : log.request_offsets[r + 1]]] for r in two
    ]
    assert sorted(map(list, items)) == [["12", "8"], ["34", "68"]]
    clicked = log.item_ids[log.item[log.click == 1]]
    assert list(clicked) == ["38"]


def test_timestamps_features_and_histories(log: SessionLog) -> None:
    # 2019-11-24 00:00:34.762830+00:00 -> unix seconds (fraction dropped)
    assert log.request_timestamp[0] == 1574553634
    # features stay features: no sentences made of them
    assert set(log.item_texts) == {""} and set(log.user_texts) == {""}
    assert set(log.item_features) == {f"item_feature_{i}" for i in range(4)}
    assert log.item_features["item_feature_1"][0] == "aed790911d0344f149be2fb9470d6f0a"
    assert set(log.user_features) == {f"user_feature_{i}" for i in range(4)}
    first = log.request_user[0]
    assert log.user_features["user_feature_0"][first].startswith("81ce123c")
    # user ids are a stable hash of the four user features
    assert log.user_ids[first] == "u0ab848a79987"
    # history: items with a positive affinity in the user's first row (row 586: items 5, 27,
    # 29); the user's later rows (1816/1817: item 29 only) do not change it
    histories = {log.user_ids[u]: list(log.item_ids[log.user_history(u)]) for u in range(5)}
    assert histories["u1ae342131572"] == ["5", "27", "29"]
    assert histories["u461d338e8f65"] == ["71"]
    assert sum(map(len, histories.values())) == 4


def test_catalog_candidates_make_a_three_slot_ranking(log: SessionLog) -> None:
    """Every request ranks the campaign's 80 items into 3 positions; shown items come first."""
    stats = log.stats()
    assert stats["candidates_per_request"] == {"mean": 80.0, "min": 80, "max": 80}
    assert stats["shown_per_request"]["max"] == 2 and stats["positions"] == 3
    matrix = log.candidate_matrix(80)
    # the whole catalog once, in item order: the order does not reveal the shown item
    assert (matrix == np.arange(80)).all()
    logged = OBDSource(path=str(FIXTURE), candidates="logged").build()
    assert logged.stats()["candidates_per_request"]["max"] == 2 and not logged.has_unshown


def test_round_trip(log: SessionLog, tmp_path: Path) -> None:
    log.write(tmp_path / "obd")
    back = SessionLog.read(tmp_path / "obd")
    for name in (
        "item",
        "position",
        "click",
        "propensity",
        "request_offsets",
        "session_offsets",
        "request_timestamp",
        "request_user",
        "unshown_offsets",
        "unshown_items",
        "user_history_items",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(log, name))
    assert back.user_features.keys() == log.user_features.keys()
    assert list(back.session_ids) == list(log.session_ids)
    assert back.meta["source"] == "obd" and back.meta["params"]["campaign"] == "all"


def test_bad_arguments_and_missing_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="behavior_policy='uniform'.*random, bts"):
        OBDSource(path=str(FIXTURE), behavior_policy="uniform")
    with pytest.raises(ValueError, match="campaign='kids'.*all, men, women"):
        OBDSource(path=str(FIXTURE), campaign="kids")
    root = tmp_path / "random" / "all"
    shutil.copytree(FIXTURE / "random" / "all", root)
    csv = root / "all.csv"
    csv.write_text(csv.read_text().replace("propensity_score", "pscore", 1))
    with pytest.raises(LogValidationError, match="all.csv, column 'propensity_score'"):
        OBDSource(path=str(tmp_path)).build()


def test_repeated_position_starts_new_request(tmp_path: Path) -> None:
    root = tmp_path / "random" / "all"
    shutil.copytree(FIXTURE / "random" / "all", root)
    lines = (root / "all.csv").read_text().splitlines()
    # duplicate row 1714 (same time, user, position 1) under a new index
    lines.append("9999" + lines[5][lines[5].index(",") :])
    (root / "all.csv").write_text("\n".join(lines) + "\n")
    log = OBDSource(path=str(tmp_path)).build()
    assert (log.n_impressions, log.n_requests) == (9, 7)


@pytest.mark.slow
def test_real_sample_via_pip(tmp_path: Path) -> None:
    cached = Path("~/.cache/rankgym").expanduser()
    cache = cached if (cached / "obp" / "obp-0.5.7.tar.gz").is_file() else tmp_path
    try:
        archive = fetch_sdist(cache)
    except RuntimeError as err:
        pytest.skip(f"pip could not fetch the obp sdist holding the OBD sample: {err}")
    log = OBDSource(archive=str(archive)).build()
    assert log.n_impressions == 10_000
    assert np.bincount(log.position).tolist() == [3322, 3412, 3266]
    assert log.n_requests == 9991  # 9 requests show two items
    assert (log.n_items, log.n_users, log.n_sessions) == (80, 240, 1084)
    assert int(log.click.sum()) == 38
    np.testing.assert_allclose(log.propensity, 0.0125)  # uniform over 80 items
    stats = log.stats()
    assert stats["candidates_per_request"] == {"mean": 80.0, "min": 80, "max": 80}
    assert stats["positions"] == 3
    bts = OBDSource(archive=str(archive), behavior_policy="bts", campaign="men").build()
    assert bts.n_impressions == 10_000 and bts.n_items == 34
    assert bts.stats()["candidates_per_request"] == {"mean": 34.0, "min": 34, "max": 34}
    assert int(bts.click.sum()) == 69
    assert bts.propensity.mean() == pytest.approx(0.163594, abs=1e-6)


def test_bernoulli_ts_marginals() -> None:
    # a sure best item, a sure worst, and a middling one: top-2 is (best, middling) nearly always
    sure = np.array([[1000.0, 1.0], [1.0, 1000.0], [50.0, 50.0]])
    m = bernoulli_ts_marginals(sure, slots=2, draws=2_000)
    np.testing.assert_allclose(m, [[1, 0], [0, 0], [0, 1]], atol=1e-3)
    # identical priors: every item equally likely at every position (within 5 standard errors)
    same = np.tile([[3.0, 7.0]], (4, 1))
    draws = 40_000
    m = bernoulli_ts_marginals(same, slots=3, draws=draws, seed=1)
    np.testing.assert_allclose(m.sum(axis=0), 1.0)
    assert np.abs(m - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / draws)


@pytest.mark.slow
def test_bts_value_from_the_random_logs(tmp_path: Path) -> None:
    """The Open Bandit paper's check on the sample: BTS valued from the uniform-random logs."""
    from rankgym.experiments.obd import bts_from_random

    cached = Path("~/.cache/rankgym").expanduser()
    cache = cached if (cached / "obp" / "obp-0.5.7.tar.gz").is_file() else tmp_path
    try:
        fetch_sdist(cache)
    except RuntimeError as err:
        pytest.skip(f"pip could not fetch the obp sdist holding the OBD sample: {err}")
    prior = bernoulli_ts_prior("men", cache)
    assert prior.shape == (34, 2) and (prior > 0).all()
    rows = bts_from_random("men", cache_dir=str(cache), draws=20_000, bootstrap=200)
    own, iips, sniips = (r["est"] for r in rows)
    assert own.value == pytest.approx(69 / 9998)  # the BTS logs' own clicks per request
    # iips by hand: each random-log click weighted by BTS's / uniform's item-position probability
    log = OBDSource(archive=str(cache / "obp" / "obp-0.5.7.tar.gz"), campaign="men",
                    candidates="logged").build()  # fmt: skip
    pi = bernoulli_ts_marginals(prior, 3, 20_000, 0)
    weight = pi[log.item_ids.astype(int)[log.item], log.position] / log.propensity
    assert iips.value == pytest.approx((log.click * weight).sum() / log.n_requests, rel=1e-12)
    assert iips.ci_low < iips.value < iips.ci_high and iips.support == 1.0
    assert 0 < sniips.value < 2 * own.value
