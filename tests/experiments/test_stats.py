"""Student-t quantiles, confidence intervals, paired differences and rank flips, against numbers
worked out by hand, textbook tables, and SciPy or mpmath where installed."""

import math

import pytest

from llmbook.experiments.stats import (
    Interval,
    PairedDifference,
    RankFlip,
    mean_ci,
    paired_differences,
    rank_flips,
    t_quantile,
)


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 10, 2.2281),
        (0.975, 30, 2.0423),
        (0.995, 3, 5.8409),
        (0.95, 5, 2.0150),
        (0.9995, 1, 636.6192),
        (0.975, 10**7, 1.95996),
    ],
)
def test_t_quantile_matches_the_textbook_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_is_symmetric_zero_at_the_median_and_normal_at_infinite_df():
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.025, 2) == pytest.approx(-t_quantile(0.975, 2), rel=1e-12)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963984540054, rel=1e-12)
    # Quantiles grow as the degrees of freedom shrink: fewer seeds, wider intervals.
    assert t_quantile(0.975, 2) > t_quantile(0.975, 3) > t_quantile(0.975, 100)


@pytest.mark.parametrize(
    "p, df, name",
    [(0.0, 2, "p"), (1.0, 2, "p"), (math.nan, 2, "p"), (0.9, 0, "df"), (0.9, math.nan, "df")],
)
def test_t_quantile_refuses_bad_arguments_by_name(p, df, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        t_quantile(p, df)


PARITY = [(p, df) for p in (0.6, 0.9, 0.975, 0.999) for df in (0.5, 1, 2, 3, 7.5, 29, 400)]


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for p, df in PARITY:
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9), (p, df)


def test_t_quantile_inverts_mpmaths_t_distribution():
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(30):
        for p, df in PARITY:
            t = mpmath.mpf(t_quantile(p, df))
            # P(T <= t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, in arbitrary precision.
            cdf = 1 - mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2
            assert float(cdf) == pytest.approx(p, abs=1e-12), (p, df)


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sample sd 1, half width t(0.975, 2) / sqrt(3) = 4.30265 / 1.73205.
    assert isinstance(ci, Interval) and ci.n == 3 and ci.level == 0.95
    assert ci.mean == 2.0 and ci.sd == pytest.approx(1.0)
    assert ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (ci.low, ci.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), rel=1e-6)
    assert mean_ci([1.0, 2.0, 3.0], level=0.99).half_width > ci.half_width
    assert ci.to_dict()["half_width"] == ci.half_width


def test_mean_ci_of_one_value_is_the_whole_line_and_of_equal_values_a_point():
    one = mean_ci([3.5])
    assert one.n == 1 and one.mean == 3.5 and math.isnan(one.sd)
    assert one.half_width == math.inf and (one.low, one.high) == (-math.inf, math.inf)
    assert not one.excludes(0.0) and not one.excludes(1e300)
    same = mean_ci([2.25] * 4)
    assert same.sd == 0.0 and same.half_width == 0.0 and same.low == same.high == 2.25
    assert same.excludes(0.0) and not same.excludes(2.25)


@pytest.mark.parametrize(
    "values, level, name",
    [([], 0.95, "values"), ([1.0, math.nan], 0.95, "values"), ([1.0, math.inf], 0.95, "values"),
     ([1.0, 2.0], 1.0, "level"), ([1.0, 2.0], math.nan, "level")],
)  # fmt: skip
def test_mean_ci_refuses_bad_input_by_name(values, level, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        mean_ci(values, level)


def test_paired_differences_use_the_shared_seeds_only():
    a = {0: 1.0, 1: 2.0, 2: 3.0, 5: 9.0}
    b = {2: 3.8, 0: 1.5, 1: 2.5, 7: 0.0}
    d = paired_differences(a, b)
    # b - a on seeds 0, 1, 2: 0.5, 0.5, 0.8 -> mean 0.6, sd sqrt(0.03), half t * sd / sqrt(3).
    assert isinstance(d, PairedDifference) and d.seeds == (0, 1, 2) and d.n == 3
    assert d.mean == pytest.approx(0.6) and d.sd == pytest.approx(math.sqrt(0.03))
    assert d.half_width == pytest.approx(4.302653 * math.sqrt(0.03) / math.sqrt(3), rel=1e-6)
    assert d.low > 0 and d.distinguishable
    flipped = paired_differences(b, a)
    assert flipped.mean == pytest.approx(-0.6) and flipped.distinguishable


def test_paired_differences_that_straddle_zero_or_rest_on_one_seed_are_not_distinguishable():
    d = paired_differences({0: 1.0, 1: 1.0, 2: 1.0}, {0: 1.1, 1: 0.95, 2: 1.0})
    assert d.low < 0 < d.high and not d.distinguishable
    one = paired_differences({0: 1.0, 1: 2.0}, {1: 5.0})
    assert one.n == 1 and one.half_width == math.inf and not one.distinguishable


def test_paired_differences_without_a_shared_seed_raise():
    with pytest.raises(ValueError, match="^b_by_seed: shares no seed"):
        paired_differences({0: 1.0, 1: 2.0}, {2: 1.0})
    with pytest.raises(ValueError, match="^a_by_seed:"):
        paired_differences({0: math.nan}, {0: 1.0})


def test_rank_flips_find_the_seed_that_orders_two_cells_against_their_means():
    values = {
        "a": {0: 1.0, 1: 1.0, 2: 1.0},
        "b": {0: 2.0, 1: 0.5, 2: 2.0},  # higher on average, lower on seed 1
        "c": {0: 1.0, 1: 1.0},  # ties "a": no order, no flip
    }
    flips = rank_flips(values)
    assert flips == [
        RankFlip(lower="a", higher="b", seed=1, mean_gap=0.5, seed_gap=-0.5),
        # b against c over their shared seeds 0 and 1: means 1.25 vs 1.0, seed 1 says otherwise.
        RankFlip(lower="c", higher="b", seed=1, mean_gap=0.25, seed_gap=-0.5),
    ]
    assert rank_flips({"a": {0: 1.0, 1: 2.0}, "b": {0: 3.0, 1: 4.0}}) == []
    assert rank_flips({"a": {0: 1.0}, "b": {1: 2.0}}) == []  # no shared seed, nothing to compare
