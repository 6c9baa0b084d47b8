"""rankgym.experiments.compare: the per-policy table over seeds and the two-opinions table."""

from __future__ import annotations

import pytest

from rankgym.experiments.compare import opinions_markdown, seed_interval, two_opinions


def run(policy: str, seed: int, sim: float, iips: float, support: float) -> dict:
    return {"policy": policy, "seed": seed, "expected_clicks": sim, "true_expected_clicks": 1.0,
            "ope_iips": iips, "ope_iips_support": support, "ope_dr": None}  # fmt: skip


def test_two_opinions_average_seeds_and_keep_support() -> None:
    runs = [
        run("ppo", 0, 1.2, 1.0, 0.5),
        run("ppo", 1, 1.4, 1.2, 0.7),
        run("cosine", 0, 1.1, 0.9, 0.4),
    ]
    table = two_opinions(runs).set_index("policy")
    assert table.loc["ppo", "seeds"] == 2
    assert table.loc["ppo", "expected_clicks"] == pytest.approx(1.3)
    assert table.loc["ppo", "iips"] == pytest.approx(1.1)
    assert table.loc["ppo", "iips_support"] == pytest.approx(0.6)
    assert "dr" not in table  # no run has a value for it
    text = opinions_markdown(table.reset_index())
    assert "| ppo | 2 | 1.0000 | 1.3000 | 1.1000 (60%) |" in text
    assert two_opinions([{"policy": "x", "expected_clicks": 1.0}]).empty


def test_seed_interval() -> None:
    mean, low, high = seed_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(2 - 4.303 / 3**0.5) and high > 3


def test_two_opinions_show_the_simulators_epistemic_interval() -> None:
    runs = [
        {**run("ppo", 0, 1.2, 1.0, 0.5), "expected_clicks_epi_low": 1.1,
         "expected_clicks_epi_high": 1.3},
        {**run("ppo", 1, 1.4, 1.2, 0.7), "expected_clicks_epi_low": 1.3,
         "expected_clicks_epi_high": 1.5},
        run("cosine", 0, 1.1, 0.9, 0.4),  # a reward model without members: no interval
    ]  # fmt: skip
    table = two_opinions(runs)
    text = opinions_markdown(table)
    assert "| ppo | 2 | 1.0000 | 1.3000 [1.2000, 1.4000] | 1.1000 (60%) |" in text
    assert "| cosine | 1 | 1.0000 | 1.1000 | 0.9000 (40%) |" in text
