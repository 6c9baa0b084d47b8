"""The neural click model: its settings and config, its inputs, serving, calibration and fit."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate

from rankgym.encoders.encoded_log import encode_log
from rankgym.encoders.hashing import HashingEncoder
from rankgym.encoders.pooling import UserPooling, pad_histories
from rankgym.envs.click_models import neural
from rankgym.envs.click_models.base import ClickModel, logged_rankings
from rankgym.envs.click_models.fitted import PBMClickModel
from rankgym.envs.click_models.neural import NeuralClickModel, NeuralSettings
from rankgym.envs.click_models.neural.structure import RequestBatch, conditional_exam_logits
from rankgym.logs import SessionLog
from rankgym.logs.synthetic import SyntheticWorld

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# a few seconds per fit on the small world; the defaults train far longer
TINY = {"hidden": 16, "epochs": 2, "ensemble": 2, "structure": "pbm"}


def compose_reward(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides)).reward


def attractiveness(model: ClickModel, log: SessionLog, requests, rankings) -> np.ndarray:
    return model.attractiveness(model.context(log), requests, rankings)


@pytest.fixture(scope="module")
def split(small_world) -> tuple[SessionLog, SessionLog]:
    log, _ = small_world
    return log.split(0.2, seed=0)


@pytest.fixture(scope="module")
def medium() -> tuple[SessionLog, SessionLog]:
    """~29k impressions (PBM truth): enough for a held-out likelihood to tell models apart."""
    log, _ = SyntheticWorld(scale=0.3, propensity_samples=5).generate()
    return log.split(0.2, seed=0)


@pytest.fixture(scope="module")
def fitted(medium) -> NeuralClickModel:
    """The defaults, small: profile, match, item statistics, dropout, crossfit level (~2 s)."""
    return NeuralClickModel(**TINY).fit(medium[0], validation=medium[1])


# ---------------------------------------------------------------------- settings and config
def test_the_config_mirrors_the_settings_defaults() -> None:
    """``reward=neural`` is ``NeuralClickModel()``: the YAML has every field of NeuralSettings
    with its default, and no other key; ``neural_train`` differs in ``mlp_epochs`` alone."""
    node = compose_reward("reward=neural")
    yaml = {k: v for k, v in node.items() if k != "_target_"}
    defaults = dataclasses.asdict(NeuralSettings())
    assert list(yaml) == list(defaults)  # same keys, same order
    for key, value in defaults.items():
        assert yaml[key] == value and type(yaml[key]) is type(value), key
    model = instantiate(node)
    assert type(model) is NeuralClickModel and model.settings == NeuralSettings()
    assert model.config() == defaults == NeuralClickModel().config()
    train = instantiate(compose_reward("reward=neural_train")).settings
    assert train == dataclasses.replace(NeuralSettings(), mlp_epochs=4)


def test_the_measured_defaults() -> None:
    """What the fidelity figures describe (BENCHMARKS.md), not what happens to be off."""
    s = NeuralSettings()
    assert (s.dropout, s.calibrate, s.crossfit, s.item_stats, s.profile, s.match) == (
        0.2, "level", True, True, True, True,
    )  # fmt: skip
    assert (s.hidden, s.epochs, s.ensemble, s.structure, s.features) == (
        128, 20, 5, "auto", "lexical",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hidden": 0}, "reward.hidden=0; allowed: an int >= 1"),
        ({"epochs": 1.5}, "reward.epochs=1.5; allowed: an int >= 1"),
        ({"ensemble": True}, "reward.ensemble=True; allowed: an int >= 1"),
        ({"mlp_epochs": 0}, "reward.mlp_epochs=0; allowed: an int >= 1, or null"),
        ({"lr": 0}, "reward.lr=0; allowed: a number > 0"),
        ({"bias_decay": -1.0}, "reward.bias_decay=-1.0; allowed: a number >= 0"),
        ({"dropout": 1.0}, r"reward.dropout=1.0; allowed: a probability in \[0, 1\)"),
        ({"dropout": "0.2"}, r"reward.dropout='0.2'; allowed: a probability in \[0, 1\)"),
        ({"profile": "yes"}, "reward.profile='yes'; allowed: true, false"),
        ({"crossfit": 1}, "reward.crossfit=1; allowed: true, false"),
        ({"structure": "dbn"}, "reward.structure='dbn'; allowed: pbm, cascade, auto"),
        ({"calibrate": "platt"}, "reward.calibrate='platt'; allowed: none, level"),
        ({"features": "bert"}, "reward.features='bert'; allowed: lexical, encoder"),
        ({"device": "tpu"}, "reward.device='tpu'; allowed: cpu, cuda, auto"),
        ({"seed": "0"}, "reward.seed='0'; allowed: an int"),
    ],
)
def test_a_wrong_setting_names_the_key_and_the_allowed_values(settings, message) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        NeuralClickModel(**settings)


def test_removed_settings_are_refused_from_the_command_line_and_in_code() -> None:
    """``weight_decay``, ``examination``, ``propensity_clip`` and ``calibrate=platt`` were
    measured and not adopted (docs/decisions.md); an old command line fails at composition."""
    for key in ("weight_decay=1e-4", "examination=learned", "propensity_clip=10"):
        with pytest.raises(ConfigCompositionException, match=key.split("=")[0]):
            compose_reward("reward=neural", f"reward.{key}")
        with pytest.raises(TypeError, match=key.split("=")[0]):
            NeuralClickModel(**{key.split("=")[0]: 1})
    node = compose_reward("reward=neural", "reward.calibrate=platt")
    with pytest.raises(InstantiationException, match="reward.calibrate='platt'; allowed: none"):
        instantiate(node)


# ---------------------------------------------------------------------- inputs
def test_features_are_its_own_or_the_runs(split) -> None:
    """``lexical`` embeds the log's texts itself (any env encoder will do); ``encoder`` keeps
    the run's embeddings and records their encoder; feature columns join either."""
    train = split[0]
    one = {"epochs": 1, "hidden": 8, "structure": "pbm", "ensemble": 1, "item_stats": False}
    lexical = NeuralClickModel(**one).fit(train)
    assert lexical.encoder_fingerprint is None and not lexical.reads_embeddings
    own = encode_log(train, HashingEncoder(), progress=False)
    d, fi = own.dim, own.item_features.shape[1]
    assert fi > 0  # the world's category and price band: [text, features] per item
    np.testing.assert_array_equal(lexical.tables.items, np.hstack([own.items, own.item_features]))
    np.testing.assert_array_equal(lexical.tables.queries[:, :d], own.queries)
    assert not lexical.tables.queries[:, d:].any()
    other = encode_log(train, HashingEncoder(dim=16, seed=1), progress=False)
    run = NeuralClickModel(**one, features="encoder").fit(train, encoded=other)
    assert run.reads_embeddings and run.encoder_fingerprint == other.fingerprint
    assert run.tables.items.shape == (train.n_items, 16 + fi)
    text_only = NeuralClickModel(**one, use_features=False).fit(train)
    assert text_only.tables.items.shape == (train.n_items, d)
    with_stats = NeuralClickModel(**{**one, "item_stats": True}).fit(train)
    assert with_stats.tables.items.shape == (train.n_items, d + fi + 1)


