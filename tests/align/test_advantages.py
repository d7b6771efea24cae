"""GAE: a hand-worked row, a plain-Python recursion, the lambda limits, padding that cannot leak,
parity with TorchRL and with TRL's PPO loop, and refusals by name."""

import math

import pytest
import torch

from llmbook.align.advantages import gae


def _batch(seed, lengths, N, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(len(lengths), N, generator=g, dtype=dtype)
    values = torch.randn(len(lengths), N, generator=g, dtype=dtype)
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]  # (B, N) prefix rows
    return rewards, values, mask


LENGTHS = [7, 3, 0, 1, 5]  # a full row, an empty row, a one-token row
GAMMA_LAM = [(1.0, 0.95), (0.99, 0.9), (0.7, 0.3), (1.0, 1.0), (0.5, 0.0), (0.0, 0.8)]


def _python_gae(rewards, values, length, gamma, lam):
    """The recursion on one row's real tokens, with plain floats."""
    adv = [0.0] * length
    next_value, next_adv = 0.0, 0.0  # the episode ends after the last real token
    for t in reversed(range(length)):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv, [a + v for a, v in zip(adv, values[:length])]


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # deltas: 0.6 - 0.5, 0.7 - 0.6, 1 - 0.7 (no value after the last token)
    # A_2 = 0.3, A_1 = 0.1 + 0.5 * 0.3, A_0 = 0.1 + 0.5 * 0.25
    torch.testing.assert_close(advantages, torch.tensor([[0.225, 0.25, 0.3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.725, 0.85, 1.0, 0.0]]))


@pytest.mark.parametrize("gamma, lam", GAMMA_LAM)
def test_gae_matches_a_plain_python_recursion(gamma, lam):
    rewards, values, mask = _batch(0, LENGTHS, 7)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b, length in enumerate(LENGTHS):
        adv, ret = _python_gae(rewards[b].tolist(), values[b].tolist(), length, gamma, lam)
        assert advantages[b, :length].tolist() == pytest.approx(adv, abs=1e-12)
        assert returns[b, :length].tolist() == pytest.approx(ret, abs=1e-12)
        assert advantages[b, length:].abs().sum() == 0 and returns[b, length:].abs().sum() == 0


def test_lambda_zero_is_the_one_step_td_error():
    rewards, values, mask = _batch(1, LENGTHS, 7)
    gamma = 0.9
    advantages, _ = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    zero = torch.zeros(len(LENGTHS), 1, dtype=values.dtype)
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], zero], dim=1)  # 0 past the end
    delta = rewards + gamma * next_values - values
    torch.testing.assert_close(advantages, torch.where(mask, delta, 0.0))


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_lambda_one_is_the_monte_carlo_return_minus_the_value(gamma):
    rewards, values, mask = _batch(2, LENGTHS, 7)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    for b, length in enumerate(LENGTHS):
        for t in range(length):
            ret = sum(gamma ** (s - t) * float(rewards[b, s]) for s in range(t, length))
            assert float(returns[b, t]) == pytest.approx(ret, abs=1e-12)
            assert float(advantages[b, t]) == pytest.approx(ret - float(values[b, t]), abs=1e-12)


def test_padding_rewards_and_values_do_not_change_the_result():
    rewards, values, mask = _batch(3, LENGTHS, 7)
    reference = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    for pad in (0.0, 1e30, -math.inf, math.nan):
        r = torch.where(mask, rewards, pad)
        v = torch.where(mask, values, -pad if not math.isnan(pad) else pad)
        for ours, ref in zip(gae(r, v, mask, gamma=0.95, lam=0.9), reference):
            torch.testing.assert_close(ours, ref)


