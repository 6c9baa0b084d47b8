"""Candidate sets beyond the shown items: modes, sampling, persistence, validation, replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.envs.click_models.fitted import PBMClickModel
from rankgym.envs.click_models.simple import LoggedClickModel, TruthClickModel
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.vector import BatchedReplayEnv
from rankgym.logs.candidates import add_candidates
from rankgym.logs.errors import LogValidationError
from rankgym.logs.mind import MINDSource
from rankgym.logs.obd import OBDSource
from rankgym.logs.session_log import SessionLog
from rankgym.logs.table import TableSource

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _shown_sets(log: SessionLog) -> list[set[int]]:
    return [
        set(log.item[log.request_offsets[r] : log.request_offsets[r + 1]].tolist())
        for r in range(log.n_requests)
    ]


def _unshown(log: SessionLog, r: int) -> np.ndarray:
    return log.unshown_items[log.unshown_offsets[r] : log.unshown_offsets[r + 1]]


def test_sampled_negatives_are_distinct_unshown_and_seeded(small_world) -> None:
    log, _ = small_world
    out = add_candidates(log, "logged+sampled", negatives=7, seed=3)
    assert (np.diff(out.unshown_offsets) == 7).all()
    for r, shown in enumerate(_shown_sets(log)):
        extra = _unshown(out, r)
        assert len(set(extra.tolist())) == 7 and not shown & set(extra.tolist())
    again = add_candidates(log, "logged+sampled", negatives=7, seed=3)
    np.testing.assert_array_equal(again.unshown_items, out.unshown_items)
    other = add_candidates(log, "logged+sampled", negatives=7, seed=4)
    assert not np.array_equal(other.unshown_items, out.unshown_items)
    # the logged part is untouched and stats count both
    np.testing.assert_array_equal(out.item, log.item)
    stats = out.stats()
    assert stats["candidates_per_request"]["mean"] == pytest.approx(
        stats["shown_per_request"]["mean"] + 7
    )


def test_popularity_sampling_prefers_shown_often_items(small_world) -> None:
    log, _ = small_world
    shown = np.bincount(log.item, minlength=log.n_items)
    draws = {
        how: np.bincount(
            add_candidates(log, "logged+sampled", 5, how, seed=0).unshown_items,
            minlength=log.n_items,
        )
        for how in ("uniform", "popularity")
    }
    popular = shown >= np.quantile(shown, 0.9)
    share = {how: d[popular].sum() / d.sum() for how, d in draws.items()}
    # popular items (top 10% by impressions) get far more of the draws by popularity
    assert share["popularity"] > 2 * share["uniform"]


def test_catalog_mode_lists_every_item_once(small_world) -> None:
    log, _ = small_world
    part = log.select_sessions(np.arange(5))
    out = add_candidates(part, "catalog")
    assert (out.candidate_sizes == log.n_items).all()
    matrix = out.candidate_matrix(log.n_items)
    assert (np.sort(matrix, axis=1) == np.arange(log.n_items)).all()


def test_unshown_candidates_survive_split_write_and_read(small_world, tmp_path: Path) -> None:
    log, _ = small_world
    out = add_candidates(log, "logged+sampled", negatives=3, seed=1)
    train, test = out.split(0.3, seed=0)
    for part in (train, test):
        for r in range(0, part.n_requests, 17):
            req = part.request_ids[r]
            whole = int(np.flatnonzero(out.request_ids == req)[0])
            np.testing.assert_array_equal(_unshown(part, r), _unshown(out, whole))
    out.write(tmp_path / "d")
    assert (tmp_path / "d" / "candidates.parquet").is_file()
    back = SessionLog.read(tmp_path / "d")
    np.testing.assert_array_equal(back.unshown_offsets, out.unshown_offsets)
    np.testing.assert_array_equal(back.unshown_items, out.unshown_items)
    assert back.meta["counts"]["unshown_candidates"] == len(out.unshown_items)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.assign(item_id="no-such-item"), "item_id 'no-such-item' is not in"),
        (lambda df: df.assign(request_id="nope"), "request_id 'nope' is not in the log"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "duplicate \\(request_id, item_id\\)"),
        (lambda df: df.drop(columns="item_id"), "missing column 'item_id'"),
    ],
)
def test_broken_candidates_file_is_named(small_world, tmp_path: Path, edit, message) -> None:
    log, _ = small_world
    out = add_candidates(log.select_sessions(np.arange(20)), "logged+sampled", 2, seed=0)
    out.write(tmp_path / "d")
    path = tmp_path / "d" / "candidates.parquet"
    table = pd.read_parquet(path).astype(str)
    edit(table).to_parquet(path)
    with pytest.raises(LogValidationError, match=f"candidates.parquet.*{message}"):
        SessionLog.read(tmp_path / "d")


def test_a_shown_item_listed_as_unshown_is_refused(small_world, tmp_path: Path) -> None:
    log, _ = small_world
    part = log.select_sessions(np.arange(3))
    shown = pd.DataFrame(
        {"request_id": [part.request_ids[0]], "item_id": [part.item_ids[part.item[0]]]}
    )
    impressions, items, users = part.to_tables()
    with pytest.raises(LogValidationError, match="row 0.*was shown in this request"):
        SessionLog.from_tables(impressions, items, users, candidates=shown)


def test_adapters_accept_the_option_and_check_it() -> None:
    mind = MINDSource(path=str(FIXTURES / "mind"), candidates="logged+sampled", negatives=1)
    log = mind.build()
    assert (np.diff(log.unshown_offsets) == 1).all()
    assert (MINDSource(path=str(FIXTURES / "mind"), candidates="catalog").build()
            .candidate_sizes == 6).all()  # fmt: skip
    with pytest.raises(ValueError, match="dataset.candidates='all'; allowed: logged, catalog"):
        OBDSource(path=str(FIXTURES / "obd"), candidates="all")
    with pytest.raises(ValueError, match="dataset.negatives=0 with candidates=logged\\+sampled"):
        MINDSource(path=str(FIXTURES / "mind"), candidates="logged+sampled")
    with pytest.raises(ValueError, match="dataset.negatives=2 is used only by"):
        TableSource(impressions="x.csv", negatives=2)
    with pytest.raises(ValueError, match="negative_sampling='pop'; allowed: uniform, popularity"):
        TableSource(impressions="x.csv", negative_sampling="pop")


def test_table_adapter_samples_from_its_items(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    pd.DataFrame(
        {
            "request_id": [1, 1, 2],
            "user_id": ["a", "a", "b"],
            "timestamp": [10, 10, 20],
            "item_id": ["x", "y", "z"],
            "position": [0, 1, 0],
            "click": [1, 0, 0],
        }
    ).to_csv(path, index=False)
    log = TableSource(impressions=str(path), candidates="catalog").build()
    assert log.candidate_sizes.tolist() == [3, 3]
    assert log.item_ids[_unshown(log, 0)].tolist() == ["z"]


def test_logged_reward_refuses_unshown_candidates() -> None:
    log = OBDSource(path=str(FIXTURES / "obd")).build()
    with pytest.raises(ValueError, match="reward=logged cannot value candidates that were never"):
        LoggedClickModel().context(log)
    LoggedClickModel().context(OBDSource(path=str(FIXTURES / "obd"), candidates="logged").build())


@pytest.mark.parametrize("obs_mode", ["ids", "embeddings"])
def test_a_policy_places_an_item_never_shown_on_obd(obs_mode: str) -> None:
    """The OBD fixture as a 3-slot ranking over its 80-item catalog, with features."""
    log = OBDSource(path=str(FIXTURES / "obd")).build()
    encoded = encode_log(log, HashingEncoder(dim=16), progress=False)
    assert not encoded.items.any()  # empty texts carry no signal; the features do
    assert encoded.item_features.shape[1] > 0 and encoded.user_features.shape[1] > 0
    model = PBMClickModel().fit(log, encoded=encoded)
    cfg = ReplayConfig(max_candidates=80, slate_size=3, obs_mode=obs_mode)
    env = BatchedReplayEnv(log, encoded, model, cfg, num_envs=2)
    env.seed(0)
    obs = env.reset()
    assert obs["mask"].sum(axis=1).tolist() == [80, 80]
    if obs_mode == "ids":
        assert "user_id" in obs
    else:
        assert obs["candidate_features"].shape == (2, 80 * encoded.item_features.shape[1])
    shown = _shown_sets(log)
    rewards, infos = [], []
    for action in (79, 78, 77):  # the catalog's tail: never shown in these requests
        _, reward, _, step_infos = env.step(np.array([action, action]))
        rewards.append(reward)
        infos = step_infos
    never_shown = set(range(80)) - set(log.item.tolist())
    assert {77, 78, 79} <= never_shown  # items the whole log never showed
    for info in infos:
        slate = info["slate"].tolist()
        assert len(slate) == 3 and set(slate) <= never_shown
        assert not set(slate) & shown[info["request"]]
    assert (np.array(rewards) > 0).all()  # valued by the fitted model, not a missing click


def test_truth_values_sampled_candidates_of_the_synthetic_world(small_world) -> None:
    log, truth = small_world
    out = add_candidates(log.select_sessions(np.arange(10)), "logged+sampled", 4, seed=0)
    model = TruthClickModel(truth=truth)
    attr = model.attractiveness(
        model.context(out), np.arange(out.n_requests), out.candidate_matrix(20)
    )
    assert (attr[out.candidate_matrix(20) >= 0] > 0).all()


def test_synthetic_world_takes_the_option_and_the_oracle_gains_from_it() -> None:
    """With sampled negatives the truth's oracle has more to choose from: it can only gain."""
    from rankgym.agents.baselines import OraclePolicy
    from rankgym.agents.evaluation import evaluate
    from rankgym.logs.synthetic import SyntheticWorld
    from tests.conftest import SMALL_WORLD

    values = {}
    for mode, negatives in (("logged", 0), ("logged+sampled", 8)):
        world = SyntheticWorld(**SMALL_WORLD, candidates=mode, negatives=negatives)
        log, truth = world.generate()
        part = log.select_sessions(np.arange(60))
        encoded = encode_log(part, HashingEncoder(dim=16), progress=False)
        cfg = ReplayConfig(max_candidates=32, slate_size=5, obs_mode="ids")
        result = evaluate(
            OraclePolicy(), part, encoded, TruthClickModel(truth=truth), cfg, truth=truth,
            bootstrap=0,
        )  # fmt: skip
        values[mode] = result.metrics["true_expected_clicks"]
        assert (np.diff(part.unshown_offsets) == negatives).all()
    assert values["logged+sampled"] > values["logged"]
