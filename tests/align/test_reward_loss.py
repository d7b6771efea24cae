"""The reward-model losses: values and gradients by hand, refusals by name, and parity with TRL."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llmbook.align.reward_loss import (
    REWARD_LOSSES,
    bradley_terry_loss,
    margin_ranking_loss,
    reward_centering,
)


def _leaves(chosen, rejected):
    return (
        torch.tensor(chosen, dtype=torch.float64, requires_grad=True),
        torch.tensor(rejected, dtype=torch.float64, requires_grad=True),
    )


def test_bradley_terry_by_hand():
    # Gaps r_c - r_r = [1, -1]: the first pair ranked right, the second wrong by as much.
    rc, rr = _leaves([2.0, 0.0], [1.0, 1.0])
    loss, metrics = bradley_terry_loss(rc, rr)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.813262, abs=1e-6)
    loss.backward()
    # d loss / d r_c = -sigmoid(-(r_c - r_r)) / N, and the opposite for r_r.
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    grad = torch.tensor([-s(-1.0) / 2, -s(1.0) / 2], dtype=torch.float64)
    torch.testing.assert_close(rc.grad, grad)
    torch.testing.assert_close(rr.grad, -grad)
    # The badly ranked pair pulls harder (0.731 against 0.269).
    assert abs(rc.grad[1]) > abs(rc.grad[0])
    assert metrics == pytest.approx(
        {"loss": expected, "accuracy": 0.5, "margin": 0.0, "chosen": 1.0, "rejected": 1.0}
    )


def test_bradley_terry_with_a_per_pair_margin_by_hand():
    rc, rr = _leaves([2.0, 0.0, 1.0], [1.0, 1.0, -2.0])
    m = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)
    loss, metrics = bradley_terry_loss(rc, rr, margin=m)
    z = [1.0 - 0.5, -1.0 - 0.0, 3.0 - 2.0]  # gap minus margin
    expected = sum(math.log(1 + math.exp(-x)) for x in z) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    grad = torch.tensor([-1 / (1 + math.exp(x)) / 3 for x in z], dtype=torch.float64)
    torch.testing.assert_close(rc.grad, grad)
    torch.testing.assert_close(rr.grad, -grad)
    # The metrics describe the rewards, not the margin-shifted gaps.
    assert metrics["margin"] == pytest.approx((1.0 - 1.0 + 3.0) / 3)
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_a_margin_raises_the_loss_and_a_scalar_margin_is_a_constant_per_pair_one():
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(6, generator=g), torch.randn(6, generator=g)
    plain, _ = bradley_terry_loss(rc, rr)
    scalar, _ = bradley_terry_loss(rc, rr, margin=0.7)
    per_pair, _ = bradley_terry_loss(rc, rr, margin=torch.full((6,), 0.7))
    torch.testing.assert_close(scalar, per_pair)
    assert scalar > plain
    torch.testing.assert_close(bradley_terry_loss(rc, rr, margin=0.0)[0], plain)


def test_margin_ranking_by_hand():
    # Gaps [1.5, -1, 2] against margin 1: only the second pair is inside the margin.
    rc, rr = _leaves([2.5, 0.0, 3.0], [1.0, 1.0, 1.0])
    loss, metrics = margin_ranking_loss(rc, rr, margin=1.0)
    assert loss.item() == pytest.approx((0 + 2 + 0) / 3)
    loss.backward()
    torch.testing.assert_close(rc.grad, torch.tensor([0.0, -1 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(rr.grad, torch.tensor([0.0, 1 / 3, 0.0], dtype=torch.float64))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    # Margin 0: a pair ranked right costs nothing, a wrong one its gap.
    zero, _ = margin_ranking_loss(rc.detach(), rr.detach(), margin=0.0)
    assert float(zero) == pytest.approx(1 / 3)
    # The hinge's gradient is constant however wrong a pair is; Bradley-Terry's saturates at 1/N.
    far, _ = _leaves([-50.0], [50.0])
    margin_ranking_loss(far, torch.zeros(1, dtype=torch.float64) + 50.0, margin=1.0)[0].backward()
    assert float(far.grad) == pytest.approx(-1.0)


def test_centering_by_hand():
    rc, rr = _leaves([2.0, 0.0], [1.0, 1.0])
    term = reward_centering(rc, rr, 0.1)
    assert term.item() == pytest.approx(0.1 * (3.0**2 + 1.0**2) / 2)
    term.backward()
    # d/dr_c = d/dr_r = coef * 2 (r_c + r_r) / N
    torch.testing.assert_close(rc.grad, torch.tensor([0.1 * 2 * 3 / 2, 0.1 * 2 * 1 / 2]).double())
    torch.testing.assert_close(rr.grad, rc.grad)
    # In the Bradley-Terry loss it is added to the pairwise term.
    rc2, rr2 = _leaves([2.0, 0.0], [1.0, 1.0])
    loss, metrics = bradley_terry_loss(rc2, rr2, center_coef=0.1)
    assert loss.item() == pytest.approx(0.813262 + 0.5, abs=1e-6)
    assert metrics["loss"] == pytest.approx(loss.item())
    loss.backward()
    bt = torch.tensor([-1 / (1 + math.e) / 2, -1 / (1 + math.exp(-1)) / 2], dtype=torch.float64)
    torch.testing.assert_close(rc2.grad, bt + torch.tensor([0.3, 0.1], dtype=torch.float64))
    torch.testing.assert_close(rr2.grad, -bt + torch.tensor([0.3, 0.1], dtype=torch.float64))


def test_pairwise_losses_ignore_a_common_shift_and_centering_does_not():
    g = torch.Generator().manual_seed(1)
    rc, rr = torch.randn(8, generator=g), torch.randn(8, generator=g)
    for fn in (bradley_terry_loss, margin_ranking_loss):
        torch.testing.assert_close(fn(rc + 5.0, rr + 5.0)[0], fn(rc, rr)[0])
    a, _ = bradley_terry_loss(rc, rr, center_coef=0.01)
    b, _ = bradley_terry_loss(rc + 5.0, rr + 5.0, center_coef=0.01)
    assert b > a
    assert float(reward_centering(rc, rr, 0.0)) == 0.0


def test_bradley_terry_stays_finite_for_huge_gaps():
    rc, rr = _leaves([1000.0, -1000.0], [-1000.0, 1000.0])
    loss, metrics = bradley_terry_loss(rc.float(), rr.float())
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(2000.0 / 2)
    assert metrics["accuracy"] == 0.5


def test_a_tie_counts_as_wrong():
    _, metrics = bradley_terry_loss(torch.zeros(4), torch.zeros(4))
    assert metrics["accuracy"] == 0.0
    assert metrics["loss"] == pytest.approx(math.log(2))


def test_metrics_are_detached_floats_and_loss_is_a_scalar():
    rc, rr = _leaves([0.3, 0.1], [0.2, 0.4])
    for loss, metrics in (bradley_terry_loss(rc, rr), margin_ranking_loss(rc, rr)):
        assert loss.dim() == 0 and loss.requires_grad
        assert set(metrics) == {"loss", "accuracy", "margin", "chosen", "rejected"}
        assert all(type(v) is float for v in metrics.values())
    assert REWARD_LOSSES == ("bradley_terry", "margin_ranking")


BAD_SHAPES = [
    (torch.zeros(2), torch.zeros(3)),
    (torch.zeros(2, 1), torch.zeros(2, 1)),
    (torch.zeros(0), torch.zeros(0)),
    (torch.zeros(()), torch.zeros(())),
]


@pytest.mark.parametrize("chosen, rejected", BAD_SHAPES)
def test_every_loss_refuses_bad_shapes_by_name(chosen, rejected):
    with pytest.raises(ValueError, match="^chosen, rejected:"):
        bradley_terry_loss(chosen, rejected)
    with pytest.raises(ValueError, match="^chosen, rejected:"):
        margin_ranking_loss(chosen, rejected)
    with pytest.raises(ValueError, match="^chosen, rejected:"):
        reward_centering(chosen, rejected, 0.1)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1])
def test_coefficients_and_margins_refuse_bad_values_by_name(value):
    r = torch.zeros(2)
    with pytest.raises(ValueError, match="^center_coef:"):
        bradley_terry_loss(r, r, center_coef=value)
    with pytest.raises(ValueError, match="^coef:"):
        reward_centering(r, r, value)
    with pytest.raises(ValueError, match="^margin:"):
        margin_ranking_loss(r, r, margin=value)


@pytest.mark.parametrize(
    "margin", [float("nan"), float("inf"), torch.zeros(3, 1), torch.zeros(2), torch.zeros(3, 3)]
)
def test_bradley_terry_refuses_a_bad_margin_by_name(margin):
    with pytest.raises(ValueError, match="^margin:"):
        bradley_terry_loss(torch.zeros(3), torch.ones(3), margin=margin)


# --- parity with TRL's RewardTrainer.compute_loss --------------------------------------------------


def _trl_loss(chosen, rejected, *, margin=None, center_coef=None):
    """TRL's RewardTrainer.compute_loss called unbound, on a stub trainer and a stub model."""
    trl = pytest.importorskip("trl")
    from trl.trainer.reward_trainer import RewardTrainer

    identity = lambda x: x  # noqa: E731
    stub_self = SimpleNamespace(
        model=SimpleNamespace(training=False),
        args=SimpleNamespace(center_rewards_coefficient=center_coef),
        accelerator=SimpleNamespace(gather=identity, gather_for_metrics=identity),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    logits = torch.cat([chosen, rejected])[:, None]  # (2N, 1): chosen rows first, as TRL batches

    def stub_model(**inputs):
        return SimpleNamespace(logits=logits)

    n = chosen.numel()
    inputs = {
        "input_ids": torch.zeros(2 * n, 3, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, 3, dtype=torch.long),
    }
    if margin is not None:
        inputs["margin"] = margin
    assert trl.__version__
    loss = RewardTrainer.compute_loss(stub_self, stub_model, inputs)
    return loss, stub_self._metrics["eval"]


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center_coef", [None, 0.01])
def test_parity_with_trl_reward_trainer(with_margin, center_coef):
    g = torch.Generator().manual_seed(3)
    chosen = torch.randn(16, generator=g, dtype=torch.float64) * 2
    rejected = torch.randn(16, generator=g, dtype=torch.float64) * 2
    margin = torch.rand(16, generator=g, dtype=torch.float64) if with_margin else None
    a = chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)
    b = chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)
    ours, metrics = bradley_terry_loss(*a, margin=margin, center_coef=center_coef or 0.0)
    theirs, trl_metrics = _trl_loss(*b, margin=margin, center_coef=center_coef)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(a[0].grad, b[0].grad)
    torch.testing.assert_close(a[1].grad, b[1].grad)
    assert metrics["accuracy"] == pytest.approx(trl_metrics["accuracy"][0])
    assert metrics["margin"] == pytest.approx(trl_metrics["margin"][0])


def test_parity_with_trl_on_the_hand_worked_example():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    theirs, _ = _trl_loss(chosen, rejected)
    assert float(theirs) == pytest.approx(0.813262, abs=1e-6)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected)[0], theirs)
    # TRL's formula is -logsigmoid(r_c - r_r - margin) + coef * mean((r_c + r_r)^2)
    direct = -F.logsigmoid(chosen - rejected - 0.5).mean() + 0.1 * ((chosen + rejected) ** 2).mean()
    torch.testing.assert_close(
        bradley_terry_loss(chosen, rejected, margin=0.5, center_coef=0.1)[0], direct
    )
