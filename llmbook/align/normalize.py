r"""Statistics over the tokens that count: masked mean, variance and whitening, and running moments.

A batch of completions is a padded ``(B, N)`` tensor whose boolean ``mask`` is True on real tokens.
Every statistic PPO takes of such a batch must see the real tokens only: with $n = \sum m_i$ counted
positions,

$$\bar x = \frac{1}{n}\sum_i m_i x_i, \qquad
s^2 = \frac{n}{n-1}\cdot\frac{1}{n}\sum_i m_i (x_i - \bar x)^2, \qquad
\mathrm{whiten}(x)_i = \frac{x_i - \bar x}{\sqrt{s^2 + \epsilon}}.$$

The factor $n/(n-1)$ is Bessel's correction (the unbiased variance, as TRL's ``masked_var``).
Whitening the advantages of a batch fixes the scale of the policy gradient whatever the scale of
the reward; whitening with the mean added back (``shift_mean=False``) rescales without centering,
the convention TRL used for rewards. Padded positions are read through ``torch.where`` rather than
multiplied by the mask, so an ``inf`` or NaN there cannot leak into the result (``0 * inf`` is NaN)
nor into a gradient.

Rewards arrive one batch at a time, so their scale for normalisation is a running one:
:class:`RunningMoments` keeps the count $n$, mean $\mu$ and sum of squared deviations $M_2$ of
everything seen so far and merges a new batch $(n_b, \mu_b, M_{2,b})$ exactly (Chan, Golub and
LeVeque's parallel update):

$$n' = n + n_b, \quad \delta = \mu_b - \mu, \quad \mu' = \mu + \delta\,\frac{n_b}{n'}, \quad
M_2' = M_2 + M_{2,b} + \delta^2\,\frac{n\,n_b}{n'}.$$

Unlike summing $x$ and $x^2$, this never subtracts two large, nearly equal numbers.
"""

from __future__ import annotations

import math
import operator

import torch


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor, got {mask.dtype}")
    try:
        shape = torch.broadcast_shapes(x.shape, mask.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"mask: shape {tuple(mask.shape)} does not broadcast to x's shape {tuple(x.shape)}"
        )


