import math
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

from llmbook.train.schedule import (
    SCHEDULES,
    constant,
    learning_rate,
    warmup_cosine,
    warmup_stable_decay,
)

# W = 10 warmup steps, S = 110 total steps: 100 steps after warmup, easy to work out by hand.
COS = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
WSD = dict(max_lr=1.0, warmup_steps=10, total_steps=110, decay_steps=20, min_lr=0.1)


def test_warmup_is_linear_and_reaches_the_peak_on_its_last_step():
    assert warmup_cosine(0, **COS) == pytest.approx(0.1)  # (0 + 1) / 10
    assert warmup_cosine(4, **COS) == pytest.approx(0.5)
    assert warmup_cosine(9, **COS) == 1.0
    assert warmup_stable_decay(0, **WSD) == pytest.approx(0.1)
    assert constant(0, max_lr=2.0, warmup_steps=4) == pytest.approx(0.5)
    assert constant(3, max_lr=2.0, warmup_steps=4) == 2.0


def test_cosine_at_hand_computed_points():
    assert warmup_cosine(10, **COS) == 1.0  # progress 0: the peak
    assert warmup_cosine(60, **COS) == pytest.approx(0.55)  # midpoint: 0.1 + 0.9 / 2
    # a quarter of the way: 0.1 + 0.45 * (1 + cos(pi / 4))
    assert warmup_cosine(35, **COS) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))
    assert warmup_cosine(110, **COS) == pytest.approx(0.1)
    assert warmup_cosine(500, **COS) == 0.1  # past the end: the floor


def test_wsd_plateau_and_linear_decay():
    # decay starts at S - D = 90; step 90 is the first lowered one, step 109 the last (= min_lr)
    assert all(warmup_stable_decay(s, **WSD) == 1.0 for s in range(9, 90))
    assert warmup_stable_decay(90, **WSD) == pytest.approx(1.0 - 0.9 / 20)
    assert warmup_stable_decay(99, **WSD) == pytest.approx(0.55)  # halfway down: 1 - 0.9 * 10 / 20
    assert warmup_stable_decay(109, **WSD) == pytest.approx(0.1)
    assert warmup_stable_decay(110, **WSD) == 0.1
    assert warmup_stable_decay(109, **{**WSD, "min_lr": 0.0}) == 0.0


def test_wsd_plateau_does_not_depend_on_the_run_length():
    # the property that makes branching decays off one stable run possible
    short = dict(max_lr=1.0, warmup_steps=10, total_steps=60, decay_steps=10)
    long = dict(max_lr=1.0, warmup_steps=10, total_steps=600, decay_steps=100)
    assert [warmup_stable_decay(s, **short) for s in range(50)] == [
        warmup_stable_decay(s, **long) for s in range(50)
    ]


def test_constant():
    assert [constant(s, max_lr=2.0) for s in (0, 1, 1000)] == [2.0, 2.0, 2.0]
    assert constant(1000, max_lr=2.0, warmup_steps=4) == 2.0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_are_continuous_and_settle(schedule):
    kw = dict(schedule=schedule, max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    lrs = [learning_rate(s, **kw) for s in range(130)]
    # no jump larger than one warmup increment (1/W) or one decay increment (0.9/D with D = 20)
    assert max(abs(b - a) for a, b in zip(lrs, lrs[1:])) <= 0.1 + 1e-12
    assert lrs[9] == lrs[10] == 1.0  # warmup meets the peak without a step
    after = lrs[10:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))  # never rises (up to rounding)
    if schedule != "constant":
        assert lrs[109] == pytest.approx(0.1, abs=1e-3) and lrs[110] == pytest.approx(0.1)


def test_learning_rate_dispatches_to_each_schedule():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    for s in (0, 9, 10, 50, 95, 109, 110):
        assert learning_rate(s, schedule="cosine", **kw) == warmup_cosine(s, **kw)
        assert learning_rate(s, schedule="constant", **kw) == constant(
            s, max_lr=1.0, warmup_steps=10
        )
        # decay_fraction is a share of the steps after warmup: 0.2 * 100 = 20
        assert learning_rate(s, schedule="wsd", decay_fraction=0.2, **kw) == (
            warmup_stable_decay(s, decay_steps=20, **kw)
        )


def test_unknown_schedule_names_the_field():
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, schedule="linear", max_lr=1.0, warmup_steps=0, total_steps=10)


def torch_rates(make_scheduler, max_lr, n_steps):
    """The rate of each step of an SGD optimizer driven by a torch scheduler (read before each step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a step-order warning would mean the comparison is off
        scheduler = make_scheduler(optimizer)
        rates = []
        for _ in range(n_steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    return rates


def torch_warmup(optimizer, W):
    """Torch's linear warmup from max_lr / W to max_lr on step W - 1: (s + 1) / W of the peak."""
    return (
        [LinearLR(optimizer, start_factor=1 / W, end_factor=1.0, total_iters=W - 1)]
        if W > 1
        else []
    )


