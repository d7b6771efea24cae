"""Reward-model probes: calibration on synthetic rewards, length statistics, invariances, hacking."""

import math

import numpy as np
import pytest
import torch

import llmbook.align.probes as probes
from llmbook.align.preference import preference_data
from llmbook.align.probes import (
    INVARIANCES,
    calibration,
    expected_calibration_error,
    hacking_pairs,
    hacking_probe,
    invariance,
    length_adjusted,
    length_correlation,
    length_slope,
)
from llmbook.align.reward_model import RewardModel
from llmbook.tasks import split_of, verify
from tests.align.test_reward_model import CHAT, tiny_gpt

# --- calibration ------------------------------------------------------------------------------------


def _bt_world(n, *, seed, scale=3.0):
    """Pairs labelled by the Bradley-Terry model itself: a calibrated reward by construction."""
    g = torch.Generator().manual_seed(seed)
    ra, rb = torch.randn(n, generator=g) * scale, torch.randn(n, generator=g) * scale
    a_wins = torch.rand(n, generator=g) < torch.sigmoid(ra - rb)
    chosen = torch.where(a_wins, ra, rb)
    rejected = torch.where(a_wins, rb, ra)
    return chosen, rejected


def test_calibrated_rewards_give_a_small_ece_and_inverted_ones_a_large_one():
    chosen, rejected = _bt_world(20000, seed=0)
    calibrated = expected_calibration_error(calibration(chosen, rejected))
    inverted = expected_calibration_error(calibration(rejected, chosen))
    overconfident = expected_calibration_error(calibration(chosen * 4, rejected * 4))
    assert calibrated < 0.02
    assert inverted > 0.5
    assert overconfident > 0.05
    assert calibrated < overconfident < inverted


def test_the_calibration_table_is_well_formed_and_seeded():
    chosen, rejected = _bt_world(2000, seed=1)
    table = calibration(chosen, rejected, n_bins=5, seed=3)
    assert sum(row["n"] for row in table) == 2000
    assert [row["lo"] for row in table] == sorted(row["lo"] for row in table)
    for row in table:
        assert row["hi"] == pytest.approx(row["lo"] + 0.2)
        assert row["lo"] <= row["predicted"] <= row["hi"]
        assert 0.0 <= row["observed"] <= 1.0 and row["n"] > 0
    assert calibration(chosen, rejected, n_bins=5, seed=3) == table
    # Each pair is shown either way round: the table is symmetric about 1/2 on average.
    shares = sum(row["n"] * row["predicted"] for row in table) / 2000
    assert shares == pytest.approx(0.5, abs=0.05)


def test_a_reward_that_always_ranks_right_by_a_mile_is_perfectly_calibrated():
    # sigma(+-50) is 0 or 1, and the first answer is the chosen one exactly when p is 1.
    chosen, rejected = torch.full((100,), 50.0), torch.full((100,), -50.0)
    table = calibration(chosen, rejected, n_bins=10)
    assert {row["lo"] for row in table} == {0.0, 0.9}
    assert expected_calibration_error(table) == pytest.approx(0.0, abs=1e-12)


def test_ece_by_hand_and_refusals():
    table = [
        {"lo": 0.0, "hi": 0.5, "n": 3, "predicted": 0.2, "observed": 0.5},
        {"lo": 0.5, "hi": 1.0, "n": 1, "predicted": 0.9, "observed": 0.5},
    ]
    assert expected_calibration_error(table) == pytest.approx((3 * 0.3 + 1 * 0.4) / 4)
    assert math.isnan(expected_calibration_error([]))
    with pytest.raises(ValueError, match="^chosen, rejected:"):
        calibration(torch.zeros(3), torch.zeros(4))
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="^n_bins:"):
            calibration(torch.zeros(3), torch.zeros(3), n_bins=bad)


# --- length ------------------------------------------------------------------------------------------


def _texts(lengths):
    return ["x" * int(k) for k in lengths]


def test_length_correlation_matches_numpy():
    g = np.random.default_rng(0)
    lengths = g.integers(1, 30, size=200)
    rewards = 0.1 * lengths + g.normal(size=200)
    r = length_correlation(torch.tensor(rewards, dtype=torch.float32), _texts(lengths))
    assert r == pytest.approx(np.corrcoef(rewards.astype(np.float32), lengths)[0, 1], abs=1e-6)
    assert 0.2 < r < 1.0
    neg = length_correlation(torch.tensor(-rewards), _texts(lengths))
    assert neg == pytest.approx(-r, abs=1e-6)
    assert math.isnan(length_correlation(torch.ones(5), _texts(range(1, 6))))
    assert math.isnan(length_correlation(torch.arange(5.0), _texts([3] * 5)))
    with pytest.raises(ValueError, match="^texts:"):
        length_correlation(torch.zeros(3), ["a", "b"])