def test_embeddings_of_another_dataset_are_refused(split, fitted) -> None:
    other, _ = SyntheticWorld(n_items=50, n_users=20, n_sessions=30).generate()
    foreign = encode_log(other, HashingEncoder(), progress=False)
    with pytest.raises(ValueError, match="another dataset"):
        NeuralClickModel(epochs=1, features="encoder").fit(split[0], encoded=foreign)
    with pytest.raises(ValueError, match="needs the text embeddings"):
        NeuralClickModel(epochs=1, features="encoder").fit(split[0])
    with pytest.raises(ValueError, match="pooled as .*method='mean'.* but the env pools.*decay"):
        fitted.check_replay(UserPooling(method="decay"))
    with pytest.raises(RuntimeError, match="not fitted"):
        NeuralClickModel().context(split[0])


def test_item_stats_count_impressions_without_the_own_session(small_world) -> None:
    """One more item input, ``log1p`` of the item's training impressions z-scored; a training
    request sees the count without its own session's impressions, as a held-out request sees
    the training log's."""
    log, _ = small_world
    small = {"epochs": 1, "hidden": 8, "ensemble": 1, "structure": "pbm", "calibrate": "none"}
    model = NeuralClickModel(**small).fit(log)
    plain = NeuralClickModel(**small, item_stats=False).fit(log)
    assert model.tables.items.shape[1] == plain.tables.items.shape[1] + 1
    shown = np.log1p(np.bincount(log.item.astype(np.int64), minlength=log.n_items))
    z = (shown - shown.mean()) / shown.std()
    np.testing.assert_allclose(model.tables.items[:, -1], z, rtol=1e-5, atol=1e-5)
    assert not model.tables.queries[:, -1].any() and not model.tables.user_profiles[:, -1].any()
    batch = RequestBatch(log, model.tables, model.pooling, model.settings, torch.device("cpu"))
    session = np.searchsorted(log.session_offsets, log.impression_request, side="right") - 1
    row = 0  # the first impression: its item's count less its own session's impressions
    item = int(log.item[row])
    own = int(np.sum((log.item == item) & (session == session[row])))
    left_out = np.log1p(np.bincount(log.item, minlength=log.n_items)[item] - own) - shown.mean()
    got = batch.item_stat[log.impression_request[row], log.position[row]]
    assert float(got) == pytest.approx(left_out / shown.std(), rel=1e-5)


