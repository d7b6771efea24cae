"""KL estimators: hand-worked values, exact and Monte Carlo expectations against the exact KL, signs,
variances, gradients and refusals."""

import math

import pytest
import torch

from llmbook.align.kl import KL_ESTIMATORS, categorical_kl, kl_estimate

# Two outcomes, p = (1/2, 1/2) the policy, q = (1/4, 3/4) the reference.
P, Q = (
    torch.tensor([0.5, 0.5], dtype=torch.float64),
    torch.tensor([0.25, 0.75], dtype=torch.float64),
)
KL_PQ = 0.5 * math.log(4 / 3)  # 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75)


def test_estimators_by_hand():
    logps, ref_logps = P.log(), Q.log()
    # log-ratios l = log(q/p) = (log 1/2, log 3/2); r = (1/2, 3/2)
    l1, l2 = math.log(0.5), math.log(1.5)
    k1 = kl_estimate(logps, ref_logps, "k1")
    k2 = kl_estimate(logps, ref_logps, "k2")
    k3 = kl_estimate(logps, ref_logps, "k3")
    torch.testing.assert_close(k1, torch.tensor([-l1, -l2], dtype=torch.float64))
    torch.testing.assert_close(k2, torch.tensor([l1**2 / 2, l2**2 / 2], dtype=torch.float64))
    torch.testing.assert_close(k3, torch.tensor([-0.5 - l1, 0.5 - l2], dtype=torch.float64))
    assert k1.tolist() == pytest.approx([0.693147, -0.405465], abs=1e-6)
    assert k2.tolist() == pytest.approx([0.240227, 0.082201], abs=1e-6)
    assert k3.tolist() == pytest.approx([0.193147, 0.094535], abs=1e-6)
    # Weighted by p, k1 and k3 give the KL exactly and k2 overshoots.
    assert float((P * k1).sum()) == pytest.approx(KL_PQ, abs=1e-15)
    assert float((P * k3).sum()) == pytest.approx(KL_PQ, abs=1e-15)
    assert float((P * k2).sum()) == pytest.approx(0.161214, abs=1e-6)
    assert KL_PQ == pytest.approx(0.143841, abs=1e-6)
    assert kl_estimate(logps, ref_logps).tolist() == k1.tolist()  # k1 is the default


def test_categorical_kl_by_hand_and_against_torch_distributions():
    assert float(categorical_kl(P.log(), Q.log())) == pytest.approx(KL_PQ, abs=1e-15)
    g = torch.Generator().manual_seed(0)
    p_logits = torch.randn(3, 4, 7, generator=g, dtype=torch.float64)
    q_logits = torch.randn(3, 4, 7, generator=g, dtype=torch.float64) * 2
    ours = categorical_kl(p_logits, q_logits)
    theirs = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=p_logits),
        torch.distributions.Categorical(logits=q_logits),
    )
    assert ours.shape == (3, 4)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(categorical_kl(p_logits, p_logits + 3.0), torch.zeros(3, 4).double())


def test_categorical_kl_with_impossible_outcomes():
    p_logits = torch.tensor([0.0, 0.0, -math.inf], requires_grad=True)
    q_logits = torch.tensor([0.0, 1.0, 2.0])
    kl = categorical_kl(p_logits, q_logits)
    lq = torch.log_softmax(q_logits, -1)
    expected = 0.5 * (math.log(0.5) - lq[0]) + 0.5 * (math.log(0.5) - lq[1])
    torch.testing.assert_close(kl, expected)  # the impossible outcome adds 0, not NaN
    kl.backward()
    assert bool(torch.isfinite(p_logits.grad).all())
    # Mass where q has none: infinite divergence.
    assert float(categorical_kl(torch.zeros(2), torch.tensor([0.0, -math.inf]))) == math.inf


# --- expectations under the policy --------------------------------------------------------------------


def _pairs():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, generator=g, dtype=torch.float64)
    return {
        "near": (base, base + 0.1 * torch.randn(5, generator=g, dtype=torch.float64)),
        "mid": (base, torch.randn(5, generator=g, dtype=torch.float64)),
        "far": (3 * base, -3 * base),
    }


def _exact_moments(p_logits, q_logits, kind):
    """Mean and variance of an estimator under p, summed over all 5 outcomes."""
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    k = kl_estimate(lp, lq, kind)
    mean = float((lp.exp() * k).sum())
    return mean, float((lp.exp() * (k - mean) ** 2).sum())


@pytest.mark.parametrize("name", ["near", "mid", "far"])
def test_k1_and_k3_are_unbiased_exactly(name):
    p_logits, q_logits = _pairs()[name]
    kl = float(categorical_kl(p_logits, q_logits))
    for kind in ("k1", "k3"):
        assert _exact_moments(p_logits, q_logits, kind)[0] == pytest.approx(kl, rel=1e-12)