def test_length_slope_and_adjustment_remove_a_planted_length_term():
    g = np.random.default_rng(1)
    lengths = g.integers(1, 40, size=300).astype(float)
    base = g.normal(size=300)
    # Make the base reward exactly uncorrelated with length, so the planted slope is the whole story.
    centred = lengths - lengths.mean()
    base -= centred * (centred @ base) / (centred @ centred)
    rewards = torch.tensor(base + 0.25 * lengths, dtype=torch.float64)
    texts = _texts(lengths)
    slope = length_slope(rewards, texts)
    assert slope == pytest.approx(0.25, abs=1e-9)
    assert slope == pytest.approx(np.polyfit(lengths, rewards.numpy(), 1)[0], abs=1e-9)
    assert length_correlation(rewards, texts) > 0.5
    adjusted = length_adjusted(rewards, texts, slope)
    assert abs(length_correlation(adjusted, texts)) < 1e-9
    torch.testing.assert_close(adjusted, torch.tensor(base, dtype=torch.float64))
    assert length_slope(rewards, _texts([4] * 300)) == 0.0
    torch.testing.assert_close(
        length_adjusted(torch.zeros(2), ["ab", "abcd"], 0.5), torch.tensor([-1.0, -2.0])
    )


# --- invariances and the hacking probe ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs():
    return preference_data(40, split="test", seed=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    rm = RewardModel(tiny_gpt(block_size=128))
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    return rm.eval()


def _scorer(rule):
    """A stand-in for pair_rewards that scores each answer by a rule of (example, answer)."""

    def fake_pair_rewards(model, chat, pairs):
        chosen = torch.tensor([rule(p.example, p.chosen) for p in pairs], dtype=torch.float32)
        rejected = torch.tensor([rule(p.example, p.rejected) for p in pairs], dtype=torch.float32)
        return chosen, rejected

    return fake_pair_rewards


@pytest.mark.parametrize("change", INVARIANCES)
def test_invariance_on_a_real_model_reports_flips_in_range(model, pairs, change):
    result = invariance(model, CHAT, pairs, change)
    assert result["change"] == change
    assert result["n"] > 0
    assert 0.0 <= result["flipped"] <= 1.0
    assert 0.0 <= result["accuracy_before"] <= 1.0 and 0.0 <= result["accuracy_after"] <= 1.0
    # Flips bound the change in accuracy.
    assert abs(result["accuracy_after"] - result["accuracy_before"]) <= result["flipped"] + 1e-9
    if change == "trailing_whitespace":
        assert result["n"] == len(pairs)


@pytest.mark.parametrize("change", INVARIANCES)
def test_the_changes_do_not_change_what_the_verifier_says(monkeypatch, pairs, change):
    # A reward that is the verifier's verdict never flips: the changed chosen answers still pass,
    # the restated prompts ask the same problem.
    monkeypatch.setattr(probes, "pair_rewards", _scorer(verify))
    result = invariance(None, CHAT, pairs, change)
    assert result["n"] > 0
    assert result["accuracy_before"] == result["accuracy_after"] == 1.0
    assert result["flipped"] == 0.0


def test_a_length_reward_flips_under_trailing_whitespace(monkeypatch, pairs):
    monkeypatch.setattr(probes, "pair_rewards", _scorer(lambda example, text: len(text)))
    result = invariance(None, CHAT, pairs, "trailing_whitespace")
    assert result["flipped"] > 0.0 and result["accuracy_after"] > result["accuracy_before"]


def test_invariance_leaves_out_pairs_it_cannot_change_and_refuses_unknown_changes(model, pairs):
    lookup = [p for p in preference_data(60, split="test", seed=0, tasks=["lookup"])][:5]
    # A fact lookup's other phrasings may sit in another split: it is never restated.
    result = invariance(model, CHAT, lookup, "restated_prompt")
    assert result["n"] == 0 and math.isnan(result["flipped"])
    with pytest.raises(ValueError, match="^change:"):
        invariance(model, CHAT, pairs, "uppercase")


def test_hacking_pairs_are_short_right_against_long_wrong():
    hp = hacking_pairs(60, tasks=["add", "reverse", "sort_numbers", "count"], seed=0)
    assert len(hp) > 40
    for p in hp:
        assert len(p.rejected) > len(p.chosen) and p.relation == "longer"
        assert verify(p.example, p.chosen) == 1.0 and verify(p.example, p.rejected) == 0.0
        assert p.kind == "extended"
        assert split_of(p.example.task, p.example.problem, p.example.phrasing) == "test"
    assert hacking_pairs(60, tasks=["add"], seed=0) == hacking_pairs(60, tasks=["add"], seed=0)


def test_hacking_probe_catches_a_length_reward_and_not_a_verifier_reward(monkeypatch, model):
    hp = hacking_pairs(30, tasks=["add", "reverse"], seed=1)
    real = hacking_probe(model, CHAT, hp)
    assert real["n"] == len(hp) and 0.0 <= real["prefers_long_wrong"] <= 1.0
    assert real["verifier_prefers_long_wrong"] == 0.0
    monkeypatch.setattr(probes, "pair_rewards", _scorer(lambda example, text: len(text)))
    assert hacking_probe(None, CHAT, hp)["prefers_long_wrong"] == 1.0
    monkeypatch.setattr(probes, "pair_rewards", _scorer(verify))
    assert hacking_probe(None, CHAT, hp)["prefers_long_wrong"] == 0.0
    # The length-adjusted reward of a length-only reward ranks nothing by length any more.
    texts = [p.chosen for p in hp] + [p.rejected for p in hp]
    lengths = torch.tensor([float(len(t)) for t in texts])
    adjusted = length_adjusted(lengths, texts, length_slope(lengths, texts))
    torch.testing.assert_close(adjusted, torch.zeros_like(adjusted))
