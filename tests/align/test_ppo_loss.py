"""The PPO losses: values and gradients by hand on a padded 2x3 batch, padding that cannot leak, the
policy gradient at ratio 1, entropy and explained variance, parity with TRL, refusals by name."""

import math

import numpy as np
import pytest
import torch

from llmbook.align.ppo_loss import (
    entropy_from_logits,
    explained_variance,
    ppo_loss,
    ppo_policy_loss,
    ppo_value_loss,
)

MASK = torch.tensor([[True, True, True], [True, True, False]])  # n = 5 counted tokens
RATIOS = [[1.0, 1.5, 0.5], [1.1, 0.7, 1.0]]
ADVANTAGES = [[1.0, 2.0, 1.0], [-1.0, -2.0, 0.0]]


def _policy_inputs(pad_logp=0.0, pad_adv=0.0):
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]], dtype=torch.float64)
    logps = old + torch.tensor(RATIOS, dtype=torch.float64).log()
    logps[1, 2] = pad_logp
    adv = torch.tensor(ADVANTAGES, dtype=torch.float64)
    adv[1, 2] = pad_adv
    return logps.requires_grad_(True), old, adv


def test_policy_loss_by_hand():
    logps, old, adv = _policy_inputs()
    loss, metrics = ppo_policy_loss(logps, old, adv, MASK, clip=0.2)
    # per token max(-A rho, -A clip(rho, 0.8, 1.2)):
    #   (0,0) rho 1,   A  1: -1                     both terms equal, not clipped
    #   (0,1) rho 1.5, A  2: max(-3, -2.4) = -2.4   clipped: no gain past 1 + eps
    #   (0,2) rho 0.5, A  1: max(-0.5, -0.8) = -0.5 wrong way: not clipped, pulled back
    #   (1,0) rho 1.1, A -1: 1.1                    inside the range
    #   (1,1) rho 0.7, A -2: max(1.4, 1.6) = 1.6    clipped: no gain below 1 - eps
    assert loss.item() == pytest.approx((-1 - 2.4 - 0.5 + 1.1 + 1.6) / 5)
    assert loss.item() == pytest.approx(-0.24)
    loss.backward()
    # d/d logp of -A rho is -A rho where the unclipped term counts, 0 where the clip holds.
    grad = torch.tensor([[-1.0, 0.0, -0.5], [1.1, 0.0, 0.0]], dtype=torch.float64) / 5
    torch.testing.assert_close(logps.grad, grad)
    log_ratios = [0.0, math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.7)]
    assert metrics == pytest.approx(
        {
            "policy_loss": -0.24,
            "clipfrac": 2 / 5,
            "approx_kl": 0.5 * sum(x * x for x in log_ratios) / 5,
            "ratio": (1 + 1.5 + 0.5 + 1.1 + 0.7) / 5,
            "ratio_max": 1.5,
        }
    )


def _value_inputs(pad=0.0):
    values = torch.tensor([[1.0, 1.5, 0.0], [2.0, 0.0, pad]], dtype=torch.float64)
    old = torch.tensor([[0.9, 1.0, 0.5], [2.5, 0.1, pad]], dtype=torch.float64)
    returns = torch.tensor([[1.5, 2.0, 1.0], [1.0, 0.0, pad]], dtype=torch.float64)
    return values.requires_grad_(True), old, returns


