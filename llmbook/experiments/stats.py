r"""Confidence intervals for a handful of seeds: Student's t, paired differences, rank flips.

An ablation trains each architecture with a few seeds and compares mean losses. With $n$ seeds the
mean $\bar x$ has standard error $s/\sqrt{n}$, and because $s$ is itself estimated from the same $n$
values, the interval uses Student's t quantile rather than the normal one:

$$\bar x \pm t_{1-\alpha/2,\,n-1}\,\frac{s}{\sqrt{n}} .$$

With 3 seeds $t_{0.975,2} \approx 4.30$, more than twice the normal 1.96: few seeds buy wide
intervals. Comparing two cells seed by seed (the same seed gives both the same batches) removes the
variation the seeds share, which is why :func:`paired_differences` is the test the book uses.

Everything here is plain Python (no SciPy at run time); the tests check it against SciPy.

Introduced in {doc}`/book/part10/05-ablations`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import combinations

_MAX_TERMS = 500
_EPS = 1e-15


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A mean and its two-sided Student-t confidence interval.

    With a single value there is no estimate of the spread: ``sd`` is NaN and the interval is the
    whole real line (``half_width`` is ``inf``, ``low`` is ``-inf``, ``high`` is ``inf``), which says
    "one run cannot tell" in the interval's own terms, and excludes no value. With all values equal
    the spread is 0 and so is ``half_width``.

    Introduced in {doc}`/book/part10/05-ablations`.
    """

    n: int
    """How many values the interval is over."""
    mean: float
    """Their mean."""
    sd: float
    """Their sample standard deviation (``n - 1`` in the denominator); NaN when ``n == 1``."""
    half_width: float
    r"""$t_{(1+\text{level})/2,\,n-1} \cdot \text{sd} / \sqrt{n}$; ``inf`` when ``n == 1``."""
    low: float
    """``mean - half_width``."""
    high: float
    """``mean + half_width``."""
    level: float
    """The confidence level, e.g. 0.95."""

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the closed interval ``[low, high]``.

        :param value: the value to test (default 0: is a difference distinguishable from none?).
        :returns: True when ``value < low`` or ``value > high``.

        Introduced in {doc}`/book/part10/05-ablations`.
        """
        return value < self.low or value > self.high

    def to_dict(self) -> dict:
        """The interval as a plain dict (a row of a table).

        :returns: one entry per field.

        Introduced in {doc}`/book/part10/05-ablations`.
        """
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class PairedDifference(Interval):
    """The interval of per-seed differences ``b - a`` over the seeds both sides share.

    Introduced in {doc}`/book/part10/05-ablations`.
    """

    seeds: tuple[int, ...]
    """The shared seeds the differences are over, sorted."""
    distinguishable: bool
    """Whether the interval excludes 0: at this level, the seeds tell ``b`` from ``a``."""


@dataclass(frozen=True, kw_only=True)
class RankFlip:
    """One seed on which two cells come out in the opposite order to their means.

    Introduced in {doc}`/book/part10/05-ablations`.
    """

    lower: str
    """The cell with the lower mean (over the seeds both cells share)."""
    higher: str
    """The cell with the higher mean."""
    seed: int
    """The seed that orders them the other way."""
    mean_gap: float
    """``mean(higher) - mean(lower)``: positive."""
    seed_gap: float
    """``higher[seed] - lower[seed]``: negative, the single seed's verdict."""


