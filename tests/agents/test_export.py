"""Export and Ranker: parity with the torch policy in the environment, encoders, bad input.

The world is the default synthetic world (``SyntheticWorld()``), embedded with the hashing
encoder; PPO, A2C and DQN are trained briefly (parity does not need a good policy, only a
trained one: its item biases and weights are no longer at their initial values).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rankgym.agents.baselines import CosinePolicy, PopularityPolicy, SB3Policy
from rankgym.agents.export import export_ranker, policy_scorer
from rankgym.agents.ranker import PARTS, Ranker, RankerError
from rankgym.agents.training import build_agent
from rankgym.encoders.hashing import HashingEncoder
from rankgym.encoders.tiny import tiny_bert_encoder
from rankgym.envs.click_models.simple import TruthClickModel
from rankgym.envs.replay import ReplayConfig
from rankgym.envs.session_replay import SessionReplayEnv
from rankgym.envs.setup import RunSetup, Split, setup_run
from rankgym.envs.vector import BatchedReplayEnv
from rankgym.logs.synthetic import SyntheticWorld

ROOT = Path(__file__).resolve().parents[2]
ENV = ReplayConfig(obs_mode="ids")  # conf/env/default.yaml
HASHING = HashingEncoder(dim=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> RunSetup:
    """The default synthetic world, split and embedded, with its ground truth as reward."""
    out = tmp_path_factory.mktemp("world") / "synthetic"
    return setup_run(SyntheticWorld(), out, HASHING, lambda: TruthClickModel(path=out), ENV,
                     Split())  # fmt: skip


def trained(
    s: RunSetup,
    algorithm: str,
    steps: int,
    slate: bool = False,
    scorer: dict[str, Any] | None = None,
    q_model: str = "additive",
    **hyperparams: Any,
) -> SB3Policy:
    env = dataclasses.replace(s.env, action_mode="scores" if slate else "slot")
    venv = BatchedReplayEnv(s.train, s.encoded, s.reward, env, num_envs=16, device="cpu",
                            request_infos=False)  # fmt: skip
    venv.seed(0)
    model = build_agent(algorithm, venv, 0, "cpu", hyperparams, scorer, slate, q_model=q_model)
    model.learn(steps)
    return SB3Policy(model, "ids", algorithm)


def export(s: RunSetup, policy: Any, out: Path, **kwargs: Any) -> Ranker:
    export_ranker(policy, s.encoded, s.data.item_ids, s.data.query_texts, s.data.user_ids,
                  s.env, out, encoder=kwargs.pop("encoder", HASHING), **kwargs)  # fmt: skip
    return Ranker.load(out)


@pytest.fixture(scope="module")
def rankers(world: RunSetup, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """name -> (policy, ranker) for a trained PPO, A2C, DQN and the two baselines."""
    root = tmp_path_factory.mktemp("rankers")
    policies = {
        "ppo": trained(world, "ppo", 2048, n_steps=64, batch_size=256, learning_rate=3e-3),
        "a2c": trained(world, "a2c", 512, n_steps=8),
        "ppo_slate": trained(world, "ppo", 1024, slate=True, n_steps=32, batch_size=256),
        "ppo_slate_users": trained(
            world, "ppo", 1024, True, {"user_embedding": 8}, n_steps=32, batch_size=256
        ),
        "dqn": trained(
            world, "dqn", 1024, learning_starts=256, buffer_size=4096, batch_size=64, train_freq=1
        ),
        "dqn_factorized": trained(
            world,
            "dqn",
            1024,
            q_model="factorized",
            learning_starts=256,
            buffer_size=4096,
            batch_size=64,
            train_freq=1,
        ),
        "cosine": CosinePolicy().fit(world.train, world.encoded),
        "popularity": PopularityPolicy().fit(world.train, world.encoded),
    }
    return {n: (p, export(world, p, root / n)) for n, p in policies.items()}


def replay_requests(s: RunSetup, policy: Any, n: int) -> list[dict[str, Any]]:
    """Held-out requests replayed in ``SessionReplayEnv``: each one's inputs as a ranker gets
    them (query text, history ids, candidate ids), the env's slate and, per slot, the torch
    scores of the candidates still free."""
    data = s.test
    env = SessionReplayEnv(data, s.encoded, s.reward, s.env)
    scorer = policy_scorer(policy) if isinstance(policy, SB3Policy) else None
    out: list[dict[str, Any]] = []
    for episode in range(env.engine.data.n_episodes):
        obs, _ = env.reset(seed=0, options={"episode": episode})
        done = False
        while not done and len(out) < n:
            e = env.engine
            cand = e.cand[0][e.cand[0] >= 0]
            request = {
                "query": str(data.query_texts[data.request_query[e.req[0]]]),
                "user_history": [str(data.item_ids[i]) for i in e.history[0] if i >= 0],
                "candidates": [str(data.item_ids[i]) for i in cand],
                "k": int(e.slate_len[0]), "torch": [],
                "user_id": str(data.user_ids[data.request_user[e.req[0]]]),
            }  # fmt: skip
            while True:
                batch = {k: v[None] for k, v in obs.items()}
                if scorer is not None:
                    with torch.no_grad():
                        t = {k: torch.as_tensor(v) for k, v in batch.items()}
                        scores = scorer(t)[0, : len(cand)].numpy()
                    request["torch"].append((scores, obs["mask"][: len(cand)] > 0.5))
                action = int(policy.act(batch, env)[0])
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if "slate" in info:
                    break
            request["slate"] = [str(data.item_ids[i]) for i in info["slate"]]
            out.append(request)
        if len(out) >= n:
            break
    return out


@pytest.mark.parametrize("name", ["ppo", "cosine", "a2c", "dqn", "dqn_factorized", "popularity",
                                  "ppo_slate", "ppo_slate_users"])  # fmt: skip
def test_ranker_slates_equal_the_policy_in_the_env(
    world: RunSetup, rankers: dict[str, Any], name: str
) -> None:
    """The Ranker's slate is the policy's deterministic slate in SessionReplayEnv, exactly, and
    its scores are the torch scorer's to 1e-5, slot by slot (100 held-out requests; up to 1,000
    in the slow test below)."""
    policy, ranker = rankers[name]
    assert_parity(world, policy, ranker, 100)
    if name not in ("cosine", "popularity", "a2c"):  # trained: not its initial ranking
        assert np.abs(policy_scorer(policy).bias.weight.detach().numpy()).max() > 1e-3
    # a whole-slate policy's scorer is position-free (and a factorized DQN's): the ranker sorts
    assert ranker.greedy == (name in ("ppo", "a2c", "dqn"))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "n"), [("ppo", 1000), ("cosine", 1000), ("a2c", 200),
                                         ("dqn", 200), ("dqn_factorized", 200), ("popularity", 200),
                                         ("ppo_slate", 500), ("ppo_slate_users", 500)])  # fmt: skip
def test_ranker_slates_equal_the_policy_on_many_requests(
    world: RunSetup, rankers: dict[str, Any], name: str, n: int
) -> None:
    """The parity above on more held-out requests, where rare ties and near-ties show up."""
    policy, ranker = rankers[name]
    assert_parity(world, policy, ranker, n)


def assert_parity(s: RunSetup, policy: Any, ranker: Ranker, n: int | None) -> None:
    """The ranker's slates equal the env's on ``n`` held-out requests (``None``: all of them);
    scores to 1e-5."""
    requests = replay_requests(s, policy, n or s.test.n_requests)
    assert len(requests) == (n or s.test.n_requests)
    worst = 0.0
    for r in requests:
        ranked = ranker.rank(r["query"], r["user_history"], r["candidates"], r["k"], r["user_id"])
        assert [i for i, _ in ranked] == r["slate"], r
        if r["torch"]:  # trained policies: every slot's scores of the free candidates
            onnx = ranker.scores(r["query"], r["user_history"], r["candidates"], r["user_id"])
            for p, (scores, free) in enumerate(r["torch"]):  # a sorting ranker: 1 row
                row = onnx[min(p, len(onnx) - 1)]
                worst = max(worst, float(np.abs(row[free] - scores[free]).max()))
    assert worst <= 1e-5


def test_learned_user_vectors_travel_and_unknown_users_get_the_zero_vector(
    world: RunSetup, rankers: dict[str, Any]
) -> None:
    """A scorer with ``user_embedding`` exports its users' vectors (``user_vectors.npy``, in
    ``users.json`` order); a user the ranker does not know, or no user, ranks with the zero
    vector, as code -1 does in the env."""
    policy, ranker = rankers["ppo_slate_users"]
    vectors = policy_scorer(policy).user_vectors.weight.detach().numpy()
    assert ranker.manifest["dims"]["user_vectors"] == 8
    assert "user_vectors.npy" in ranker.manifest["files"]
    np.testing.assert_array_equal(ranker.tables["user_vectors"], vectors[:-1])
    assert ranker.user_code == {str(u): i for i, u in enumerate(world.data.user_ids)}
    r = replay_requests(world, policy, 1)[0]
    args = (r["query"], r["user_history"], r["candidates"])
    known = ranker.scores(*args, r["user_id"])
    unknown = ranker.scores(*args, "a user never seen")
    np.testing.assert_array_equal(unknown, ranker.scores(*args, None))
    assert np.abs(vectors[world.data.user_ids.tolist().index(r["user_id"])]).max() > 1e-4
    assert not np.allclose(known, unknown)
    # the cold-start scores are the torch scorer's with the user's vector at zero
    scorer = policy_scorer(policy)
    saved = scorer.user_vectors.weight.detach().clone()
    try:
        with torch.no_grad():
            scorer.user_vectors.weight.zero_()
        cold = replay_requests(world, policy, 1)[0]["torch"][0]
    finally:
        with torch.no_grad():
            scorer.user_vectors.weight.copy_(saved)
    scores, free = cold
    np.testing.assert_allclose(unknown[0][free], scores[free], atol=1e-5)


def test_parity_with_embedding_observations(world: RunSetup, tmp_path: Path) -> None:
    """A policy trained on ``embeddings`` observations (no learned item bias) exports too."""
    s = dataclasses.replace(world, env=dataclasses.replace(ENV, obs_mode="embeddings"))
    policy = trained(s, "ppo", 1024, n_steps=64, batch_size=256, learning_rate=3e-3)
    assert_parity(s, policy, export(s, policy, tmp_path / "r"), 200)


def test_parity_on_obd_with_user_features(tmp_path: Path) -> None:
    """OBD: 80 catalog candidates, 3 slots, item and user features (``user_id`` required);
    the fixture's held-out requests are few, each scored at 3 slots x 80 candidates."""
    from rankgym.envs.click_models.fitted import PBMClickModel
    from rankgym.logs.obd import OBDSource

    env = ReplayConfig(obs_mode="ids", max_candidates=80, slate_size=3)
    s = setup_run(OBDSource(path=str(ROOT / "tests" / "fixtures" / "obd")), tmp_path / "obd",
                  HASHING, PBMClickModel(), env, Split(test_fraction=0.5))  # fmt: skip
    policy = trained(s, "ppo", 1024, n_steps=64, batch_size=256, learning_rate=3e-3)
    ranker = export(s, policy, tmp_path / "r")
    assert ranker.fu > 0 and (tmp_path / "r" / "user_features.npy").is_file()
    assert_parity(s, policy, ranker, None)
    # a user the ranker does not know is a new user: zero user features, as no user_id
    cands = [str(i) for i in range(10)]
    new = ranker.scores(None, [], cands, "a user never seen")
    np.testing.assert_array_equal(new, ranker.scores(None, [], cands, None))
    assert not np.allclose(new, ranker.scores(None, [], cands, str(s.data.user_ids[0])))


