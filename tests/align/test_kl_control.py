"""KL controllers: fixed, and the adaptive proportional controller of Ziegler et al."""

import math

import pytest

from llmbook.align.kl_control import AdaptiveKLController, FixedKLController


def test_fixed_never_moves():
    c = FixedKLController(0.1)
    assert c.update(100.0, 64) == 0.1 and c.update(0.0, 64) == 0.1


def test_adaptive_by_hand():
    c = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    # KL 9 is 50 % over target: the error clips at +0.2, so beta grows by 0.2 * 64 / 1000.
    assert c.update(9.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 0.064))
    beta = c.beta
    # KL 5.4 is 10 % under: beta shrinks by 0.1 * 64 / 1000 of itself.
    assert c.update(5.4, 64) == pytest.approx(beta * (1 - 0.1 * 0.064))
    # On target: unchanged.
    beta = c.beta
    assert c.update(6.0, 64) == pytest.approx(beta)


def test_adaptive_steers_toward_the_target():
    # A toy world where the KL is inversely proportional to beta: the controller finds beta = 1.
    c = AdaptiveKLController(0.2, target=5.0, horizon=200)
    for _ in range(400):
        c.update(5.0 / c.beta, 64)
    assert c.beta == pytest.approx(1.0, rel=0.02)


def test_state_round_trip():
    c = AdaptiveKLController(0.3, target=1.0)
    c.update(4.0, 100)
    d = AdaptiveKLController(0.3, target=1.0)
    d.load_state_dict(c.state_dict())
    assert d.beta == c.beta


@pytest.mark.parametrize("beta", [-0.1, math.nan, math.inf])
def test_fixed_refuses(beta):
    with pytest.raises(ValueError, match="beta"):
        FixedKLController(beta)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"beta": 0.0, "target": 1.0}, "beta"),
        ({"beta": 0.1, "target": 0.0}, "target"),
        ({"beta": 0.1, "target": math.nan}, "target"),
        ({"beta": 0.1, "target": 1.0, "horizon": math.inf}, "horizon"),
    ],
)
def test_adaptive_refuses(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AdaptiveKLController(**kwargs)
    with pytest.raises(ValueError, match="kl"):
        AdaptiveKLController(0.1, target=1.0).update(math.nan, 4)