def test_gae_takes_no_gradient_and_promotes_dtypes():
    rewards, values, mask = _batch(4, LENGTHS, 7, dtype=torch.float32)
    values.requires_grad_(True)
    advantages, returns = gae(rewards, values.double(), mask)
    assert not advantages.requires_grad and not returns.requires_grad
    assert advantages.dtype == returns.dtype == torch.float64
    a32, _ = gae(rewards, values, mask)
    assert a32.dtype == torch.float32
    torch.testing.assert_close(a32.double(), advantages, rtol=1e-5, atol=1e-5)


def test_an_all_empty_batch_gives_zeros():
    rewards, values, mask = _batch(5, [0, 0], 4)
    for out in gae(rewards, values, mask):
        assert out.shape == (2, 4) and not bool(out.any())


# --- parity with TorchRL and TRL ------------------------------------------------------------------


@pytest.mark.parametrize("gamma, lam", GAMMA_LAM)
def test_parity_with_torchrl_generalized_advantage_estimate(gamma, lam):
    pytest.importorskip("torchrl")
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    rewards, values, mask = _batch(6, LENGTHS, 7)
    B, N = rewards.shape
    # TorchRL's tensors are (*B, T, F), time at dim -2; the value after each step is the next
    # column, 0 after the last; the episode is done (and terminated) at each row's last real token.
    next_values = torch.cat([values[:, 1:], torch.zeros(B, 1, dtype=values.dtype)], dim=1)
    lengths = mask.sum(dim=1)
    done = torch.arange(N)[None, :] == (lengths - 1)[:, None]  # (B, N); no True in an empty row
    adv_rl, target_rl = generalized_advantage_estimate(
        gamma,
        lam,
        state_value=values[..., None],
        next_state_value=next_values[..., None],
        reward=rewards[..., None],
        done=done[..., None],
        terminated=done[..., None],
    )
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(advantages[mask], adv_rl[..., 0][mask])
    torch.testing.assert_close(returns[mask], target_rl[..., 0][mask])


@pytest.mark.parametrize("gamma, lam", GAMMA_LAM)
def test_parity_with_trl_ppov2_advantage_loop(gamma, lam):
    rewards, values, mask = _batch(7, LENGTHS, 7)
    # TRL 0.11 PPOv2Trainer.train (trl/trainer/ppov2_trainer.py; not in TRL 1.16): rewards and
    # values are zero-filled after the response, then this loop runs over every column.
    rewards_z, values_z = rewards.masked_fill(~mask, 0), values.masked_fill(~mask, 0)
    lastgaelam, advantages_reversed = 0, []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values_z[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards_z[:, t] + gamma * nextvalues - values_z[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    trl_advantages = torch.stack(advantages_reversed[::-1], dim=1)
    trl_returns = trl_advantages + values_z
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(advantages[mask], trl_advantages[mask])
    torch.testing.assert_close(returns[mask], trl_returns[mask])


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gamma", "lam"])
@pytest.mark.parametrize("value", [-0.1, 1.01, math.nan, math.inf])
def test_gae_refuses_bad_coefficients_by_name(name, value):
    rewards, values, mask = _batch(8, [2], 3)
    with pytest.raises(ValueError, match=f"^{name}: expected a number in \\[0, 1\\]"):
        gae(rewards, values, mask, **{name: value})


def test_gae_refuses_bad_shapes_and_masks_by_name():
    rewards, values, mask = _batch(9, [2, 3], 3)
    with pytest.raises(ValueError, match="^rewards: expected \\(B, N\\)"):
        gae(rewards[0], values[0], mask[0])
    with pytest.raises(ValueError, match="^values: expected shape"):
        gae(rewards, values[:, :2], mask)
    with pytest.raises(ValueError, match="^mask: expected a bool tensor"):
        gae(rewards, values, mask.float())
    with pytest.raises(ValueError, match="^mask: expected a bool tensor"):
        gae(rewards, values, mask[:, :2])
    holes = torch.tensor([[True, False, True], [False, True, True]])  # e.g. left padding
    with pytest.raises(ValueError, match="^mask: expected each row to be True up to"):
        gae(rewards, values, holes)
