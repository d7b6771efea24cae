"""The reward signal: scores mixed and penalised, the KL folded into per-token rewards, normalisation."""

import math

import pytest
import torch

from llmbook.align.normalize import RunningMoments
from llmbook.align.reward_signal import (
    SCORE_NORMS,
    normalize_scores,
    sequence_scores,
    token_rewards,
)


def test_sequence_scores_by_hand():
    rm = torch.tensor([0.5, -1.0, 2.0])
    ver = torch.tensor([1.0, 0.0, 1.0])
    fin = torch.tensor([True, True, False])
    out = sequence_scores(rm, ver, fin, rm_weight=2.0, verifier_weight=0.5, missing_end_penalty=3.0)
    torch.testing.assert_close(out, torch.tensor([1.5, -2.0, 1.5]))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"rm_weight": float("nan")}, "rm_weight"),
        ({"verifier_weight": -1.0}, "verifier_weight"),
        ({"missing_end_penalty": float("inf")}, "missing_end_penalty"),
        ({"rm_weight": 0.0, "verifier_weight": 0.0}, "at least one"),
    ],
)
def test_sequence_scores_refuses(kwargs, field):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=field):
        sequence_scores(x, x, torch.ones(2, dtype=torch.bool), **kwargs)


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_everywhere():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -9.0, -9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    scores = torch.tensor([4.0, -2.0])
    rewards, kl = token_rewards(scores, logps, ref, mask, beta=0.1)
    k1 = torch.tensor([[0.5, -1.0, 0.0], [-0.2, 0.0, 0.0]])  # log pi - log ref, padding 0
    torch.testing.assert_close(kl, k1)
    expected = -0.1 * k1
    expected[0, 2] += 4.0
    expected[1, 0] += -2.0
    torch.testing.assert_close(rewards, expected)
    # With beta 0 the rewards are the scores alone, at the last real token.
    rewards, _ = token_rewards(scores, logps, ref, mask, beta=0.0)
    assert rewards.sum().item() == pytest.approx(2.0) and rewards[0, 2] == 4.0


def test_token_rewards_with_k3_is_never_a_bonus():
    g = torch.Generator().manual_seed(0)
    logps, ref = -torch.rand(4, 5, generator=g) * 3, -torch.rand(4, 5, generator=g) * 3
    mask = torch.ones(4, 5, dtype=torch.bool)
    rewards, kl = token_rewards(torch.zeros(4), logps, ref, mask, beta=1.0, estimator="k3")
    assert bool((kl >= 0).all()) and bool((rewards <= 0).all())


def test_token_rewards_refuses():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="beta"):
        token_rewards(torch.zeros(2), x, x, mask, beta=float("nan"))
    with pytest.raises(ValueError, match="scores"):
        token_rewards(torch.zeros(3), x, x, mask, beta=0.1)
    with pytest.raises(ValueError, match="logps"):
        token_rewards(torch.zeros(2), x, torch.zeros(2, 4), mask, beta=0.1)
    mask[1] = False
    with pytest.raises(ValueError, match="at least one token"):
        token_rewards(torch.zeros(2), x, x, mask, beta=0.1)


def test_normalize_scores_modes():
    s = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert torch.equal(normalize_scores(s, "none"), s)
    batch = normalize_scores(s, "batch")
    assert batch.mean().abs() < 1e-6 and batch.std().item() == pytest.approx(1.0, abs=1e-5)
    moments = RunningMoments()
    first = normalize_scores(s, "running", moments)
    # Divided by the running std (this batch's), the mean kept: rising scores still rise.
    torch.testing.assert_close(first, s / moments.std, rtol=1e-5, atol=1e-6)
    second = normalize_scores(s + 10, "running", moments)
    assert second.mean() > first.mean()
    all_seen = torch.cat([s, s + 10])
    assert moments.std == pytest.approx(
        float(all_seen.std()), rel=1e-3
    ) or moments.std == pytest.approx(float(all_seen.std(unbiased=False)), rel=1e-3)
    assert not math.isnan(float(normalize_scores(torch.tensor([3.0]), "batch")[0]))
    with pytest.raises(ValueError, match="mode"):
        normalize_scores(s, "minmax")
    with pytest.raises(ValueError, match="moments"):
        normalize_scores(s, "running")
    assert SCORE_NORMS == ("none", "running", "batch")
