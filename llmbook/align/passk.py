r"""pass@k: the chance that at least one of k sampled answers is correct, estimated without bias.

Sample $n \ge k$ answers to a problem, find $c$ of them correct, and estimate pass@k as the
probability that $k$ of the $n$ samples drawn without replacement include a correct one (Chen et
al., 2021, *Evaluating Large Language Models Trained on Code*).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np


def _check_int(name: str, value) -> int:
    # bool is an int subclass; True as a sample count is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    return int(value)


def _check(n, c, k) -> tuple[int, int, int]:
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"n: need at least one sample, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c: must be between 0 and n = {n}, got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k: must be between 1 and n = {n}, got {k}")
    return n, c, k


def pass_at_k(n: int, c: int, k: int) -> float:
    r"""The unbiased pass@k estimate from $n$ samples of which $c$ are correct.

    $$\widehat{\text{pass@}k} = 1 - \frac{\binom{n-c}{k}}{\binom{n}{k}}
    = 1 - \prod_{i=n-c+1}^{n}\left(1 - \frac{k}{i}\right)$$

    The ratio of binomials is the probability that a $k$-subset of the $n$ samples, drawn uniformly
    without replacement, holds only wrong answers ($\binom{n-c}{k}$ such subsets among
    $\binom{n}{k}$). The product form follows by cancelling factorials,
    $\binom{n-c}{k}/\binom{n}{k} = \prod_{i=n-c+1}^{n} (i-k)/i$, and never forms a binomial
    coefficient (those overflow a float near $n = 1030$); when $n - c < k$ every $k$-subset holds a
    correct answer and the estimate is exactly 1.

    **Why it is unbiased.** Let each sample be correct independently with probability $p$, so that
    pass@k $= 1 - (1-p)^k$. Fix any $k$ of the $n$ sample indices: they are all wrong with
    probability $(1-p)^k$. The ratio above is the average, over all $\binom{n}{k}$ index sets, of the
    indicator "this set is all wrong"; by linearity of expectation its expected value is the average
    of $(1-p)^k$, which is $(1-p)^k$. So $E[\widehat{\text{pass@}k}] = 1 - (1-p)^k$ exactly.

    **Why the naive plug-in is biased.** Replacing $p$ by $\hat p = c/n$ gives
    $1 - (1 - \hat p)^k$. For $k \ge 2$, $x \mapsto (1-x)^k$ is strictly convex on $[0, 1]$, so by
    Jensen's inequality $E[(1-\hat p)^k] > (1 - E[\hat p])^k = (1-p)^k$ whenever $\hat p$ varies
    ($0 < p < 1$): the plug-in *under*-estimates pass@k. In words, it treats the $n$ samples as if
    $k$ draws were made *with* replacement from them, so the same wrong sample can be drawn twice;
    the $n$ samples are a finite population, and $k$ draws from them are without replacement.

    :param n: the number of samples drawn for the problem.
    :param c: how many of them are correct, ``0 <= c <= n``.
    :param k: the budget of attempts, ``1 <= k <= n``.
    :returns: the estimate, in ``[0, 1]``.
    :raises ValueError: naming the argument, for a non-integer or out-of-range value.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    n, c, k = _check(n, c, k)
    if n - c < k:
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def pass_at_k_many(ns: Sequence[int], cs: Sequence[int], k: int) -> float:
    r"""The mean of :func:`pass_at_k` over problems, computed for all problems at once.

    The products of :func:`pass_at_k` have different lengths ($c$ factors each); they are laid out
    in one ``(P, max c)`` array padded with factors of 1.

    :param ns: samples drawn per problem (P values).
    :param cs: correct samples per problem (P values).
    :param k: the budget of attempts, at most every ``n``.
    :returns: the mean estimate over the P problems.
    :raises ValueError: for no problems, ``ns`` and ``cs`` of different lengths, or a value
        :func:`pass_at_k` refuses (the message names the argument and the problem index).

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    if len(ns) != len(cs):
        raise ValueError(f"cs: expected {len(ns)} values like ns, got {len(cs)}")
    if len(ns) == 0:
        raise ValueError("ns: need at least one problem")
    checked = []
    for p, (n, c) in enumerate(zip(ns, cs)):
        try:
            checked.append(_check(n, c, k))
        except ValueError as err:
            raise ValueError(f"{err} (problem {p})") from None
    n_arr = np.array([t[0] for t in checked], dtype=np.float64)  # (P,)
    c_arr = np.array([t[1] for t in checked], dtype=np.int64)  # (P,)
    width = max(int(c_arr.max()), 1)
    j = np.arange(width)[None, :]  # (1, W)
    i = n_arr[:, None] - c_arr[:, None] + 1 + j  # (P, W): n-c+1, n-c+2, ...
    factors = np.where(j < c_arr[:, None], 1.0 - k / i, 1.0)  # (P, W)
    all_wrong = np.prod(factors, axis=1)  # (P,)
    # A factor i - k <= 0 appears exactly when n - c < k: every k-subset then holds a correct one.
    all_wrong = np.where(n_arr - c_arr < k, 0.0, all_wrong)
    return float(np.mean(1.0 - all_wrong))