def test_the_profile_is_an_input_of_its_own_and_travels(split, tmp_path: Path) -> None:
    """A user's profile vector changes that user's attractiveness and no one else's (the pooled
    state does not read it); a saved model loads back with it."""
    train, test = split
    model = NeuralClickModel(**{**TINY, "ensemble": 1}, calibrate="none", match=False).fit(train)
    assert model.modules[0].mlp[0].in_features == 7 * model.tables.items.shape[1]
    requests = np.arange(test.n_requests)
    rankings = logged_rankings(test)[0]
    before = attractiveness(model, test, requests, rankings)
    model.save(tmp_path / "m")
    loaded = ClickModel.load(tmp_path / "m")
    assert loaded.settings.profile
    np.testing.assert_array_equal(attractiveness(loaded, test, requests, rankings), before)
    users = test.request_user[requests]
    user, other = users[0], users[users != users[0]][0]
    profiles = model.tables.user_profiles.copy()
    profiles[user] = profiles[other]
    model.tables = dataclasses.replace(model.tables, user_profiles=profiles)
    after = attractiveness(model, test, requests, rankings)
    mine = (users == user)[:, None] & (rankings >= 0)
    assert not np.allclose(after[mine], before[mine])
    np.testing.assert_array_equal(after[~mine], before[~mine])


def test_the_current_history_is_read(medium, fitted) -> None:
    train = medium[0]
    context = fitted.context(train)
    requests = train.session_offsets[:6].astype(np.int64)  # first requests: pre-log histories
    rankings = logged_rankings(train)[0][requests]
    default = fitted.attractiveness(context, requests, rankings)
    pre_log = pad_histories(
        train.user_history_offsets, train.user_history_items, fitted.pooling.history_len
    )[train.request_user[requests]]
    np.testing.assert_allclose(
        fitted.attractiveness(context, requests, rankings, pre_log), default, rtol=1e-6
    )
    shifted = fitted.attractiveness(context, requests, rankings, np.roll(pre_log, 1, axis=0))
    assert not np.allclose(shifted, default)
    assert np.all(default[rankings < 0] == 0.0)
    with pytest.raises(ValueError, match="history has shape"):
        fitted.attractiveness(context, requests, rankings, pre_log[:3])


