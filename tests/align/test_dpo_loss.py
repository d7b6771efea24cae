"""DPO's losses: hand-worked values, TRL parity (value and gradient), cDPO as a soft-label BCE, refusals."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llmbook.align.dpo_loss import DPO_LOSSES, dpo_loss, dpo_optimum_gap


def test_hand_worked_sigmoid():
    # log-ratios: chosen 0.5 - 0.2 = 0.3... worked per pair with beta = 0.5.
    chosen = torch.tensor([-1.0, -2.0])
    rejected = torch.tensor([-3.0, -1.0])
    ref_c = torch.tensor([-1.5, -2.0])
    ref_r = torch.tensor([-2.0, -2.0])
    # pair 0: (−1 + 1.5) − (−3 + 2) = 0.5 + 1 = 1.5; pair 1: (0) − (1) = −1
    loss, m = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
    expected = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["accuracy"] == 0.5
    assert m["margin"] == pytest.approx(0.5 * (1.5 - 1.0) / 2, rel=1e-6)
    assert m["reward_chosen"] == pytest.approx(0.5 * (0.5 + 0.0) / 2, rel=1e-6)
    assert m["reward_rejected"] == pytest.approx(0.5 * (-1.0 + 1.0) / 2, rel=1e-6)
    assert m["logps_chosen"] == pytest.approx(-1.5)


def test_hand_worked_ipo_and_cdpo():
    args = (torch.tensor([0.0]), torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    loss, _ = dpo_loss(*args, beta=0.25, loss="ipo")  # delta 1, target 1/(2*0.25) = 2
    assert loss.item() == pytest.approx(1.0)
    loss, _ = dpo_loss(*args, beta=1.0, loss="cdpo", label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-1.0)) + 0.1 * math.log1p(math.exp(1.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_direction_and_reference_gets_none():
    c = torch.tensor([-2.0, -3.0], requires_grad=True)
    r = torch.tensor([-2.5, -1.0], requires_grad=True)
    ref_c = torch.tensor([-2.0, -3.0], requires_grad=True)
    ref_r = torch.tensor([-2.0, -2.0], requires_grad=True)
    loss, _ = dpo_loss(c, r, ref_c, ref_r, beta=0.1)
    loss.backward()
    assert bool((c.grad < 0).all()) and bool(
        (r.grad > 0).all()
    )  # descent raises chosen, lowers rejected
    torch.testing.assert_close(c.grad, -r.grad)
    assert ref_c.grad is None and ref_r.grad is None
    # The weight of a pair is sigma(-beta*delta)/N * beta: largest for the pair ranked wrong.
    assert abs(c.grad[1]) > abs(c.grad[0])


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_cdpo_is_bce_with_soft_labels(eps):
    g = torch.Generator().manual_seed(3)
    x = [torch.randn(16, generator=g) * 4 for _ in range(4)]
    a = x[0].clone().requires_grad_(True)
    b = x[0].clone().requires_grad_(True)
    loss, _ = dpo_loss(a, *x[1:], beta=0.3, loss="cdpo", label_smoothing=eps)
    logits = 0.3 * ((b - x[2]) - (x[1] - x[3]))
    ref = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1 - eps))
    torch.testing.assert_close(loss, ref)
    loss.backward(), ref.backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_cdpo_without_smoothing_is_dpo_and_optimum_gap():
    x = [torch.randn(8) for _ in range(4)]
    torch.testing.assert_close(
        dpo_loss(*x, loss="cdpo")[0], dpo_loss(*x, loss="sigmoid")[0], rtol=0, atol=0
    )
    assert dpo_optimum_gap(0.1, 0.0) == math.inf
    gap = dpo_optimum_gap(0.5, 0.2)
    assert gap == pytest.approx(math.log(4) / 0.5)
    # The cDPO loss of one pair is smallest at that gap.
    deltas = torch.linspace(gap - 1, gap + 1, 201)
    zero = torch.zeros_like(deltas)
    per = [
        dpo_loss(d[None], z[None], z[None], z[None], beta=0.5, loss="cdpo", label_smoothing=0.2)[0]
        for d, z in zip(deltas, zero)
    ]
    assert abs(float(deltas[int(torch.stack(per).argmin())]) - gap) < 0.011


def test_ipo_minimum_at_target_gap():
    beta = 0.2
    for lengths in (None, torch.tensor([4.0])):
        kw = {} if lengths is None else {"chosen_lengths": lengths, "rejected_lengths": lengths}
        scale = 1.0 if lengths is None else 4.0
        target = torch.tensor([scale / (2 * beta)])
        z = torch.zeros(1)
        loss, _ = dpo_loss(target, z, z, z, beta=beta, loss="ipo", **kw)
        assert loss.item() == pytest.approx(0.0, abs=1e-10)


# ------------------------------------------------------------------------- parity with TRL


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def trl_dpo_loss(
    per_token, completion_mask, ref_chosen, ref_rejected, *, loss_types, beta, weights=None
):
    """TRL's DPOTrainer._compute_loss on given tensors: the model's per-token log-probs are injected."""
    from trl.trainer.dpo_trainer import DPOTrainer

    B2, T = completion_mask.shape

    def model(**kwargs):
        return SimpleNamespace(
            log_probs=per_token,
            entropy=torch.zeros(B2, T - 1),
            mean_logits=torch.zeros(B2, T - 1),
            is_top1=torch.zeros(B2, T - 1, dtype=torch.bool),
        )

    stub = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=weights or [1.0] * len(loss_types),
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(B2, T, dtype=torch.long),
        "attention_mask": torch.ones(B2, T, dtype=torch.long),
        "completion_mask": completion_mask.long(),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)


def _completion_batch(*, seed, N, T, scale, ref_scale):
    """Chosen rows then rejected rows: completion masks of different lengths (prompt first), the
    per-token log-probs of the completion ids (0 elsewhere), and reference sequence log-probs."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T - 2, (2 * N,), generator=g)
    mask = torch.zeros(2 * N, T, dtype=torch.bool)
    for i, n in enumerate(lengths.tolist()):
        mask[i, T - n :] = True
    per_token = -torch.rand(2 * N, T - 1, generator=g) * scale * mask[:, 1:]
    ref = -torch.rand(2 * N, generator=g) * ref_scale
    return mask, per_token, ref


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_loss_and_gradient_equal_trls(loss_type, beta):
    pytest.importorskip("trl")
    N = 6
    mask, per_token, ref = _completion_batch(seed=11, N=N, T=9, scale=3.0, ref_scale=10.0)
    theirs_x = per_token.clone().requires_grad_(True)
    mine_x = per_token.clone().requires_grad_(True)
    theirs = trl_dpo_loss(theirs_x, mask, ref[:N], ref[N:], loss_types=[loss_type], beta=beta)
    logps = (mine_x * mask[:, 1:]).sum(-1)
    kw = {}
    if loss_type == "ipo":
        counts = mask.sum(-1).float()
        kw = {"chosen_lengths": counts[:N], "rejected_lengths": counts[N:]}
    mine, _ = dpo_loss(logps[:N], logps[N:], ref[:N], ref[N:], beta=beta, loss=loss_type, **kw)
    torch.testing.assert_close(mine, theirs)
    mine.backward(), theirs.backward()
    torch.testing.assert_close(mine_x.grad, theirs_x.grad * mask[:, 1:])