@pytest.mark.parametrize("name", ["near", "mid", "far"])
def test_monte_carlo_means_against_the_exact_kl(name):
    p_logits, q_logits = _pairs()[name]
    kl = float(categorical_kl(p_logits, q_logits))
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    n = 200_000
    g = torch.Generator().manual_seed(1)
    x = torch.multinomial(lp.exp(), n, replacement=True, generator=g)  # tokens sampled from pi
    samples = {kind: kl_estimate(lp[x], lq[x], kind) for kind in KL_ESTIMATORS}
    for kind in ("k1", "k3"):
        s = samples[kind]
        se = float(s.std()) / math.sqrt(n)
        assert abs(float(s.mean()) - kl) < 4 * se, (kind, float(s.mean()), kl, se)
    # k2 and k3 are never negative; k1 is, for some tokens.
    assert bool((samples["k2"] >= 0).all()) and bool((samples["k3"] >= 0).all())
    assert bool((samples["k1"] < 0).any())
    k2 = samples["k2"]
    se2 = float(k2.std()) / math.sqrt(n)
    if name == "near":
        # Close distributions: k2's bias is third order, below 3% of the KL here.
        assert abs(_exact_moments(p_logits, q_logits, "k2")[0] - kl) < 0.03 * kl
    else:
        # Far apart, the bias dwarfs the Monte Carlo error.
        assert abs(float(k2.mean()) - kl) > 50 * se2
        assert _exact_moments(p_logits, q_logits, "k2")[0] > 1.4 * kl


def test_k3_has_lower_variance_than_k1_only_when_the_policies_are_close():
    pairs = _pairs()
    var = {
        name: {kind: _exact_moments(*pairs[name], kind)[1] for kind in ("k1", "k3")}
        for name in pairs
    }
    assert var["near"]["k3"] < 0.01 * var["near"]["k1"]
    assert var["mid"]["k3"] < var["mid"]["k1"]
    # Far apart, r = q/p is huge on tokens p rarely samples: k3's tail is heavier than k1's.
    assert var["far"]["k3"] > var["far"]["k1"]


def test_k2_and_k3_are_never_negative_over_a_wide_range_of_log_ratios():
    log_ratio = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    logps = torch.zeros_like(log_ratio)
    for kind in ("k2", "k3"):
        assert bool((kl_estimate(logps, log_ratio, kind) >= 0).all())
    assert float(kl_estimate(torch.zeros(1), torch.zeros(1), "k3")) == 0.0


def test_k3_is_accurate_for_tiny_log_ratios():
    log_ratio = torch.tensor([1e-9, -1e-9, 1e-6], dtype=torch.float64)
    k3 = kl_estimate(torch.zeros(3, dtype=torch.float64), log_ratio, "k3")
    # exp(l) - 1 - l = l^2/2 + l^3/6 + ...; the naive exp(l) - 1 loses every digit at 1e-9.
    torch.testing.assert_close(k3, log_ratio**2 / 2 + log_ratio**3 / 6, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", KL_ESTIMATORS)
def test_gradients_match_autograd_of_the_formula(kind):
    g = torch.Generator().manual_seed(2)
    logps = (-3 * torch.rand(4, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref_logps = (-3 * torch.rand(4, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    weights = torch.randn(4, 6, generator=g, dtype=torch.float64)
    formulas = {
        "k1": lambda lp, rl: lp - rl,
        "k2": lambda lp, rl: 0.5 * (rl - lp) ** 2,
        "k3": lambda lp, rl: torch.exp(rl - lp) - 1 - (rl - lp),
    }
    ours = torch.autograd.grad(
        (kl_estimate(logps, ref_logps, kind) * weights).sum(), (logps, ref_logps)
    )
    ref = torch.autograd.grad(
        (formulas[kind](logps, ref_logps) * weights).sum(), (logps, ref_logps)
    )
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    # and by hand: d/d logps is -d/d ref_logps = 1, -l, 1 - e^l
    log_ratio = (ref_logps - logps).detach()
    by_hand = {"k1": torch.ones_like(log_ratio), "k2": -log_ratio, "k3": -torch.expm1(log_ratio)}
    torch.testing.assert_close(ours[0], by_hand[kind] * weights)
    torch.testing.assert_close(ours[1], -by_hand[kind] * weights)
    assert torch.autograd.gradcheck(lambda a, b: kl_estimate(a, b, kind), (logps, ref_logps))


def test_refusals_by_name():
    with pytest.raises(ValueError, match="^kind: expected one of"):
        kl_estimate(torch.zeros(3), torch.zeros(3), "k4")
    with pytest.raises(ValueError, match="^logps, ref_logps: expected the same shape"):
        kl_estimate(torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="^p_logits, q_logits:"):
        categorical_kl(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="^p_logits, q_logits:"):
        categorical_kl(torch.zeros(()), torch.zeros(()))
    assert KL_ESTIMATORS == ("k1", "k2", "k3")