def _check_eps(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0.0 and value < float("inf")):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return value


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    r"""The mean of ``x`` over the positions where ``mask`` is True, $\sum_i m_i x_i / \sum_i m_i$.

    Values at masked-out positions are never read, so they may be anything, ``inf`` and NaN
    included, and receive a zero gradient.

    :param x: a floating-point tensor.
    :param mask: a bool tensor broadcastable to ``x``, True where a position counts.
    :param dim: the dimension(s) to reduce (None: all of them, to a scalar).
    :returns: ``x`` reduced over ``dim``. With ``dim`` given, a slice with no counted position
        gives 0 (an empty row cannot turn a batch statistic into NaN).
    :raises ValueError: for a non-float ``x``, a non-bool ``mask`` or one that does not broadcast
        to ``x``, or, when ``dim`` is None, a mask with no True position.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    _check_mask(x, mask)
    mask = mask.expand(x.shape)
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        n = int(mask.sum())
        if n == 0:
            raise ValueError("mask: no position is True, so the mean is undefined")
        return total.sum() / n
    count = mask.sum(dim=dim).to(x.dtype)
    return total.sum(dim=dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    r"""The variance of ``x`` over all the positions where ``mask`` is True.

    $\frac{1}{n}\sum_i m_i (x_i - \bar x)^2$, times Bessel's correction $n/(n-1)$ when
    ``unbiased`` (TRL's convention).

    :param x: a floating-point tensor.
    :param mask: a bool tensor broadcastable to ``x``, True where a position counts.
    :param unbiased: apply Bessel's correction.
    :returns: a scalar tensor.
    :raises ValueError: for the mask errors of :func:`masked_mean`, or when ``unbiased`` and fewer
        than 2 positions are counted.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    _check_mask(x, mask)
    mask = mask.expand(x.shape)
    # Replace padding before any arithmetic: (inf - mean)**2 would poison the backward pass.
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    n = int(mask.sum())
    if unbiased and n < 2:
        raise ValueError(f"mask: the unbiased variance needs at least 2 counted positions, got {n}")
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    r"""Standardise ``x`` with the mean and (unbiased) variance of its counted positions.

    $(x - \bar x)/\sqrt{s^2 + \epsilon}$; with ``shift_mean=False`` the mean is added back,
    $(x - \bar x)/\sqrt{s^2 + \epsilon} + \bar x$, which rescales without centering (TRL's
    convention). Padded positions come out as 0 whatever they held.

    :param x: a floating-point tensor.
    :param mask: a bool tensor broadcastable to ``x``, True where a position counts.
    :param shift_mean: subtract the mean (True) or keep it (False).
    :param eps: added to the variance before the square root.
    :returns: a tensor of ``x``'s shape, 0 where ``mask`` is False.
    :raises ValueError: for the errors of :func:`masked_var` (fewer than 2 counted positions
        included), or a negative or non-finite ``eps``.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    eps = _check_eps("eps", eps)
    _check_mask(x, mask)
    mask = mask.expand(x.shape)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(mask, x, zero)
    mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, zero)


class RunningMoments:
    r"""The running count, mean and standard deviation of a stream of batches.

    Each :meth:`update` merges a batch with Chan et al.'s parallel formula (see the module
    docstring); the result equals the moments of everything seen so far concatenated, up to
    rounding. Statistics are kept in Python floats (double precision) whatever the batch dtype.
    :attr:`std` is the unbiased one, ``numpy.std(..., ddof=1)`` of the stream.

    Introduced in {doc}`/book/part8/02-reward-signal`.
    """

    def __init__(self) -> None:
        self._count = 0
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean

    @property
    def count(self) -> int:
        """How many values have been seen."""
        return self._count

    @property
    def mean(self) -> float:
        """The mean of every value seen (0 before the first update)."""
        return self._mean

    @property
    def std(self) -> float:
        """The unbiased standard deviation of every value seen; 1 (the neutral scale) while fewer
        than 2 values have been seen."""
        if self._count < 2:
            return 1.0
        return math.sqrt(self._m2 / (self._count - 1))

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Merge a batch of values into the running moments.

        :param x: a non-empty floating-point tensor of any shape, all finite; every element is one
            value.
        :returns: ``(batch_mean, batch_std)`` of this batch alone (unbiased std; NaN for a batch of
            one value).
        :raises ValueError: for an empty, non-float or non-finite ``x``.

        Introduced in {doc}`/book/part8/02-reward-signal`.
        """
        if not torch.is_tensor(x) or not torch.is_floating_point(x):
            raise ValueError("x: expected a floating-point tensor")
        if x.numel() == 0:
            raise ValueError("x: expected at least one value, got an empty tensor")
        xs = x.detach().to(torch.float64).flatten()
        if not bool(torch.isfinite(xs).all()):
            raise ValueError("x: every value must be finite")
        n_b = xs.numel()
        mean_b = float(xs.mean())
        m2_b = float(((xs - mean_b) ** 2).sum())
        n = self._count + n_b
        delta = mean_b - self._mean
        self._mean += delta * n_b / n
        self._m2 += m2_b + delta * delta * self._count * n_b / n
        self._count = n
        std_b = math.sqrt(m2_b / (n_b - 1)) if n_b > 1 else float("nan")
        return mean_b, std_b

    def state_dict(self) -> dict[str, float | int]:
        """The running statistics, to save with a checkpoint.

        :returns: ``{"count": int, "mean": float, "m2": float}``.

        Introduced in {doc}`/book/part8/02-reward-signal`.
        """
        return {"count": self._count, "mean": self._mean, "m2": self._m2}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Restore the statistics saved by :meth:`state_dict`.

        :param state: a dict with keys ``count`` (int >= 0), ``mean`` (finite) and ``m2``
            (finite, >= 0).
        :raises ValueError: for missing or extra keys or invalid values, naming the key.

        Introduced in {doc}`/book/part8/02-reward-signal`.
        """
        if set(state) != {"count", "mean", "m2"}:
            raise ValueError(
                f"state: expected the keys ['count', 'm2', 'mean'], got {sorted(state)}"
            )
        count, mean, m2 = state["count"], float(state["mean"]), float(state["m2"])
        try:
            count = operator.index(count)  # int, numpy or 0-d integer tensor; not 3.0
        except TypeError:
            count = -1
        if isinstance(state["count"], bool) or count < 0:
            raise ValueError(f"count: expected an int >= 0, got {state['count']!r}")
        if not math.isfinite(mean):
            raise ValueError(f"mean: expected a finite number, got {mean!r}")
        if not (m2 >= 0.0 and m2 < float("inf")):
            raise ValueError(f"m2: expected a finite number >= 0, got {m2!r}")
        self._count, self._mean, self._m2 = count, mean, m2

    def __repr__(self) -> str:
        return f"RunningMoments(count={self._count}, mean={self._mean:.6g}, std={self.std:.6g})"