def test_value_loss_by_hand():
    values, old, returns = _value_inputs()
    loss, metrics = ppo_value_loss(values, old, returns, MASK, clip=0.2)
    # V_clip = old + clip(V - old, -0.2, 0.2); per token max((V - R)^2, (V_clip - R)^2):
    #   (0,0) V 1.0 -> V_clip 1.0:  0.25                 inside the clip range
    #   (0,1) V 1.5 -> V_clip 1.2:  max(0.25, 0.64)      clipped
    #   (0,2) V 0.0 -> V_clip 0.3:  max(1.0, 0.49)       moved away from R: not clipped
    #   (1,0) V 2.0 -> V_clip 2.3:  max(1.0, 1.69)       clipped
    #   (1,1) V 0.0 -> V_clip 0.0:  0
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.64 + 1.0 + 1.69 + 0.0) / 5)
    assert loss.item() == pytest.approx(0.358)
    loss.backward()
    grad = torch.tensor([[-0.5, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64) / 5  # (V - R)/n
    torch.testing.assert_close(values.grad, grad)
    assert metrics == pytest.approx({"value_loss": 0.358, "value_clipfrac": 2 / 5})


def test_ppo_loss_adds_the_parts_by_hand():
    logps, old, adv = _policy_inputs()
    values, old_values, returns = _value_inputs()
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 1e9]], dtype=torch.float64)
    loss, metrics = ppo_loss(
        logps,
        old,
        adv,
        values,
        old_values,
        returns,
        MASK,
        value_coef=0.1,
        entropy=entropy,
        entropy_coef=0.01,
    )
    assert loss.item() == pytest.approx(-0.24 + 0.1 * 0.358 - 0.01 * 3.0)
    loss.backward()
    torch.testing.assert_close(logps.grad[1, 0], torch.tensor(1.1 / 5, dtype=torch.float64))
    torch.testing.assert_close(values.grad[0, 2], torch.tensor(0.1 * -1.0 / 5, dtype=torch.float64))
    assert set(metrics) == {
        "policy_loss",
        "clipfrac",
        "approx_kl",
        "ratio",
        "ratio_max",
        "value_loss",
        "value_clipfrac",
        "entropy",
        "loss",
    }
    assert all(type(v) is float for v in metrics.values())
    assert metrics["entropy"] == pytest.approx(3.0)
    assert metrics["loss"] == pytest.approx(loss.item())
    # Without entropy the bonus and its metric are absent.
    plain, plain_metrics = ppo_loss(logps, old, adv, values, old_values, returns, MASK)
    assert plain.item() == pytest.approx(-0.24 + 0.1 * 0.358)
    assert "entropy" not in plain_metrics


@pytest.mark.parametrize("pad", [1e4, -1e4, math.inf, -math.inf, math.nan])
def test_padding_changes_neither_losses_nor_gradients(pad):
    ref_logps, old, adv = _policy_inputs()
    ref_values, old_values, returns = _value_inputs()
    ref_loss, ref_metrics = ppo_loss(ref_logps, old, adv, ref_values, old_values, returns, MASK)
    ref_loss.backward()
    logps, old, adv = _policy_inputs(pad_logp=pad, pad_adv=pad)
    old[1, 2] = -pad
    values, old_values, returns = _value_inputs(pad=pad)
    loss, metrics = ppo_loss(logps, old, adv, values, old_values, returns, MASK)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    assert metrics == pytest.approx(ref_metrics)
    torch.testing.assert_close(logps.grad, ref_logps.grad)
    torch.testing.assert_close(values.grad, ref_values.grad)
    assert logps.grad[1, 2] == 0 and values.grad[1, 2] == 0


def test_at_ratio_one_the_gradient_is_the_policy_gradient():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 4
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [2], [4]])
    logps = old.clone().requires_grad_(True)
    loss, metrics = ppo_policy_loss(logps, old, adv, mask, clip=0.2)
    loss.backward()
    n = int(mask.sum())
    torch.testing.assert_close(logps.grad, torch.where(mask, -adv / n, 0.0))
    # The same as the REINFORCE loss -mean(A log pi).
    pg = logps.detach().clone().requires_grad_(True)
    (-(adv * pg)[mask].mean()).backward()
    torch.testing.assert_close(logps.grad, pg.grad)
    assert metrics["clipfrac"] == 0.0 and metrics["approx_kl"] == 0.0 and metrics["ratio"] == 1.0


def test_clipfrac_counts_only_tokens_past_the_clip_in_the_advantage_direction():
    old = torch.zeros(1, 6)
    # ratios 2, 2, 0.5, 0.5, 1.1, 0.9 with advantages +, -, +, -, +, -
    logps = torch.tensor([[2.0, 2.0, 0.5, 0.5, 1.1, 0.9]]).log()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    _, metrics = ppo_policy_loss(logps, old, adv, mask, clip=0.2)
    # clipped: rho 2 with A > 0, rho 0.5 with A < 0; the rest moved the wrong way or stayed inside
    assert metrics["clipfrac"] == pytest.approx(2 / 6)
    _, wide = ppo_policy_loss(logps, old, adv, mask, clip=1.5)  # range [-0.5, 2.5]: nothing clips
    assert wide["clipfrac"] == 0.0


