"""Positional embeddings: a learned table, and the fixed sinusoidal encoding of Vaswani et al."""

from __future__ import annotations

import math

import torch
from torch import nn


def _frequencies(dim: int, base: float) -> torch.Tensor:
    """The angular frequency of each (sin, cos) pair, $\\omega_i = \\text{base}^{-2i/\\text{dim}}$, float64."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim: must be a positive even number, got {dim!r}")
    finite = isinstance(base, (int, float)) and not isinstance(base, bool) and math.isfinite(base)
    if not finite or base <= 0:
        raise ValueError(f"base: must be a finite number > 0, got {base!r}")
    return torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    r"""The sinusoidal position encoding of "Attention Is All You Need".

    For position $p$ and pair index $i$,
    $PE[p, 2i] = \sin(p\,\omega_i)$ and $PE[p, 2i+1] = \cos(p\,\omega_i)$ with
    $\omega_i = \text{base}^{-2i/\text{dim}}$. Each (sin, cos) pair is a point on a circle turning at its own
    frequency, so moving by a fixed offset rotates every pair by a fixed angle.

    :param n_positions: number of positions (rows).
    :param dim: encoding width (columns); must be even.
    :param base: the wavelength scale, 10000 in the paper.
    :returns: a float32 tensor of shape ``(n_positions, dim)``.
    :raises ValueError: when ``dim`` is odd, a size is not positive, or ``base`` is not a finite
        number > 0.

    Introduced in {doc}`/book/part1/01-positional-embeddings`.
    """
    if n_positions < 1:
        raise ValueError(f"n_positions: must be positive, got {n_positions}")
    freqs = _frequencies(dim, base)  # (dim/2,)
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    angles = position * freqs  # (P, dim/2)
    table = torch.empty(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.float()


def sinusoidal_rotation(offset: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    r"""The block-diagonal rotation that maps ``PE[p]`` to ``PE[p + offset]`` for every ``p``.

    Pair $i$ is rotated by the angle $\text{offset}\cdot\omega_i$; the matrix does not depend on $p$,
    which is why a fixed offset between two positions is a linear (indeed orthogonal) map.

    :param offset: the shift in positions (may be negative).
    :param dim: encoding width; must be even.
    :param base: the same wavelength scale as :func:`sinusoidal_table`.
    :returns: a float32 ``(dim, dim)`` matrix ``R`` with ``PE[p + offset] = R @ PE[p]``.
    :raises ValueError: when ``dim`` is odd or ``base`` is not a finite number > 0.

    Introduced in {doc}`/book/part1/01-positional-embeddings`.
    """
    theta = offset * _frequencies(dim, base)
    rot = torch.zeros(dim, dim, dtype=torch.float64)
    c, s = torch.cos(theta), torch.sin(theta)
    idx = torch.arange(0, dim, 2)
    # The pair is (sin, cos): sin(a+b) = sin a cos b + cos a sin b, cos(a+b) = cos a cos b - sin a sin b.
    rot[idx, idx] = c
    rot[idx, idx + 1] = s
    rot[idx + 1, idx] = -s
    rot[idx + 1, idx + 1] = c
    return rot.float()


class LearnedPositionalEmbedding(nn.Module):
    """A trainable table with one vector per position, as in GPT-2.

    :param block_size: number of positions.
    :param n_embd: vector width (C).

    Introduced in {doc}`/book/part1/01-positional-embeddings`.
    """

    def __init__(self, block_size: int, n_embd: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(block_size, n_embd))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Look up positions.

        :param positions: integer tensor of positions, any shape.
        :returns: the vectors, shape ``positions.shape + (C,)``.
        """
        return self.weight[positions]


class SinusoidalPositionalEmbedding(nn.Module):
    """The fixed sinusoidal encoding as a module (a buffer, no parameters).

    :param block_size: number of positions.
    :param n_embd: vector width (C); must be even.

    Introduced in {doc}`/book/part1/01-positional-embeddings`.
    """

    def __init__(self, block_size: int, n_embd: int) -> None:
        super().__init__()
        # Not persistent: it is a function of the config, so checkpoints need not carry it.
        self.register_buffer("table", sinusoidal_table(block_size, n_embd), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Look up positions.

        :param positions: integer tensor of positions, any shape.
        :returns: the encodings, shape ``positions.shape + (C,)``.
        """
        return self.table[positions]
