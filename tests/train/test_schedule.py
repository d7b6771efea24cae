import math

import pytest

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