def test_without_session_history_the_user_state_is_the_pre_log_one(medium) -> None:
    """``session_history=false`` (``reward=neural_longterm``): fitted and served on each
    user's pre-log history, whatever the env passes as the current one."""
    train = medium[0]
    model = NeuralClickModel(**TINY, session_history=False).fit(train)
    context = model.context(train)
    assert model.tables.request_states(train, model.pooling, True).shape == (
        context.arrays["request_states"].shape
    )
    pre_log = model.tables.pool(
        model.pooling,
        pad_histories(train.user_history_offsets, train.user_history_items,
                      model.pooling.history_len)[train.request_user],
        train.request_user,
    )  # fmt: skip
    np.testing.assert_allclose(context.arrays["request_states"], pre_log, rtol=1e-6)
    requests = np.arange(12, dtype=np.int64)
    rankings = logged_rankings(train)[0][requests]
    default = model.attractiveness(context, requests, rankings)
    other = np.tile(rankings[:, :1], (1, 4))  # a history the env might pass: ignored
    np.testing.assert_allclose(model.attractiveness(context, requests, rankings, other), default)
    node = compose_reward("reward=neural_longterm")
    assert instantiate(node).settings == dataclasses.replace(
        NeuralSettings(), session_history=False
    )


# ---------------------------------------------------------------------- serving
@pytest.mark.parametrize(("profile", "match"), [(False, False), (True, False), (True, True)])
def test_the_members_are_served_in_one_pass(
    split, profile: bool, match: bool, tmp_path: Path
) -> None:
    """The stacked forward that serves the ensemble, and each member's split first layer, equal
    the MLP on its documented input ``[q, u, i, q*i, u*i(, p, p*i)(, q.i, u.i(, p.i))]`` built
    per candidate: with the per-item biases, the calibration shifts, padding slots and a
    history."""
    train, test = split
    model = NeuralClickModel(**TINY, profile=profile, match=match).fit(train)
    assert len(model.modules) == 2 and all(float(m.shift) for m in model.modules)
    tables = model.tables
    context = model.context(test)
    requests = np.arange(0, test.n_requests, 3)
    rankings = logged_rankings(test)[0][requests]
    rankings[::5, -3:] = -1  # padding slots: 0, not an item
    history = np.full((len(requests), 4), -1, dtype=np.int64)
    history[:, -1] = rankings[:, 0]
    served = model.attractiveness(context, requests, rankings, history)
    state = tables.pool(model.pooling, history, test.request_user[requests])
    w = rankings.shape[1]
    expand = lambda a: torch.from_numpy(a)[:, None, :].expand(-1, w, -1)  # noqa: E731
    q, u = expand(tables.queries[test.request_query[requests]]), expand(state)
    codes = torch.from_numpy(np.where(rankings >= 0, rankings, 0))
    i = torch.from_numpy(tables.items[codes.numpy()])
    inputs = [q, u, i, q * i, u * i]  # the MLP's documented input, built per candidate
    if profile:
        p = expand(tables.user_profiles[test.request_user[requests]])
        inputs += [p, p * i]
    if match:  # the dot products of the query, state and profile with the item
        inputs += [(x * i).sum(-1, keepdim=True) for x in ([q, u, p] if profile else [q, u])]
    with torch.no_grad():
        members = []
        for m in model.modules:
            logit = m.mlp(torch.cat(inputs, -1)).squeeze(-1) + m.item_bias(codes).squeeze(-1)
            members.append(torch.sigmoid(logit + m.shift))
    expected = torch.stack(members).mean(0).double().numpy()
    np.testing.assert_allclose(served, np.where(rankings >= 0, expected, 0.0), atol=2e-6)
    assert (served[rankings < 0] == 0).all() and served[rankings >= 0].min() > 0
    model.save(tmp_path / "neural")  # the saved model rebuilds the same first layers
    loaded = ClickModel.load(tmp_path / "neural")
    assert loaded.config() == model.config()
    np.testing.assert_array_equal(
        loaded.attractiveness(loaded.context(test), requests, rankings, history), served
    )


