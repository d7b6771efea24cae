"""pass@k: the estimator against brute-force enumeration of k-subsets, and its unbiasedness."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from llmbook.align.passk import pass_at_k, pass_at_k_many

CASES = [(n, c, k) for n in range(1, 9) for c in range(0, n + 1) for k in range(1, n + 1)]


def brute_force(n, c, k):
    """The share of k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(samples[i] for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


def naive(n, c, k):
    return 1 - (1 - c / n) ** k


@pytest.mark.parametrize(("n", "c", "k"), CASES)
def test_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(brute_force(n, c, k)), abs=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0  # k = n: all samples are tried
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(7, 3, 1) == pytest.approx(3 / 7)  # pass@1 is the fraction correct
    # Large n stays finite where binomial coefficients would overflow a float.
    assert 0.0 < pass_at_k(5000, 3, 16) < 1.0
    assert pass_at_k(5000, 3, 16) == pytest.approx(1 - math.comb(4997, 16) / math.comb(5000, 16))


def test_naive_plug_in_differs_and_underestimates():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert naive(4, 1, 2) == pytest.approx(0.4375)  # 1 - (3/4)^2
    for n, c, k in CASES:
        if k >= 2 and 0 < c < n and n - c >= 1:
            assert naive(n, c, k) <= pass_at_k(n, c, k) + 1e-12


@pytest.mark.parametrize(("n", "k", "p"), [(5, 2, 0.3), (8, 4, 0.1), (10, 3, 0.55)])
def test_unbiased_under_binomial_sampling(n, k, p):
    """E over c ~ Binomial(n, p) of the estimate is 1 - (1 - p)^k exactly; the plug-in's is not."""
    pmf = [math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)]
    unbiased = sum(w * pass_at_k(n, c, k) for c, w in enumerate(pmf))
    plug_in = sum(w * naive(n, c, k) for c, w in enumerate(pmf))
    truth = 1 - (1 - p) ** k
    assert unbiased == pytest.approx(truth, abs=1e-12)
    assert plug_in < truth - 1e-3


def test_many_is_the_mean_over_problems():
    rng = np.random.default_rng(0)
    ns = rng.integers(4, 20, size=50).tolist()
    cs = [int(rng.integers(0, n + 1)) for n in ns]
    for k in (1, 2, 4):
        expected = np.mean([pass_at_k(n, c, k) for n, c in zip(ns, cs)])
        assert pass_at_k_many(ns, cs, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k_many([3, 3], [0, 0], 2) == 0.0
    assert pass_at_k_many(np.array([16, 16]), np.array([16, 1]), 16) == 1.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((5, 6, 1), "c: must be between"),
        ((5, -1, 1), "c: must be between"),
        ((5, 2, 0), "k: must be between"),
        ((5, 2, 6), "k: must be between"),
        ((0, 0, 1), "n: need at least"),
        ((5.0, 2, 1), "n: must be an integer"),
        ((5, 2.5, 1), "c: must be an integer"),
        ((5, True, 1), "c: must be an integer"),
        ((5, 2, None), "k: must be an integer"),
    ],
)
def test_validation_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(*args)


def test_many_validation():
    with pytest.raises(ValueError, match="cs: expected 2"):
        pass_at_k_many([3, 4], [1], 1)
    with pytest.raises(ValueError, match="ns: need at least one"):
        pass_at_k_many([], [], 1)
    with pytest.raises(ValueError, match=r"k: must be between .* \(problem 1\)"):
        pass_at_k_many([8, 3], [1, 1], 4)