def test_parity_with_user_profiles_and_a_mismatched_env_is_refused(
    world: RunSetup, tmp_path: Path
) -> None:
    """``env.user_profile``: the ranker reads each user's profile embedding from its user
    features by ``user_id``, as the env did; exporting with env settings the policy was not
    trained with names the settings."""
    s = dataclasses.replace(world, env=dataclasses.replace(ENV, user_profile=True))
    policy = trained(s, "ppo", 1024, True, n_steps=32, batch_size=256, learning_rate=3e-3)
    ranker = export(s, policy, tmp_path / "r")
    fi = world.encoded.item_features.shape[1]
    assert ranker.fu == world.encoded.dim and ranker.manifest["dims"]["item_features"] == fi
    np.testing.assert_array_equal(ranker.tables["user_features"], world.encoded.user_profiles)
    assert_parity(s, policy, ranker, 300)
    d = world.encoded.dim
    refused = rf"{fi} item and {d} user features; .* give {d}, {fi} and 0: .*env.user_profile"
    with pytest.raises(ValueError, match=refused):
        export(world, policy, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()


def test_explain_parts_add_up_to_the_ranked_scores(rankers: dict[str, Any]) -> None:
    for name in ("ppo", "cosine", "popularity"):
        ranker = rankers[name][1]
        cands = [f"i{c:04d}" for c in (3, 10, 20, 47, 500)]
        ranked = ranker.rank("blender", ["i0001", "i0002"], cands)
        explained = ranker.explain("blender", ["i0001", "i0002"], cands)
        assert [(e["item_id"], e["score"]) for e in explained] == ranked
        assert [e["rank"] for e in explained] == list(range(len(cands)))
        for e in explained:
            assert set(e["parts"]) == set(PARTS)
            assert sum(e["parts"].values()) == pytest.approx(e["score"], abs=1e-5)
        if name == "popularity":  # only the bias: the training CTR
            assert all(e["parts"]["item_bias"] == e["score"] for e in explained)


def test_unknown_items_are_encoded_and_get_no_learned_bias(
    world: RunSetup, rankers: dict[str, Any]
) -> None:
    data = world.data
    cosine, ppo = rankers["cosine"][1], rankers["ppo"][1]
    known = ["i0003", "i0010", "i0020"]
    copy = {"item_id": "new-item", "text": str(data.item_texts[10])}
    # cosine reads the text only: an unknown copy of i0010 scores exactly as i0010
    scores = dict(cosine.rank("blender", ["i0001"], [*known, copy]))
    assert scores["new-item"] == pytest.approx(scores["i0010"], abs=1e-6)
    parts = {e["item_id"]: e["parts"] for e in ppo.explain("blender", ["i0001"], [*known, copy])}
    assert parts["new-item"]["item_bias"] == 0.0 and parts["i0010"]["item_bias"] != 0.0
    assert parts["new-item"]["query"] == pytest.approx(parts["i0010"]["query"], abs=1e-6)
    # a known id with a text keeps its exported embedding
    same = ppo.rank("blender", [], [{"item_id": "i0003", "text": "anything at all"}, "i0010"])
    assert same == ppo.rank("blender", [], ["i0003", "i0010"])
    # unknown queries and history items with a text are encoded too
    assert len(ppo.rank("a query nobody typed", [{"item_id": "h", "text": "red kettle"}],
                        known)) == 3  # fmt: skip


def test_batched_ranking_equals_one_by_one(rankers: dict[str, Any]) -> None:
    ranker = rankers["ppo"][1]
    requests = [
        {"query": "blender", "user_history": ["i0001"], "candidates": ["i0003", "i0010"]},
        {"query": None, "user_history": [], "candidates": [f"i{c:04d}" for c in range(30)],
         "k": 5},
        {"query": "kettle", "candidates": ["i0100", {"item_id": "x", "text": "steel kettle"}]},
    ]  # fmt: skip
    batched = ranker.rank_batch(requests)
    for request, ranked in zip(requests, batched, strict=True):
        one = ranker.rank(request.get("query"), request.get("user_history", []),
                          request["candidates"], k=request.get("k"))  # fmt: skip
        assert [i for i, _ in ranked] == [i for i, _ in one]
        np.testing.assert_allclose([s for _, s in ranked], [s for _, s in one], atol=1e-5)
    assert len(batched[1]) == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"candidates": []}, "non-empty list"),
        ({"candidates": ["i0001", "nope"]}, "candidate 1: unknown item 'nope' without a text"),
        ({"candidates": ["i0001", "i0001"]}, "'i0001' appears twice"),
        ({"candidates": [f"i{c:04d}" for c in range(41)]}, "41 candidates; .* at most 40"),
        ({"candidates": ["i0001"], "k": 0}, "k=0; allowed"),
        ({"candidates": ["i0001"], "user_history": ["ghost"]}, "user_history 0: unknown item"),
        ({"candidates": [{"item_id": "z", "txt": "typo"}]}, "keys item_id and .* text"),
        ({"candidates": [3.5]}, "item_id must be a string"),
        ({"candidates": ["i0001"], "query": 7}, "query must be a string"),
        ({"candidates": ["i0001"], "colour": "red"}, r"unknown keys \['colour'\]"),
    ],
)
def test_bad_requests_name_what_is_wrong(
    rankers: dict[str, Any], kwargs: dict[str, Any], match: str
) -> None:
    ranker = Ranker.load(rankers["ppo"][1].directory, max_candidates=40)
    with pytest.raises(RankerError, match=match):
        ranker.rank_batch([kwargs])


