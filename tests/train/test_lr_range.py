import math

import pytest
import torch

from llmbook.train.lr_range import LRRangeResult, lr_range_test
from tests.conftest import tiny_model

TEXT = torch.tensor(  # about 4 KB of bytes
    list(b"Now is the winter of our discontent made glorious summer. " * 70)
)


def quick(model, **kw):
    kw = {"min_lr": 1e-5, "max_lr": 1.0, "steps": 40, "batch_size": 4, **kw}
    return lr_range_test(model, TEXT, **kw)


def test_rates_grow_geometrically_and_losses_are_finite():
    r = quick(tiny_model())
    assert isinstance(r, LRRangeResult)
    assert r.lrs[0] == pytest.approx(1e-5)
    factor = (1.0 / 1e-5) ** (1 / 39)
    for a, b in zip(r.lrs, r.lrs[1:]):
        assert b / a == pytest.approx(factor, rel=1e-9)
    assert len(r.lrs) == len(r.losses) == len(r.smoothed) >= 10
    assert all(math.isfinite(v) for v in r.losses + r.smoothed)
    if not r.stopped_early:
        assert len(r.lrs) == 40 and r.lrs[-1] == pytest.approx(1.0)


def test_suggestion_lies_in_the_range_before_the_edge():
    r = quick(tiny_model())
    assert 1e-5 <= r.suggested_lr <= r.edge_lr <= r.min_loss_lr <= 1.0
    assert {r.suggested_lr, r.edge_lr, r.min_loss_lr} <= set(r.lrs)
    assert r.smoothed[r.lrs.index(r.min_loss_lr)] == min(r.smoothed)
    edge = r.lrs.index(r.edge_lr)
    assert r.smoothed[edge] < r.smoothed[0]  # the loss did fall before the edge
    assert r.smoothed[r.lrs.index(r.suggested_lr)] < r.smoothed[0]


def test_suggestion_rule_on_a_made_up_curve():
    # flat, a fall steepest between 1e-3 and 1e-2, a spike at 3e-2 (the edge), then a deeper minimum
    from llmbook.train.lr_range import _suggest

    lrs = [10.0 ** (k / 2) for k in range(-10, 1)]  # 1e-5 ... 1, half a decade apart
    smoothed = [5.0, 5.0, 4.9, 4.6, 4.0, 3.0, 2.9, 3.2, 2.5, 2.2, 2.4]
    suggested, edge, minimum = _suggest(lrs, smoothed)
    assert suggested == lrs[4]  # central difference 4.6 -> 3.0 is the steepest before the edge
    assert edge == lrs[6]  # the lowest point before the rise to 3.2
    assert minimum == lrs[9]


def test_smoothing_is_a_bias_corrected_moving_average():
    r = quick(tiny_model(), smoothing=0.3)
    average = 0.0
    for i, (loss, smooth) in enumerate(zip(r.losses, r.smoothed)):
        average = 0.7 * average + 0.3 * loss
        assert smooth == pytest.approx(average / (1 - 0.7 ** (i + 1)))
    assert r.smoothed[0] == pytest.approx(r.losses[0])  # no bias towards the zero start
    assert quick(tiny_model(), smoothing=1.0).smoothed == quick(tiny_model(), smoothing=1.0).losses


def test_stops_when_the_loss_diverges():
    r = quick(tiny_model(), max_lr=100.0, steps=60, diverge_factor=1.5)
    assert r.stopped_early and len(r.lrs) < 60
    assert r.smoothed[-1] > 1.5 * min(r.smoothed)


@pytest.mark.parametrize("training", [True, False])
def test_weights_mode_grads_and_global_rng_are_restored(training):
    model = tiny_model()
    model.train(training)
    model.blocks[0].eval()  # a submodule in a different mode must keep it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    quick(model)
    assert torch.equal(torch.rand(3), expected_draw)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model.training is training and model.blocks[0].training is False
    assert all(p.grad is None for p in model.parameters())
    assert model.lm_head.weight is model.tok_emb.weight  # still tied: restored in place


def test_same_seed_same_curve_and_the_seed_matters():
    a, b = quick(tiny_model()), quick(tiny_model())
    assert a.losses == b.losses
    assert quick(tiny_model(), seed=1).losses != a.losses


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_lr"):
        quick(tiny_model(), min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        quick(tiny_model(), steps=1)
    with pytest.raises(ValueError, match="smoothing"):
        quick(tiny_model(), smoothing=0.0)
    with pytest.raises(ValueError, match="diverge_factor"):
        quick(tiny_model(), diverge_factor=1.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("grad_clip", math.nan),  # nan > 0 is False: clipping was silently off
        ("grad_clip", math.inf),
        ("grad_clip", -1.0),
        ("max_lr", math.inf),  # the last rates were inf
        ("min_lr", math.nan),
        ("smoothing", math.nan),
        ("diverge_factor", math.inf),  # never stops
        ("steps", 10.0),
        ("batch_size", 0),
        ("block_size", 0),
        ("seed", 1.5),
        ("weight_decay", math.nan),
        ("weight_decay", math.inf),
        ("betas", (0.9, math.inf)),
    ],
)
def test_bad_arguments_are_refused_by_name_before_any_step(name, value):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"^{name}: "):
        quick(model, **{name: value})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