def test_the_ensemble_is_the_mean_of_its_members(small_world) -> None:
    """Members are fitted from seeds seed, seed + 1, ...; attractiveness is their mean."""
    log, _ = small_world
    small = {"epochs": 1, "hidden": 8, "structure": "pbm", "calibrate": "none"}  # no seeded split
    members = [NeuralClickModel(**small, ensemble=1, seed=s).fit(log) for s in (3, 4)]
    both = NeuralClickModel(**small, ensemble=2, seed=3).fit(log)
    rankings, _ = logged_rankings(log)
    requests = np.arange(log.n_requests)
    each = [attractiveness(m, log, requests, rankings) for m in members]
    got = attractiveness(both, log, requests, rankings)
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-6, atol=1e-9)
    assert not np.allclose(each[0], each[1])  # the members differ


# ---------------------------------------------------------------------- click structure
def test_the_pbm_examination_is_fixed_from_the_log(medium, fitted) -> None:
    """Under PBM each member's examination is estimated, before the fit, from the pairs its
    part of the log shows at several positions (anchored at 1 on top), and stays frozen; the
    model's is the members' mean."""
    from rankgym.envs.click_models.neural.calibration import member_splits

    parts = [fit_on for fit_on, _ in member_splits(medium[0], fitted.settings)]
    for member, part in zip(fitted.modules, parts, strict=True):
        assert not member.exam_logit.requires_grad
        torch.testing.assert_close(member.exam_logit, conditional_exam_logits(part).float())
    exam = [torch.sigmoid(m.exam_logit).double().numpy() for m in fitted.modules]
    np.testing.assert_allclose(fitted.examination, np.mean(exam, axis=0))
    assert fitted.structure == "pbm" and fitted.examination[0] == pytest.approx(1.0, abs=1e-3)
    # measured [1, .39, .25, .16] on this world (the truth: [1, .5, .33, .25]; test_click_models
    # checks the estimate's accuracy on a larger log)
    assert np.all(np.diff(fitted.examination[:4]) < 0)


# ---------------------------------------------------------------------- calibration
def test_level_calibration_matches_the_held_out_clicks(split) -> None:
    """Fitted on 90%, each member shifted so that the expected clicks of the other 10%'s
    logged rankings equal their clicks (PBM is linear in attractiveness, so the ensemble's mean
    matches too)."""
    train = split[0]
    # without item statistics: with them, a calibration request counts the training log's
    # impressions without its own session's, as a held-out one does, but served here (its
    # session is in the training log) it counts them all
    model = NeuralClickModel(**TINY, crossfit=False, item_stats=False).fit(train)
    _, held = train.split(0.1, seed=model.settings.seed)  # the split fit() makes
    rankings, clicks = logged_rankings(held)
    probs = model.click_probs(model.context(held), np.arange(held.n_requests), rankings)
    assert probs.sum() == pytest.approx(clicks[rankings >= 0].sum(), rel=1e-6)
    assert len({float(m.shift) for m in model.modules}) == 2  # one shift per member
    plain = NeuralClickModel(**TINY, calibrate="none", item_stats=False).fit(train)
    assert all(float(m.shift) == 0.0 for m in plain.modules)


def test_crossfit_calibrates_each_member_on_its_own_held_out_sessions(split) -> None:
    """Member ``m`` is fitted without the ``m``-th tenth of the training sessions and shifted
    so that its expected clicks of that tenth's logged rankings equal its clicks; the tenths are
    disjoint, so the ensemble's level is set on two of them, not one."""
    from rankgym.envs.click_models.neural.calibration import member_splits

    train = split[0]
    model = NeuralClickModel(**TINY, item_stats=False).fit(train)  # see the test above
    splits = member_splits(train, model.settings)
    held_sessions = [set(held.session_ids) for _, held in splits]
    assert not held_sessions[0] & held_sessions[1]
    for (fit_on, held), sessions in zip(splits, held_sessions, strict=True):
        assert not set(fit_on.session_ids) & sessions
        assert fit_on.n_sessions + held.n_sessions == train.n_sessions
        assert held.n_sessions == pytest.approx(train.n_sessions / 10, abs=1)
    for module, (_, held) in zip(model.modules, splits, strict=True):
        model.modules = [module]  # this member alone
        rankings, clicks = logged_rankings(held)
        probs = model.click_probs(model.context(held), np.arange(held.n_requests), rankings)
        assert probs.sum() == pytest.approx(clicks[rankings >= 0].sum(), rel=1e-6)
    # without crossfit every member is calibrated on the same tenth (the one split fit() makes)
    shared = dataclasses.replace(model.settings, crossfit=False)
    (_, a), (_, b) = member_splits(train, shared)
    assert a is b and a.n_sessions == pytest.approx(train.n_sessions / 10, abs=1)