def _betacf(a: float, b: float, x: float) -> float:
    # The continued fraction of the incomplete beta function, by the modified Lentz method
    # (Numerical Recipes, 3rd ed., section 6.4); converges fast for x < (a + 1) / (a + b + 2).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function $I_x(a, b)$."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    # P(T > t) for t >= 0: half of I_{df / (df + t^2)}(df/2, 1/2).
    return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    r"""The quantile of Student's t distribution with ``df`` degrees of freedom.

    The upper tail is $P(T > t) = \tfrac12 I_{\nu/(\nu+t^2)}(\nu/2, 1/2)$, with $I$ the regularized
    incomplete beta function (computed by its continued fraction); the quantile is found by bisection
    on $t \ge 0$, and the lower half by symmetry, $t_{1-p} = -t_p$. ``df = inf`` gives the normal
    quantile.

    :param p: the probability, in (0, 1); 0.975 gives the multiplier of a 95 % two-sided interval.
    :param df: the degrees of freedom, a positive number (``n - 1`` for a mean of ``n`` values).
    :returns: $t$ with $P(T \le t) = p$, e.g. 4.3027 for ``p=0.975, df=2``.
    :raises ValueError: when ``p`` is not in (0, 1) or ``df`` is not positive (or is NaN).

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"p: must be in (0, 1), got {p!r}")
    if isinstance(df, bool) or not isinstance(df, (int, float)) or not df > 0:
        raise ValueError(f"df: must be a positive number, got {df!r}")
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(p)
    if p == 0.5:
        return 0.0
    tail = 1.0 - p if p > 0.5 else p  # P(T > t) for the positive quantile
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:
        lo, hi = hi, 2.0 * hi
    # The tail is decreasing in t; 200 halvings reach the float spacing for any bracket.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    return t if p > 0.5 else -t


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level: must be in (0, 1), got {level!r}")


def _finite_floats(name: str, values: Iterable[float]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: every value must be a finite number, got {v!r}")
        out.append(float(v))
    return out


def mean_ci(values: Iterable[float], level: float = 0.95) -> Interval:
    r"""The mean of ``values`` and its two-sided Student-t confidence interval.

    $$\bar x \pm t_{(1+\text{level})/2,\;n-1}\,\frac{s}{\sqrt n},\qquad
    s^2 = \frac{1}{n-1}\sum_i (x_i - \bar x)^2 .$$

    :param values: the values, e.g. one validation loss per seed.
    :param level: the confidence level, in (0, 1).
    :returns: the :class:`Interval`; for a single value it is the whole real line (see there).
    :raises ValueError: when ``values`` is empty or holds a non-finite number, or ``level`` is not in
        (0, 1).

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    _check_level(level)
    xs = _finite_floats("values", values)
    if not xs:
        raise ValueError("values: must hold at least one value, got none")
    n, mean = len(xs), math.fsum(xs) / len(xs)
    if n == 1:
        return Interval(
            n=1,
            mean=mean,
            sd=math.nan,
            half_width=math.inf,
            low=-math.inf,
            high=math.inf,
            level=level,
        )
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(
        n=n, mean=mean, sd=sd, half_width=half, low=mean - half, high=mean + half, level=level
    )


def paired_differences(
    a_by_seed: dict[int, float], b_by_seed: dict[int, float], level: float = 0.95
) -> PairedDifference:
    """The interval of ``b[s] - a[s]`` over the seeds ``s`` present in both.

    Pairing by seed cancels what the two runs of a seed share (in :func:`~llmbook.experiments.ablate.run_grid`
    the same seed gives both cells the same batches): when their results are correlated, the interval
    is narrower than the two cells' own intervals suggest; when they are not, it is about as wide.
    Seeds present on one side only are left out.

    :param a_by_seed: seed -> value of the reference (e.g. the baseline).
    :param b_by_seed: seed -> value of the variant.
    :param level: the confidence level, in (0, 1).
    :returns: the :class:`PairedDifference`; with one shared seed the interval is the whole real line
        and ``distinguishable`` is False.
    :raises ValueError: when the two share no seed, a value is not finite, or ``level`` is not in
        (0, 1).

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    if not seeds:
        raise ValueError(
            f"b_by_seed: shares no seed with a_by_seed (seeds {sorted(b_by_seed)} vs "
            f"{sorted(a_by_seed)})"
        )
    a = _finite_floats("a_by_seed", (a_by_seed[s] for s in seeds))
    b = _finite_floats("b_by_seed", (b_by_seed[s] for s in seeds))
    ci = mean_ci([y - x for x, y in zip(a, b)], level)
    return PairedDifference(**ci.to_dict(), seeds=tuple(seeds), distinguishable=ci.excludes(0.0))


def rank_flips(values_by_cell: dict[str, dict[int, float]]) -> list[RankFlip]:
    """Every (pair of cells, seed) where that one seed orders the two cells against their means.

    For each pair of cells the means are over the seeds both share, and a flip is a shared seed whose
    difference has the opposite sign (a tie at a seed is not a flip; pairs with equal means have
    none). This is what a one-seed ablation risks: reporting the flipped order as the finding.

    :param values_by_cell: cell name -> (seed -> value), e.g. from
        :func:`~llmbook.experiments.ablate.metric_table`.
    :returns: the flips, by pair (in the order of ``values_by_cell``) and then by seed.
    :raises ValueError: when a value is not finite.

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    flips = []
    for first, second in combinations(values_by_cell, 2):
        a, b = values_by_cell[first], values_by_cell[second]
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diffs = [
            y - x
            for x, y in zip(
                _finite_floats(first, (a[s] for s in seeds)),
                _finite_floats(second, (b[s] for s in seeds)),
            )
        ]
        gap = math.fsum(diffs) / len(diffs)  # mean(second) - mean(first)
        if gap == 0.0:
            continue
        lower, higher, sign = (first, second, 1.0) if gap > 0 else (second, first, -1.0)
        for seed, d in zip(seeds, diffs):
            if d * sign < 0:
                flips.append(
                    RankFlip(
                        lower=lower, higher=higher, seed=seed, mean_gap=abs(gap), seed_gap=d * sign
                    )
                )
    return flips
