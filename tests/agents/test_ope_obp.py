"""rankgym's slate estimators equal Open Bandit Pipeline's on the same random inputs (to 1e-9).

OBP 0.5.7 declares python<3.11; its sdist installs with ``--no-deps --ignore-requires-python``
into a private directory (plus seaborn, which ``obp.ope`` imports) and runs on the project's
numpy, torch and scikit-learn.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rankgym.agents.ope import LoggedSlates, TargetProbs, cascade_dr_terms, estimate
from rankgym.logs.plackett_luce import position_marginals, prefix_probabilities

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def obp(tmp_path_factory: pytest.TempPathFactory):
    target = tmp_path_factory.mktemp("obp")
    packages = ["obp==0.5.7", "seaborn"]
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--ignore-requires-python", "--target", str(target), *packages]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot install obp 0.5.7 from the package index: {done.stderr[-300:]}")
    sys.path.insert(0, str(target))
    try:
        import obp.ope

        yield obp.ope
    finally:
        sys.path.remove(str(target))


def random_slates(n: int, k: int, n_actions: int, seed: int) -> dict[str, np.ndarray]:
    """Logged rankings of a Plackett-Luce logger and a second PL policy's probabilities of them,
    with random clicks and random Q estimates, as OBP's flat arrays."""
    rng = np.random.default_rng(seed)
    behaviour = rng.normal(size=(n, n_actions))
    evaluation = behaviour + rng.normal(size=(n, n_actions)) * 1.5
    order = np.argsort(-(behaviour + rng.gumbel(size=(n, n_actions))), axis=1)[:, :k]
    full = np.argsort(-(behaviour + rng.gumbel(size=(n, n_actions))), axis=1)
    full[:, :k] = order  # prefix probabilities only need the first k
    b_prefix = prefix_probabilities(behaviour, full)[:, :k]
    e_prefix = prefix_probabilities(evaluation, full)[:, :k]
    # item-position marginals of the first k positions, exact over the n_actions items
    lengths = np.full(n, n_actions)
    b_marg = position_marginals(behaviour, lengths)
    e_marg = position_marginals(evaluation, lengths)
    rows, slots = np.arange(n)[:, None], np.arange(k)[None, :]
    b_ip, e_ip = b_marg[rows, order, slots], e_marg[rows, order, slots]
    # pi_e(a | logged items above): softmax of the evaluation logits over the rest
    taken = np.zeros((n, k, n_actions), dtype=bool)
    for pos in range(1, k):
        taken[:, pos] = taken[:, pos - 1]
        taken[np.arange(n), pos, order[:, pos - 1]] = True
    logits = np.where(taken, -np.inf, evaluation[:, None, :])
    dist = np.exp(logits - logits.max(axis=2, keepdims=True))
    dist /= dist.sum(axis=2, keepdims=True)
    return {
        "order": order, "reward": (rng.random((n, k)) < 0.3).astype(float),
        "b_ip": b_ip, "e_ip": e_ip, "b_prefix": b_prefix, "e_prefix": e_prefix,
        "q_hat": rng.random((n, k, n_actions)) * 2.0, "dist": dist,
    }  # fmt: skip


def test_estimates_equal_open_bandit_pipeline(obp) -> None:
    n, k, n_actions = 500, 4, 7
    d = random_slates(n, k, n_actions, seed=0)
    flat = {key: d[key].reshape(-1) for key in ("reward", "b_ip", "e_ip", "b_prefix", "e_prefix")}
    slate_id = np.repeat(np.arange(n), k)
    position = np.tile(np.arange(k), n)
    b_slate = np.repeat(d["b_prefix"][:, -1], k)
    e_slate = np.repeat(d["e_prefix"][:, -1], k)
    common = {"slate_id": slate_id, "reward": flat["reward"], "position": position}
    theirs = {
        "ips": obp.SlateStandardIPS(len_list=k).estimate_policy_value(
            **common, pscore=b_slate, evaluation_policy_pscore=e_slate),
        "snips": obp.SelfNormalizedSlateStandardIPS(len_list=k).estimate_policy_value(
            **common, pscore=b_slate, evaluation_policy_pscore=e_slate),
        "iips": obp.SlateIndependentIPS(len_list=k).estimate_policy_value(
            **common, pscore_item_position=flat["b_ip"],
            evaluation_policy_pscore_item_position=flat["e_ip"]),
        "sniips": obp.SelfNormalizedSlateIndependentIPS(len_list=k).estimate_policy_value(
            **common, pscore_item_position=flat["b_ip"],
            evaluation_policy_pscore_item_position=flat["e_ip"]),
        "rips": obp.SlateRewardInteractionIPS(len_list=k).estimate_policy_value(
            **common, pscore_cascade=flat["b_prefix"],
            evaluation_policy_pscore_cascade=flat["e_prefix"]),
        "snrips": obp.SelfNormalizedSlateRewardInteractionIPS(len_list=k).estimate_policy_value(
            **common, pscore_cascade=flat["b_prefix"],
            evaluation_policy_pscore_cascade=flat["e_prefix"]),
        "dr": obp.SlateCascadeDoublyRobust(len_list=k, n_unique_action=n_actions)
        .estimate_policy_value(
            **common, action=d["order"].reshape(-1), pscore_cascade=flat["b_prefix"],
            evaluation_policy_pscore_cascade=flat["e_prefix"], q_hat=d["q_hat"].reshape(-1),
            evaluation_policy_action_dist=d["dist"].reshape(-1)),
    }  # fmt: skip
    logged = LoggedSlates(
        items=d["order"], clicks=d["reward"], valid=np.ones((n, k), dtype=bool),
        item_position=d["b_ip"], prefix=d["b_prefix"], session=np.arange(n),
        requests=np.arange(n),
    )  # fmt: skip
    q_logged, q_expected = cascade_dr_terms(d["q_hat"], d["dist"], d["order"])
    target = TargetProbs(d["e_ip"], d["e_prefix"], q_logged, q_expected)
    ours = {name: estimate(name, logged, target, bootstrap=0).value for name in theirs}
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(float(value), abs=1e-9), name
    # the estimators differ from each other on these inputs, so the equality is informative
    assert len({round(v, 6) for v in ours.values()}) == len(ours)
    assert Path(obp.__file__).parent.parent.name == "obp"