# ---------------------------------------------------------------------- fitting
def test_a_fit_is_deterministic_given_the_seed(small_world) -> None:
    """The defaults (auto structure, crossfit, dropout) draw everything from seeded streams."""
    log, _ = small_world
    small = {"epochs": 1, "hidden": 8, "ensemble": 1}
    a = NeuralClickModel(**small, seed=3).fit(log)
    b = NeuralClickModel(**small, seed=3).fit(log)
    c = NeuralClickModel(**small, seed=4).fit(log)
    assert a.train_log_likelihood == b.train_log_likelihood != c.train_log_likelihood
    assert a.selection_log_likelihood == b.selection_log_likelihood
    for x, y in zip(a.state().items(), b.state().items(), strict=True):
        assert x[0] == y[0] and np.array_equal(x[1], y[1]), x[0]


def test_the_mlp_stops_after_mlp_epochs_while_the_item_biases_learn_on(small_world) -> None:
    """``mlp_epochs=1, epochs=3``: the MLP is the one-epoch fit's; the item biases are not."""
    log, _ = small_world
    small = {"hidden": 8, "structure": "pbm", "calibrate": "none", "ensemble": 1, "seed": 2}
    short = NeuralClickModel(**small, epochs=1).fit(log).modules[0]
    long = NeuralClickModel(**small, epochs=3, mlp_epochs=1).fit(log).modules[0]
    free = NeuralClickModel(**small, epochs=3).fit(log).modules[0]
    for name, weight in short.mlp.state_dict().items():
        torch.testing.assert_close(long.mlp.state_dict()[name], weight)
        assert not torch.equal(free.mlp.state_dict()[name], weight)
    assert not torch.equal(long.item_bias.weight, short.item_bias.weight)


def test_dropout_is_seeded_and_acts_only_while_fitting(small_world) -> None:
    """Dropout masks come from the member's own seeded stream: a seed gives one fit, the masks
    change it, and a fitted member (eval mode) scores the same candidates the same way."""
    log, _ = small_world
    small = {"hidden": 8, "epochs": 2, "structure": "pbm", "ensemble": 1, "seed": 3}
    a = NeuralClickModel(**small, dropout=0.5).fit(log)
    b = NeuralClickModel(**small, dropout=0.5).fit(log)
    plain = NeuralClickModel(**small, dropout=0.0).fit(log)
    assert a.train_log_likelihood == b.train_log_likelihood != plain.train_log_likelihood
    member = a.modules[0]
    assert not member.training and member.noise is None
    context, requests = a.context(log), np.arange(20)
    rankings = np.tile(np.arange(6), (20, 1))
    first = a.attractiveness(context, requests, rankings)
    np.testing.assert_array_equal(first, a.attractiveness(context, requests, rankings))
    # in training mode half the hidden units are dropped and the rest doubled
    hidden = torch.ones(4, 5, 1000)
    member.noise = torch.Generator().manual_seed(0)
    dropped = member._drop(hidden)
    assert set(dropped.unique().tolist()) == {0.0, 2.0}
    assert abs(float((dropped == 0).float().mean()) - 0.5) < 0.02


def test_the_fit_beats_the_pair_table_on_held_out_requests(medium, fitted) -> None:
    """Text features generalise to the held-out (query, item) pairs a pair table never saw."""
    train, test = medium
    assert fitted.validation_log_likelihood == pytest.approx(fitted.log_likelihood(test))
    assert fitted.train_log_likelihood > fitted.validation_log_likelihood
    # measured -0.293 against the PBM pair table's -0.306
    assert fitted.validation_log_likelihood > PBMClickModel().fit(train).log_likelihood(test)


