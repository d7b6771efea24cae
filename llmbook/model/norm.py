"""Layer normalisation, written out (Ba et al., 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    r"""LayerNorm over the last dimension, with an optional bias.

    $$\operatorname{LN}(x) = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,\qquad
    \mu = \tfrac1C\sum_c x_c,\quad \sigma^2 = \tfrac1C\sum_c (x_c - \mu)^2$$

    The variance is the biased (population) one, as in :class:`torch.nn.LayerNorm`; the tests prove
    the two equal. ``torch.nn.LayerNorm`` gained ``bias=False`` only in 2.1, and writing it out is the point.

    :param dim: size of the normalised (last) dimension (C).
    :param eps: added to the variance before the square root.
    :param bias: whether to learn the shift $\beta$.

    Introduced in {doc}`/book/part1/07-residual-layernorm`.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.fused = True
        """Use ``torch.nn.functional.layer_norm`` (same math, one kernel) when dtypes allow; False runs
        the written-out formula."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` over its last dimension.

        :param x: ``(..., C)``.
        :returns: the normalised tensor, same shape and dtype.
        """
        if self.fused and x.dtype == self.weight.dtype:
            # The same formula as below in one fused kernel (forward and backward); the tests prove
            # the two paths equal.
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        # Low-precision inputs are normalised in float32 (the mean of squares loses digits in bf16);
        # float64 stays float64.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = xf.mean(dim=-1, keepdim=True)
        var = (xf - mean).pow(2).mean(dim=-1, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight.to(xf.dtype)
        if self.bias is not None:
            y = y + self.bias.to(xf.dtype)
        return y.to(x.dtype)


class RMSNorm(nn.Module):
    r"""Root-mean-square normalisation (Zhang & Sennrich, 2019), as in Llama.

    $$\operatorname{RMSNorm}(x) = \gamma \odot \frac{x}{\sqrt{\tfrac1C\sum_c x_c^2 + \epsilon}}$$

    LayerNorm without the mean subtraction and without a bias: cheaper, and in practice as good. The
    tests prove it equal to :class:`torch.nn.RMSNorm`.

    :param dim: size of the normalised (last) dimension (C).
    :param eps: added to the mean square before the square root.

    Introduced in {doc}`/book/part3/01-rmsnorm`.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.fused = True
        """Use ``torch.nn.functional.rms_norm`` (same math; one fused kernel on GPUs, while on the CPU
        PyTorch 2.13 composes it from the same operators) for fp32/fp64 inputs; False runs the
        written-out formula."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` over its last dimension.

        :param x: ``(..., C)``.
        :returns: the normalised tensor, same shape and dtype.
        """
        if x.dtype in (torch.float32, torch.float64) and self.weight.dtype == x.dtype:
            if self.fused:  # the formula above through torch; the tests prove the paths equal
                return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
            # Without dtype round trips (they cost more than the math at small sizes).
            return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)
