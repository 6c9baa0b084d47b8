"""Every config group composes and instantiates; typos and bad values fail clearly."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from rankgym.encoders.base import TextEncoder
from rankgym.encoders.transformer import default_model_path
from rankgym.logs.source import LogSource

CONF = Path(__file__).resolve().parents[1] / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["dataset=synthetic"],
        ["dataset=obd", f"dataset.path={FIXTURES / 'obd'}"],
        ["dataset=mind", f"dataset.path={FIXTURES / 'mind'}"],
        ["dataset=table", "dataset.impressions=log.csv"],
    ],
    ids=lambda o: o[0],
)
def test_every_dataset_config_instantiates(overrides: list[str]) -> None:
    cfg = make(*overrides)
    source = instantiate(cfg.dataset)
    assert isinstance(source, LogSource) and source.name == cfg.dataset.name


@pytest.mark.parametrize(
    "overrides",
    [
        ["encoder=minilm"],
        ["encoder=bert", f"encoder.path={default_model_path()}"],
        ["encoder=hashing"],
        ["encoder=tiny"],
    ],
    ids=lambda o: o[0],
)
def test_every_encoder_config_instantiates_and_encodes(overrides: list[str]) -> None:
    cfg = make(*overrides)
    encoder = instantiate(cfg.encoder)
    assert isinstance(encoder, TextEncoder) and encoder.name == cfg.encoder.name
    vectors = encoder.encode(["Nordik waterproof hiking boots, brown", ""])
    assert vectors.shape == (2, encoder.dim) and vectors.dtype == np.float32
    assert len(encoder.fingerprint) >= 16


def test_store_config_instantiates(tmp_path: Path) -> None:
    cfg = make(f"paths.root_dir={tmp_path}", "embedding_store.dtype=float16")
    store = instantiate(cfg.embedding_store)
    assert store.root == tmp_path / ".cache" / "embeddings" and store.dtype == "float16"


def test_typo_in_key_is_rejected_at_composition() -> None:
    with pytest.raises(ConfigCompositionException, match="sclae"):
        make("dataset.sclae=2")


def test_bert_needs_a_path_and_bad_values_name_the_key() -> None:
    with pytest.raises(MissingMandatoryValue, match="Missing mandatory value: encoder.path"):
        instantiate(make("encoder=bert").encoder)
    with pytest.raises(InstantiationException, match=r"encoder\.pooling='max'; allowed: mean, cls"):
        instantiate(make("encoder.pooling=max").encoder)


def test_env_config_instantiates() -> None:
    from rankgym.envs.replay import ReplayConfig

    config = instantiate(make("env.slate_size=5").env)
    assert isinstance(config, ReplayConfig) and config.slate_size == 5
    with pytest.raises(InstantiationException, match=r"env\.obs_mode='pixels'; allowed"):
        instantiate(make("env.obs_mode=pixels").env)


AGENTS = ["ppo", "a2c", "dqn", "supervised", "random", "logged",
          "popularity", "cosine", "oracle"]  # fmt: skip


@pytest.mark.parametrize("agent", AGENTS)
def test_every_agent_config_instantiates(agent: str) -> None:
    from rankgym.agents.baselines import ScoringPolicy
    from rankgym.agents.training import SB3Agent

    cfg = make(f"agent={agent}", "seed=5")
    assert "_target_" in cfg.agent
    built = instantiate(cfg.agent)
    assert built.name == agent
    if agent in ("ppo", "a2c", "dqn"):
        assert isinstance(built, SB3Agent) and built.algorithm == agent
        assert built.num_envs >= 1 and {"variant", "hidden"} <= set(built.scorer)
        assert "learning_rate" in built.hyperparams and isinstance(built.hyperparams, dict)
        # the default PPO ranks whole slates; the v1 agents place one candidate per step
        assert built.action_mode == ("scores" if agent == "ppo" else "slot")
        # the default DQN's Q-value is factorized: one ranking for every position
        assert built.q_model == ("factorized" if agent == "dqn" else "additive")
        assert built.lr_schedule == "constant"
        assert built.keep == "last" == inspect.signature(SB3Agent).parameters["keep"].default
    elif agent == "supervised":
        assert built.action_mode == "scores" and built.scorer["max_positions"] == 1
    else:
        assert isinstance(built, ScoringPolicy)
    if agent == "random":
        assert built.seed == 5  # the run's seed


def test_bad_agent_settings_name_the_key() -> None:
    with pytest.raises(InstantiationException, match=r"agent\.algorithm='sac'; allowed: ppo, a2c"):
        instantiate(make("agent.algorithm=sac").agent)
    with pytest.raises(InstantiationException, match=r"agent\.num_envs=0; allowed"):
        instantiate(make("agent.num_envs=0").agent)
    with pytest.raises(InstantiationException, match=r"agent\.keep='first'; allowed: last, best"):
        instantiate(make("agent.keep=first").agent)
    # the long-term DQN reports its best valid weights (BENCHMARKS.md)
    assert instantiate(make("experiment=longterm", "agent=dqn_longterm").agent).keep == "best"
