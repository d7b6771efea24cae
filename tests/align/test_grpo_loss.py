"""GRPO's advantages and loss: hand-worked values, the three aggregations, TRL parity, the KL term."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from llmbook.align.advantages import group_advantages, zero_variance_groups
from llmbook.align.grpo_loss import AGGREGATIONS, aggregate, grpo_loss
from llmbook.align.kl import categorical_kl, kl_estimate

# ---------------------------------------------------------------- group advantages


def test_group_advantages_by_hand_with_and_without_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # two groups of four
    a = group_advantages(r, 4, scale="none")
    # Group 0: mean 0.5 -> +-0.5; group 1: all right -> all 0.
    assert a.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    s = group_advantages(r, 4, scale="group")
    std = math.sqrt(4 * 0.25 / 3)  # Bessel-corrected std of (1, 0, 0, 1)
    torch.testing.assert_close(
        s[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4), rtol=1e-6, atol=1e-7
    )
    assert s[4:].tolist() == [0.0] * 4  # the zero-variance group: 0 / (0 + eps)
    b = group_advantages(r, 4, scale="batch")
    torch.testing.assert_close(b, a / (float(r.std()) + 1e-4))
    assert zero_variance_groups(r, 4).tolist() == [False, True]


def test_std_scaling_lifts_the_rare_success_of_a_hard_prompt():
    # One success in eight (a hard prompt) and four in eight (a medium one): centred, the success
    # of the hard prompt gets 0.875; scaled by the group's std it gets more than the medium's.
    hard = torch.tensor([1.0] + [0.0] * 7)
    medium = torch.tensor([1.0] * 4 + [0.0] * 4)
    r = torch.cat([hard, medium])
    raw = group_advantages(r, 8, scale="none")
    scaled = group_advantages(r, 8, scale="group")
    assert raw[0] == pytest.approx(0.875) and raw[8] == pytest.approx(0.5)
    assert scaled[0] > scaled[8] > 0
    # Scaling makes each group's advantages unit-variance.
    for g in range(2):
        assert float(scaled[8 * g : 8 * g + 8].std()) == pytest.approx(1.0, abs=1e-3)


def test_group_mean_baseline_sums_to_zero_per_group():
    r = torch.rand(5 * 6, generator=torch.Generator().manual_seed(0))
    a = group_advantages(r, 6, scale="none").view(5, 6)
    torch.testing.assert_close(a.sum(dim=1), torch.zeros(5), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rewards": torch.ones(6), "group_size": 4}, "group_size"),
        ({"rewards": torch.ones(4), "group_size": 0}, "group_size"),
        ({"rewards": torch.ones(4, dtype=torch.long), "group_size": 2}, "rewards"),
        ({"rewards": torch.tensor([1.0, math.nan]), "group_size": 2}, "rewards"),
        ({"rewards": torch.ones(4), "group_size": 2, "scale": "rank"}, "scale"),
        ({"rewards": torch.ones(4), "group_size": 2, "eps": math.nan}, "eps"),
    ],
)
def test_group_advantages_refuse_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(**kwargs)


# ---------------------------------------------------------------- the loss by hand


def test_loss_by_hand_on_two_sequences():
    # Sequence 0 (A = +1): 2 tokens, ratios e^0.3 (clipped at 1.2) and 1. Sequence 1 (A = -1): one
    # token, ratio e^-0.3 (clipped at 0.8, where the clipped term is the larger loss).
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.3, 0.0], [-0.3, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -1.0])
    loss, m = grpo_loss(new, old, adv, mask, aggregation="grpo")
    r = math.exp(0.3)
    tok = [[-min(r, 1.2), -1.0], [max(math.exp(-0.3), 0.8), 0.0]]
    expected = ((tok[0][0] + tok[0][1]) / 2 + tok[1][0] / 1) / 2
    assert loss.item() == pytest.approx(expected)
    assert m["clipfrac_high"] == pytest.approx(1 / 3)
    # ratio e^-0.3 = 0.741 < 0.8 with A < 0: clipped, no gradient there.
    assert m["clipfrac_low"] == pytest.approx(1 / 3)
    loss.backward()
    # Only the unclipped token (sequence 0, token 1) has a gradient: -A * ratio / (L * B) = -1/4.
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, -0.25], [0.0, 0.0]]))
    for agg, denom in (("dapo", 3), ("dr_grpo", 2 * 5)):
        loss, _ = grpo_loss(new, old, adv, mask, aggregation=agg, max_length=5)
        total = tok[0][0] + tok[0][1] + tok[1][0]
        assert loss.item() == pytest.approx(total / denom)


def test_asymmetric_clip_keeps_more_of_the_positive_update():
    old = torch.zeros(1, 1)
    new = torch.tensor([[0.22]], requires_grad=True)  # ratio 1.246: above 1.2, below 1.28
    mask = torch.ones(1, 1, dtype=torch.bool)
    adv = torch.ones(1)
    loss, m = grpo_loss(new, old, adv, mask, clip_low=0.2)
    assert m["clipfrac_high"] == 1.0
    loss.backward()
    assert float(new.grad) == 0.0
    new.grad = None
    loss, m = grpo_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert m["clipfrac_high"] == 0.0
    loss.backward()
    assert float(new.grad) == pytest.approx(-math.exp(0.22))


def test_the_kl_term_is_beta_times_k3_and_its_gradient_appears_once():
    g = torch.Generator().manual_seed(0)
    logps = (-torch.rand(3, 5, generator=g) * 2).requires_grad_(True)
    ref = -torch.rand(3, 5, generator=g) * 2
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    beta = 0.1
    zero_adv = torch.zeros(3)
    loss, m = grpo_loss(logps, logps.detach(), zero_adv, mask, ref_logps=ref, beta=beta)
    k3 = kl_estimate(logps, ref, "k3")
    expected = (
        beta * ((k3 * mask).sum(dim=1) / mask.sum(dim=1)).mean()
    )  # per-sequence mean, then batch mean
    torch.testing.assert_close(loss, expected)
    assert m["kl"] == pytest.approx(float((k3.detach() * mask).sum() / mask.sum()))
    (grad,) = torch.autograd.grad(loss, logps)
    # d k3 / d logp = 1 - pi_ref / pi: once, weighted beta / (L_i * B), nothing more.
    L = mask.sum(dim=1, keepdim=True).float()
    want = beta * (1 - torch.exp(ref - logps.detach())) / (L * 3) * mask
    torch.testing.assert_close(grad, want)


def test_kl_ratio_correction_changes_the_gradient_not_the_value_on_policy():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    args = (logps, logps.detach(), torch.zeros(1), mask)
    plain, _ = grpo_loss(*args, ref_logps=ref, beta=1.0)
    corrected, _ = grpo_loss(*args, ref_logps=ref, beta=1.0, kl_ratio_correction=True)
    torch.testing.assert_close(plain, corrected)  # ratio 1 on-policy
    (g1,) = torch.autograd.grad(plain, logps)
    (g2,) = torch.autograd.grad(corrected, logps)
    assert not torch.allclose(g1, g2)
    # With the ratio, the gradient is k3 + d k3: (log pi - log pi_ref) per token, over L = 2.
    torch.testing.assert_close(g2, (logps.detach() - ref) / 2)


def test_k3_is_nonnegative_and_unbiased_for_the_exact_kl():
    g = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(6, generator=g), torch.randn(6, generator=g)
    exact = float(categorical_kl(p_logits, q_logits))
    p = torch.softmax(p_logits, -1)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = torch.log_softmax(p_logits, -1)[x], torch.log_softmax(q_logits, -1)[x]
    k3 = kl_estimate(logp, logq, "k3")
    assert float(k3.min()) >= 0.0
    assert float(k3.mean()) == pytest.approx(exact, rel=0.03)


def test_padding_may_hold_anything():
    logps = torch.tensor([[-1.0, math.nan], [-0.5, -0.7]], requires_grad=True)
    old = torch.tensor([[-1.1, math.inf], [-0.4, -0.6]])
    ref = torch.tensor([[-1.2, -math.inf], [-0.5, -0.9]])
    mask = torch.tensor([[True, False], [True, True]])
    for agg in AGGREGATIONS:
        loss, m = grpo_loss(
            logps,
            old,
            torch.tensor([1.0, -1.0]),
            mask,
            ref_logps=ref,
            beta=0.1,
            aggregation=agg,
            max_length=4,
        )
        (grad,) = torch.autograd.grad(loss, logps)
        assert math.isfinite(loss.item()) and bool(torch.isfinite(grad).all())
        assert float(grad[0, 1]) == 0.0
        assert all(math.isfinite(v) for v in m.values())


def test_an_empty_row_counts_as_zero_loss():
    logps = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    loss, _ = grpo_loss(logps, logps.detach() - 0.1, torch.tensor([1.0, 1.0]), mask)
    full, _ = grpo_loss(logps[:1], logps[:1].detach() - 0.1, torch.tensor([1.0]), mask[:1])
    torch.testing.assert_close(loss, full / 2)  # the empty row is a sequence of loss 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": -0.1}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"clip_low": 0.0}, "clip_low"),
        ({"clip_low": 1.5}, "clip_low"),
        ({"clip_high": math.inf}, "clip_high"),
        ({"aggregation": "sum"}, "aggregation"),
        ({"aggregation": "dr_grpo"}, "max_length"),
        ({"aggregation": "dapo", "normalizer": 0.0}, "normalizer"),
        ({"beta": 0.1, "ref_logps": None}, "ref_logps"),
    ],
)
def test_loss_refuses_bad_settings(kwargs, match):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        grpo_loss(x, x, torch.zeros(2), torch.ones(2, 3, dtype=torch.bool), **kwargs)


def test_aggregate_length_weights():
    # One long and one short sequence with the same per-token loss 1: the token weights differ.
    per_token = torch.ones(2, 4, requires_grad=True)
    mask = torch.tensor([[True] * 4, [True, False, False, False]])
    weights = {}
    for agg in AGGREGATIONS:
        (g,) = torch.autograd.grad(aggregate(per_token, mask, agg, max_length=4), per_token)
        weights[agg] = (g[0, 0].item(), g[1, 0].item())
    assert weights["grpo"] == pytest.approx((1 / 8, 1 / 2))  # 1/(L_i B): short tokens weigh 4x
    assert weights["dapo"] == pytest.approx((1 / 5, 1 / 5))  # 1/Z
    assert weights["dr_grpo"] == pytest.approx((1 / 8, 1 / 8))  # 1/(B L_max)


# ---------------------------------------------------------------- parity with TRL's GRPOTrainer


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def trl_grpo_loss(
    logps, old, ref, adv, mask, *, loss_type, beta, eps_low, eps_high, max_len, bias_correction
):
    """TRL's GRPOTrainer._compute_loss on given tensors: the per-token log-probs are injected."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    B, N = mask.shape
    stub = SimpleNamespace(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=SimpleNamespace(
            use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1
        ),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _entropy_bonus_enabled=False,
        max_completion_length=max_len,
        aux_loss_enabled=False,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros(B, N), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, N, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    return GRPOTrainer._compute_loss(stub, None, inputs)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("correction", [False, True])
@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_loss_and_gradient_equal_trls(aggregation, correction, clip_high):
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(7)
    B, N = 6, 7
    old = -torch.rand(B, N, generator=g) * 3
    new0 = old + 0.4 * torch.randn(B, N, generator=g)  # ratios well beyond the clip range
    ref = old + 0.3 * torch.randn(B, N, generator=g)
    lengths = torch.tensor([7, 1, 4, 0, 6, 3])  # an empty row too
    mask = torch.arange(N)[None, :] < lengths[:, None]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 3)
    mine_x = new0.clone().requires_grad_(True)
    trl_x = new0.clone().requires_grad_(True)
    mine, _ = grpo_loss(
        mine_x,
        old,
        adv,
        mask,
        ref_logps=ref,
        beta=0.04,
        clip_low=0.2,
        clip_high=clip_high,
        aggregation=aggregation,
        max_length=N,
        kl_ratio_correction=correction,
    )
    theirs = trl_grpo_loss(
        trl_x,
        old,
        ref,
        adv,
        mask,
        loss_type=aggregation,
        beta=0.04,
        eps_low=0.2,
        eps_high=0.2 if clip_high is None else clip_high,
        max_len=N,
        bias_correction=correction,
    )
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
    mine.backward()
    theirs.backward()
    torch.testing.assert_close(mine_x.grad, trl_x.grad * mask, rtol=1e-5, atol=1e-7)
    assert bool((trl_x.grad[~mask] == 0).all())