# --- entropy and explained variance ------------------------------------------------------------------


def test_entropy_by_hand_and_against_torch_distributions():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    expected = torch.tensor([[1.5 * math.log(2), math.log(3)]])
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 11, generator=g, dtype=torch.float64) * 3
    theirs = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), theirs)


def test_entropy_is_stable_for_large_and_impossible_logits():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(3, 5, 50, generator=g, dtype=torch.float64)
    # Logits near 1e4 in float32: softmax-then-log would lose the small probabilities; the
    # shifted form matches a float64 computation on the same (rounded) logits.
    big = (base + 1e4).float().requires_grad_(True)
    reference = torch.distributions.Categorical(logits=big.detach().double()).entropy()
    h = entropy_from_logits(big)
    torch.testing.assert_close(h.double(), reference, rtol=1e-6, atol=1e-6)
    h.sum().backward()
    assert bool(torch.isfinite(big.grad).all())
    # A token made impossible contributes 0, not NaN, to the value and the gradient.
    masked = base.clone()
    masked[..., :10] = -math.inf
    masked.requires_grad_(True)
    h = entropy_from_logits(masked)
    torch.testing.assert_close(h, torch.distributions.Categorical(logits=base[..., 10:]).entropy())
    h.sum().backward()
    assert bool(torch.isfinite(masked.grad).all()) and bool((masked.grad[..., :10] == 0).all())
    assert entropy_from_logits(base.bfloat16()).dtype == torch.float32


def test_parity_with_trl_entropy_from_logits():
    utils = pytest.importorskip("trl.trainer.utils")
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, 13, generator=g) * 5
    torch.testing.assert_close(entropy_from_logits(logits), utils.entropy_from_logits(logits))


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # values [1, 1, 1]: residual [0, 1, 2], Var 2/3 against Var(R) 2/3 -> 0
    assert explained_variance(torch.ones(1, 4), returns, mask) == pytest.approx(0.0)
    # values [3, 2, 1]: residual [-2, 0, 2], Var 8/3 -> 1 - 4 = -3
    values = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(-3.0)
    # Returns that do not vary: undefined.
    assert math.isnan(explained_variance(values, torch.ones(1, 4), mask))


def test_explained_variance_against_numpy_and_ignores_padding():
    g = torch.Generator().manual_seed(4)
    returns = torch.randn(4, 8, generator=g)
    values = returns + 0.5 * torch.randn(4, 8, generator=g)
    mask = torch.arange(8)[None, :] < torch.tensor([[8], [3], [0], [6]])
    r, v = returns[mask].double().numpy(), values[mask].double().numpy()
    expected = 1 - np.var(r - v) / np.var(r)
    assert explained_variance(values, returns, mask) == pytest.approx(expected, rel=1e-12)
    padded = torch.where(mask, values, math.nan), torch.where(mask, returns, math.inf)
    assert explained_variance(*padded, mask) == pytest.approx(expected, rel=1e-12)


# --- parity with TRL's PPO loss ----------------------------------------------------------------------
# TRL 1.16 (installed) ships no PPO trainer (no trl.trainer.ppo_trainer, no trl.experimental.ppo), so
# the reference is the loss computation in the train loop of TRL 0.11's PPOv2Trainer
# (trl/trainer/ppov2_trainer.py), line for line, with its masked_mean from trl/core.py. Its
# approxkl there is an unmasked mean; the masked 0.5 * masked_mean((logprobs - old_logprobs) ** 2)
# is TRL 0.11 PPOTrainer.loss (trl/trainer/ppo_trainer.py). PPOv2Trainer's value mask
# (~padding_mask_p1) counts one position past the response; here both losses get the same mask.


