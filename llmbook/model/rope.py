"""Rotary position embeddings (RoPE, Su et al. 2021): rotate query and key pairs by position."""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    r"""The rotation frequency of each of the ``head_dim / 2`` channel pairs: $\omega_i = \theta^{-2i/D}$.

    :param head_dim: the head width D (even).
    :param theta: the base; 10000 as in the paper and Llama 2 (Llama 3 uses 500000).
    :returns: float64 ``(D/2,)``.
    :raises ValueError: for an odd or non-positive ``head_dim``, or a ``theta`` that is not a finite
        number > 0 (an infinite base would leave every pair but the first unrotated).

    Introduced in {doc}`/book/part3/02-rope`.
    """
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim: RoPE needs an even head width, got {head_dim!r}")
    finite = (
        isinstance(theta, (int, float)) and not isinstance(theta, bool) and math.isfinite(theta)
    )
    if not finite or theta <= 0:
        raise ValueError(f"theta: must be a finite number > 0, got {theta!r}")
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def rope_cache(
    n_positions: int, head_dim: int, theta: float = 10000.0, *, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precompute cos and sin of every position's angles, laid out for :func:`apply_rope`.

    Channel ``i`` and channel ``i + D/2`` form a pair (the "rotate half" layout of Hugging Face's
    Llama; the original interleaved layout is the same rotation with the channels permuted).

    :param n_positions: number of positions.
    :param head_dim: head width D.
    :param theta: frequency base.
    :param device: where to allocate.
    :returns: ``(cos, sin)``, each float32 ``(n_positions, D)``.
    :raises ValueError: for an invalid ``head_dim`` or ``theta`` (see :func:`rope_frequencies`).

    Introduced in {doc}`/book/part3/02-rope`.
    """
    freqs = rope_frequencies(head_dim, theta)  # (D/2,)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * freqs  # (P, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (P, D)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dimension: a 90 degree turn of every pair.

    :param x: ``(..., D)``.
    :returns: ``(..., D)``.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Rotate every channel pair of ``x`` by its position's angle.

    For the pair $(x_i, x_{i+D/2})$ at position $p$:
    $(x_i\cos p\omega_i - x_{i+D/2}\sin p\omega_i,\; x_i \sin p\omega_i + x_{i+D/2}\cos p\omega_i)$.
    Because rotations compose, $\langle R_p q, R_s k\rangle = \langle q, R_{s-p} k\rangle$: attention
    scores see only the offset $s - p$.

    :param x: queries or keys ``(B, H, T, D)``.
    :param cos: ``(T, D)`` or ``(B, T, D)`` from :func:`rope_cache`, indexed by position.
    :param sin: same shape as ``cos``.
    :returns: the rotated tensor, same shape and dtype as ``x``.

    Introduced in {doc}`/book/part3/02-rope`.
    """
    if cos.dim() == 3:  # per-row positions (left padding): (B, T, D) -> (B, 1, T, D)
        cos, sin = cos[:, None], sin[:, None]
    out = x * cos + rotate_half(x) * sin
    return out if out.dtype == x.dtype else out.to(x.dtype)