@pytest.mark.parametrize("coef", [0.5, 2.0])
def test_sft_term_equals_trls_sigmoid_plus_sft(coef):
    pytest.importorskip("trl")
    N = 4
    mask, per_token, ref = _completion_batch(seed=5, N=N, T=7, scale=2.0, ref_scale=6.0)
    theirs_x = per_token.clone().requires_grad_(True)
    mine_x = per_token.clone().requires_grad_(True)
    theirs = trl_dpo_loss(
        theirs_x,
        mask,
        ref[:N],
        ref[N:],
        loss_types=["sigmoid", "sft"],
        beta=0.2,
        weights=[1.0, coef],
    )
    logps = (mine_x * mask[:, 1:]).sum(-1)
    counts = mask.sum(-1).float()
    mine, metrics = dpo_loss(
        logps[:N],
        logps[N:],
        ref[:N],
        ref[N:],
        beta=0.2,
        sft_coef=coef,
        chosen_lengths=counts[:N],
        rejected_lengths=counts[N:],
    )
    torch.testing.assert_close(mine, theirs)
    mine.backward(), theirs.backward()
    torch.testing.assert_close(mine_x.grad, theirs_x.grad * mask[:, 1:])
    assert metrics["nll"] == pytest.approx(float(-logps[:N].detach().sum() / counts[:N].sum()))


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"beta": True}, "beta"),
        ({"loss": "hinge"}, "loss"),
        ({"loss": "cdpo", "label_smoothing": 0.5}, "label_smoothing"),
        ({"loss": "cdpo", "label_smoothing": -0.1}, "label_smoothing"),
        ({"loss": "cdpo", "label_smoothing": float("nan")}, "label_smoothing"),
        ({"label_smoothing": 0.1}, "label_smoothing"),
        ({"chosen_lengths": torch.ones(3)}, "chosen_lengths"),
        ({"chosen_lengths": torch.ones(3), "rejected_lengths": torch.ones(3)}, "chosen_lengths"),
        ({"sft_coef": 1.0}, "sft_coef"),
        ({"sft_coef": -1.0}, "sft_coef"),
        ({"sft_coef": float("nan")}, "sft_coef"),
        (
            {"loss": "ipo", "chosen_lengths": torch.zeros(3), "rejected_lengths": torch.ones(3)},
            "chosen_lengths",
        ),
    ],
)
def test_refusals_name_the_argument(kwargs, field):
    x = [torch.zeros(3)] * 4
    with pytest.raises(ValueError, match=f"^{field}"):
        dpo_loss(*x, **kwargs)


def test_shape_refusals():
    with pytest.raises(ValueError, match="logps_chosen"):
        dpo_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="logps_chosen"):
        dpo_loss(*[torch.zeros(0)] * 4)
    with pytest.raises(ValueError, match="logps_chosen"):
        dpo_loss(*[torch.zeros(2, 2)] * 4)
    assert set(DPO_LOSSES) == {"sigmoid", "cdpo", "ipo"}