def _trl_masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def _trl_ppov2_loss(
    new_logprobs, mb_logprobs, mb_advantage, vpred, mb_values, mb_return, mask, args
):
    vpredclipped = torch.clamp(
        vpred, mb_values - args["cliprange_value"], mb_values + args["cliprange_value"]
    )
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * _trl_masked_mean(vf_loss_max, mask)
    vf_clipfrac = _trl_masked_mean((vf_losses2 > vf_losses1).float(), mask)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(
        ratio, 1.0 - args["cliprange"], 1.0 + args["cliprange"]
    )
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = _trl_masked_mean(pg_loss_max, mask)
    loss = pg_loss + args["vf_coef"] * vf_loss
    pg_clipfrac = _trl_masked_mean((pg_losses2 > pg_losses).float(), mask)
    approxkl = 0.5 * _trl_masked_mean(logprobs_diff**2, mask)
    return loss, {
        "pg_loss": pg_loss,
        "vf_loss": vf_loss,
        "pg_clipfrac": pg_clipfrac,
        "vf_clipfrac": vf_clipfrac,
        "approxkl": approxkl,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_trl_0_11_ppov2_loss(seed):
    g = torch.Generator().manual_seed(seed)
    B, N = 4, 9
    old = -torch.rand(B, N, generator=g, dtype=torch.float64) * 5
    logps = old + 0.3 * torch.randn(B, N, generator=g, dtype=torch.float64)  # many ratios clip
    adv = torch.randn(B, N, generator=g, dtype=torch.float64)
    old_values = torch.randn(B, N, generator=g, dtype=torch.float64)
    values = old_values + 0.3 * torch.randn(B, N, generator=g, dtype=torch.float64)
    returns = torch.randn(B, N, generator=g, dtype=torch.float64)
    mask = torch.arange(N)[None, :] < torch.tensor([[9], [4], [1], [7]])
    args = {"cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1}

    a = logps.clone().requires_grad_(True), values.clone().requires_grad_(True)
    b = logps.clone().requires_grad_(True), values.clone().requires_grad_(True)
    ours, metrics = ppo_loss(a[0], old, adv, a[1], old_values, returns, mask, value_coef=0.1)
    theirs, stats = _trl_ppov2_loss(b[0], old, adv, b[1], old_values, returns, mask.double(), args)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(a[0].grad, b[0].grad)
    torch.testing.assert_close(a[1].grad, b[1].grad)
    assert 0 < metrics["clipfrac"] < 1 and 0 < metrics["value_clipfrac"] < 1
    stats = {k: float(v.detach()) for k, v in stats.items()}
    assert metrics["policy_loss"] == pytest.approx(stats["pg_loss"])
    assert metrics["value_loss"] == pytest.approx(stats["vf_loss"])
    assert metrics["clipfrac"] == pytest.approx(stats["pg_clipfrac"])
    assert metrics["value_clipfrac"] == pytest.approx(stats["vf_clipfrac"])
    assert metrics["approx_kl"] == pytest.approx(stats["approxkl"])


# --- refusals ----------------------------------------------------------------------------------------


def _args():
    x = torch.zeros(2, 3)
    return (x, x, x, x, x, x, torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("value", [0.0, -0.1, math.nan, math.inf])
def test_clips_refuse_bad_values_by_name(value):
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="^clip: expected a finite number > 0"):
        ppo_policy_loss(x, x, x, mask, clip=value)
    with pytest.raises(ValueError, match="^clip: expected a finite number > 0"):
        ppo_value_loss(x, x, x, mask, clip=value)


@pytest.mark.parametrize("name", ["value_coef", "entropy_coef"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_coefficients_refuse_bad_values_by_name(name, value):
    with pytest.raises(ValueError, match=f"^{name}: expected a finite number >= 0"):
        ppo_loss(*_args(), entropy=torch.zeros(2, 3), **{name: value})


def test_shapes_and_masks_are_refused_by_name():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="^advantages: expected shape \\(2, 3\\)"):
        ppo_policy_loss(x, x, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="^returns: expected shape"):
        ppo_value_loss(x, x, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="^mask: expected a bool tensor"):
        ppo_policy_loss(x, x, x, mask.float())
    with pytest.raises(ValueError, match="^mask: no position is True"):
        ppo_policy_loss(x, x, x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="^entropy: required when entropy_coef > 0"):
        ppo_loss(*_args(), entropy_coef=0.01)
    with pytest.raises(ValueError, match="^entropy: expected shape"):
        ppo_loss(*_args(), entropy=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="^logits: expected a float tensor"):
        entropy_from_logits(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="^values: expected shape"):
        explained_variance(torch.zeros(2), x, mask)