def test_a_cached_fit_is_keyed_by_the_code_that_fits_it(
    small_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same settings on the same log reuse a cached fit, but not one made by other code:
    the key holds the source of every module of the neural model and of the rankgym code they
    import."""
    import rankgym.envs.setup as run_setup
    from rankgym.encoders.encoded_log import EncodedLog
    from rankgym.envs.replay import ReplayConfig

    sources = set(run_setup.model_sources(NeuralClickModel))
    for info in pkgutil.iter_modules(neural.__path__):
        part = importlib.import_module(f"{neural.__name__}.{info.name}")
        needed = {Path(part.__file__)}
        for value in vars(part).values():  # the rankgym code each part imports
            name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", "")
            if isinstance(name, str) and name.startswith("rankgym."):
                needed.add(Path(sys.modules[name].__file__))
        assert needed <= sources, (info.name, needed - sources)
    assert ROOT / "envs/click_models/fitted.py" in sources  # the PBM examination's estimate
    assert ROOT / "encoders/pooling.py" in sources  # the user state it is fitted on
    log, _ = small_world
    encoded: EncodedLog = encode_log(log, HashingEncoder(dim=16), progress=False)
    fit = lambda: run_setup.fit_reward_model(  # noqa: E731
        PBMClickModel(), log, log, encoded, ReplayConfig(), tmp_path
    )
    first = fit()
    fit()
    assert len(list((tmp_path / "reward_models").glob("pbm-*"))) == 1
    monkeypatch.setattr(run_setup, "code_digest", lambda cls: "edited")
    refit = fit()
    assert len(list((tmp_path / "reward_models").glob("pbm-*"))) == 2
    np.testing.assert_allclose(refit.examination, first.examination)


def test_the_structure_of_the_world_is_picked_and_its_abandonment_set() -> None:
    """``structure=auto`` picks the cascade on a cascade world by held-out likelihood; the
    level calibration then sets the abandonment near the world's 0.3 (~4 s)."""
    log, _ = SyntheticWorld(click_model="cascade", propensity_samples=5, scale=0.3).generate()
    train, test = log.split(0.2, seed=0)
    model = NeuralClickModel(hidden=16, epochs=2, ensemble=1).fit(train)
    scores = model.selection_log_likelihood
    # measured -0.159 against -0.183
    assert model.structure == "cascade" and scores["cascade"] > scores["pbm"] + 0.01, scores
    assert model.abandonment[0] == pytest.approx(0.3, abs=0.05)  # measured 0.321
    assert model.log_likelihood(test) > PBMClickModel().fit(train).log_likelihood(test)


# ---------------------------------------------------------------------- long checks
@pytest.mark.slow
def test_level_calibration_recovers_the_cascade_abandonment() -> None:
    """Under the cascade the abandonment is set by held-out likelihood (levels re-matched at
    each candidate): fitted jointly, memorised skips pull it below the world's 0.3 (0.22 on the
    default world)."""
    log, _ = SyntheticWorld(click_model="cascade", propensity_samples=5, scale=0.3).generate()
    train = log.split(0.2, seed=0)[0]
    # measured 0.257 jointly, 0.310 on held-out sessions (~12 s)
    cascade = {"structure": "cascade", "epochs": 12, "hidden": 64, "ensemble": 2, "lr": 4e-3}
    cascade.update(batch_size=1024, profile=False, match=False, item_stats=False, dropout=0.0)
    joint = NeuralClickModel(**cascade, calibrate="none").fit(train)
    held_out = NeuralClickModel(**cascade).fit(train)
    leave = held_out.abandonment[0]
    assert abs(leave - 0.3) < abs(joint.abandonment[0] - 0.3), (leave, joint.abandonment[0])
    assert abs(leave - 0.3) < 0.05, leave
    for module in held_out.modules:  # one abandonment, shared by every member
        assert torch.sigmoid(module.abandon_logit).item() == pytest.approx(leave)