@pytest.mark.parametrize(("W", "S", "min_lr"), [(10, 110, 0.1), (3, 20, 0.0), (0, 50, 0.05)])
def test_cosine_equals_torch_linear_then_cosine_annealing(W, S, min_lr):
    max_lr = 0.3

    def make(opt):
        parts = torch_warmup(opt, W) + [
            CosineAnnealingLR(opt, T_max=S - W, eta_min=min_lr),
            ConstantLR(opt, factor=min_lr / max_lr, total_iters=10**9),  # after S: the floor
        ]
        return SequentialLR(opt, parts, milestones=([W] if W > 1 else []) + [S])

    expected = torch_rates(make, max_lr, S + 20)
    ours = [
        warmup_cosine(s, max_lr=max_lr, warmup_steps=W, total_steps=S, min_lr=min_lr)
        for s in range(S + 20)
    ]
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("W", [0, 4, 10])
def test_constant_equals_torch_linear_warmup(W):
    make = lambda opt: torch_warmup(opt, W)[0] if W > 1 else ConstantLR(opt, factor=1.0)  # noqa: E731
    expected = torch_rates(make, 2.0, 40)
    assert [constant(s, max_lr=2.0, warmup_steps=W) for s in range(40)] == pytest.approx(
        expected, rel=1e-12
    )


def test_wsd_equals_a_table_worked_out_by_hand():
    # W = 2, S = 12, decay_fraction 0.5 of the 10 post-warmup steps: D = 5, decay from step 7.
    # Decay: min + (max - min) (S - 1 - s) / D: (4, 3, 2, 1, 0) / 5 of the way from min to max.
    kw = dict(schedule="wsd", max_lr=1.0, warmup_steps=2, total_steps=12, decay_fraction=0.5)
    table = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0]
    assert [learning_rate(s, **kw) for s in range(14)] == pytest.approx(table, abs=1e-15)
    floor = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.82, 0.64, 0.46, 0.28, 0.1, 0.1, 0.1]
    assert [learning_rate(s, min_lr=0.1, **kw) for s in range(14)] == pytest.approx(floor)


def test_wsd_equals_torch_built_ins_chained():
    # No built-in WSD, but its pieces are: linear warmup, flat, linear decay, flat at the floor.
    W, S, D, max_lr, min_lr = 10, 110, 20, 1.0, 0.1
    first_decayed = min_lr + (max_lr - min_lr) * (D - 1) / D

    def make(opt):
        parts = torch_warmup(opt, W) + [
            ConstantLR(opt, factor=1.0, total_iters=0),
            LinearLR(
                opt,
                start_factor=first_decayed / max_lr,
                end_factor=min_lr / max_lr,
                total_iters=D - 1,
            ),
            ConstantLR(opt, factor=min_lr / max_lr, total_iters=10**9),
        ]
        return SequentialLR(opt, parts, milestones=[W, S - D, S])

    kw = dict(max_lr=max_lr, warmup_steps=W, total_steps=S, decay_steps=D, min_lr=min_lr)
    assert [warmup_stable_decay(s, **kw) for s in range(130)] == pytest.approx(
        torch_rates(make, max_lr, 130), rel=1e-12, abs=1e-15
    )


BAD = [
    ("max_lr", math.nan),
    ("max_lr", math.inf),
    ("max_lr", -1.0),
    ("min_lr", math.nan),
    ("min_lr", -math.inf),
    ("min_lr", 2.0),  # above the peak
    ("step", -1),
    ("step", 1.5),
    ("step", True),
    ("warmup_steps", 2.0),
    ("total_steps", -5),
]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_arguments_are_refused_by_name(schedule, name, value):
    kw = dict(step=3, max_lr=1.0, warmup_steps=2, total_steps=20, min_lr=0.1) | {name: value}
    with pytest.raises(ValueError, match=rf"^{name}: "):
        learning_rate(schedule=schedule, **kw)
    direct = {"constant": constant, "cosine": warmup_cosine, "wsd": warmup_stable_decay}[schedule]
    if schedule == "wsd":
        kw["decay_steps"] = 5
    if schedule == "constant":
        if name in ("total_steps", "min_lr"):
            return  # not parameters of constant()
        kw = {k: v for k, v in kw.items() if k not in ("total_steps", "min_lr")}
    with pytest.raises(ValueError, match=rf"^{name}: "):
        direct(**kw)


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, 1.5])
def test_decay_fraction_must_be_finite_and_in_range(value):
    with pytest.raises(ValueError, match="^decay_fraction: "):
        learning_rate(
            0, schedule="wsd", max_lr=1.0, warmup_steps=0, total_steps=10, decay_fraction=value
        )


@pytest.mark.parametrize("value", [0, 2.5, math.nan, True])
def test_wsd_decay_steps_is_checked(value):
    with pytest.raises(ValueError, match="^decay_steps: "):
        warmup_stable_decay(0, max_lr=1.0, warmup_steps=2, total_steps=10, decay_steps=value)


def test_numpy_integers_are_steps():
    import numpy as np

    assert warmup_cosine(np.int64(5), **COS) == warmup_cosine(5, **COS)