def test_without_an_encoder_only_known_texts_rank(world: RunSetup, tmp_path: Path) -> None:
    ranker = export(world, CosinePolicy().fit(world.train, world.encoded), tmp_path / "r",
                    with_encoder=False)  # fmt: skip
    known_query = str(world.data.query_texts[0])
    assert len(ranker.rank(known_query, [], ["i0001", "i0002"])) == 2
    with pytest.raises(RankerError, match="query 'no such query' is not one"):
        ranker.rank("no such query", [], ["i0001"])
    with pytest.raises(RankerError, match="unknown item 'n', and this ranker has no text encoder"):
        ranker.rank(known_query, [], [{"item_id": "n", "text": "a new thing"}])


def test_tampered_or_mismatched_directories_are_refused(
    rankers: dict[str, Any], tmp_path: Path
) -> None:
    source = rankers["ppo"][1].directory

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(source, target)
        return target

    changed = copy("changed")
    bias = np.load(changed / "item_bias.npy")
    np.save(changed / "item_bias.npy", bias + 1)
    with pytest.raises(RankerError, match=r"item_bias.npy: changed since export"):
        Ranker.load(changed)
    missing = copy("missing")
    (missing / "scorer.onnx").unlink()
    with pytest.raises(RankerError, match=r"scorer.onnx: missing"):
        Ranker.load(missing)
    # a consistent manifest (the sha256 rewritten) cannot hide a table of the wrong shape
    reshaped = copy("reshaped")
    np.save(reshaped / "items.npy", np.zeros((5, 64), np.float32))
    manifest = json.loads((reshaped / "manifest.json").read_text())
    digest = hashlib.sha256((reshaped / "items.npy").read_bytes()).hexdigest()
    manifest["files"]["items.npy"] = digest
    (reshaped / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RankerError, match=r"items.npy: shape \(5, 64\)"):
        Ranker.load(reshaped)
    old = copy("old")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 99
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RankerError, match="format_version 99"):
        Ranker.load(old)
    with pytest.raises(RankerError, match="manifest.json: missing"):
        Ranker.load(tmp_path)


def test_export_refuses_what_it_cannot_serve(world: RunSetup, tmp_path: Path) -> None:
    from rankgym.agents.baselines import RandomPolicy

    with pytest.raises(ValueError, match="'random' cannot be exported; allowed: ppo"):
        export(world, RandomPolicy(), tmp_path / "r")
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds files rankgym did not write"):
        export(world, CosinePolicy().fit(world.train, world.encoded), user_dir)
    assert (user_dir / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing half-written


@pytest.fixture(scope="module")
def tiny_ranker(small_world: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The cosine baseline over a tiny BERT (on the small world: 400 items), exported with its
    encoder as ONNX."""
    from rankgym.encoders.encoded_log import encode_log

    log, _ = small_world
    train, _ = log.split(0.2, seed=0)
    encoder = tiny_bert_encoder()
    encoded = encode_log(log, encoder, progress=False)
    out = tmp_path_factory.mktemp("tiny") / "ranker"
    export_ranker(CosinePolicy().fit(train, encoded), encoded, log.item_ids, log.query_texts,
                  log.user_ids, ENV, out, encoder=encoder)  # fmt: skip
    return encoder, out


def test_exported_transformer_encoder_equals_the_torch_encoder(tiny_ranker: Any) -> None:
    encoder, out = tiny_ranker
    ranker = Ranker.load(out)
    assert ranker.manifest["encoder"]["kind"] == "onnx"
    texts = ["", "red kettle", "Stainless STEEL kettle, 1.7l!", "x " * 200, "naïve café ☕",
             *[f"blender {i} with {'extra ' * (i % 7)}words" for i in range(70)]]  # fmt: skip
    np.testing.assert_allclose(ranker.encode(texts), encoder.encode(texts), atol=1e-4)


NO_TORCH = """
import json
import sys
from pathlib import Path
from rankgym.agents.ranker import Ranker
import rankgym.experiments.serve
ranker = Ranker.load(sys.argv[1])
ids = json.loads((Path(sys.argv[1]) / "items.json").read_text())  # the second and third items
ranker.rank("a new query", ids[1:2], [ids[2], {"item_id": "n", "text": "green kettle"}])
print(sorted(m for m in ("torch", "stable_baselines3", "gymnasium", "transformers")
             if m in sys.modules))
"""


def test_ranker_and_server_run_without_torch(tiny_ranker: Any, rankers: dict[str, Any]) -> None:
    for directory in (tiny_ranker[1], rankers["ppo"][1].directory):
        done = subprocess.run([sys.executable, "-c", NO_TORCH, str(directory)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_exported_minilm_equals_transformer_encoder(tmp_path: Path) -> None:
    """The packaged all-MiniLM-L6-v2, exported: embeddings equal TransformerEncoder's to 1e-4."""
    from rankgym.encoders.transformer import TransformerEncoder
    from tests.conftest import SMALL_WORLD

    encoder = TransformerEncoder(device="cpu", progress=False)
    out = tmp_path / "small"
    s = setup_run(SyntheticWorld(**SMALL_WORLD), out, encoder, lambda: TruthClickModel(path=out),
                  ENV, Split())  # fmt: skip
    ranker = export(s, CosinePolicy().fit(s.train, s.encoded), tmp_path / "ranker",
                    encoder=encoder)  # fmt: skip
    assert ranker.manifest["encoder"]["fingerprint"] == encoder.fingerprint
    texts = [*s.data.item_texts[:100], "", "word " * 400, "naïve café ☕"]
    np.testing.assert_allclose(ranker.encode(texts), encoder.encode(texts), atol=1e-4)
