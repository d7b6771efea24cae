r"""Integer quantization of tensors: scales, zero points, granularity, and int4 nibble packing.

A quantizer maps a real value $x$ to an integer code $q$ on a uniform grid of step $s$ (the scale),
shifted by an integer zero point $z$:

$$q = \operatorname{clamp}\big(\operatorname{round}(x / s) + z,\ q_\min,\ q_\max\big),
\qquad \hat x = s\,(q - z).$$

Codes are signed everywhere in this module: $b$ bits give $q \in [-2^{b-1}, 2^{b-1} - 1]$
($[-128, 127]$ for int8, $[-8, 7]$ for int4). One scale (and zero point) is shared by a whole tensor,
by each row (an output channel of a weight, or a token of an activation), or by each group of $G$
consecutive values along a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAPPINGS = ("symmetric", "affine")
GRANULARITIES = ("tensor", "channel", "group")
SCALE_FLOOR = torch.finfo(torch.float32).eps
"""The smallest scale: an all-zero row or group divides by this instead of by zero."""


def code_range(bits: int) -> tuple[int, int]:
    """The signed codes of a ``bits``-wide integer: ``(-2**(bits-1), 2**(bits-1) - 1)``.

    :param bits: the width, 2 to 8.
    :returns: ``(q_min, q_max)``.
    :raises ValueError: naming ``bits`` when it is not an integer from 2 to 8.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits: must be an integer from 2 to 8, got {bits!r}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _check(x: torch.Tensor, mapping: str, granularity: str, group_size: int | None) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a 2-D floating-point tensor (rows, cols), got {shape}")
    if x.numel() == 0:
        raise ValueError("x: is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x: contains NaN or inf, which no scale can represent")
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping: must be one of {MAPPINGS}, got {mapping!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size: must be a positive integer, got {group_size!r}")
        if x.size(1) % group_size:
            raise ValueError(
                f"group_size: {group_size} does not divide the rows' length {x.size(1)}"
            )
    elif group_size is not None:
        raise ValueError(f"group_size: only for granularity='group', got {group_size!r}")


def _blocks(x: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    # (rows, cols) -> (rows of scales, groups per row, values per group): one scale per [i, j, :].
    N, K = x.shape
    if granularity == "tensor":
        return x.reshape(1, 1, N * K)
    if granularity == "channel":
        return x.reshape(N, 1, K)
    return x.reshape(N, K // group_size, group_size)


def choose_qparams(
    x: torch.Tensor,
    *,
    bits: int = 8,
    mapping: str = "symmetric",
    granularity: str = "channel",
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""The scale and zero point that cover each block of ``x`` with ``bits``-bit codes.

    **Symmetric (absmax)**: $z = 0$ and $s = \max|x| / \big((q_\max - q_\min)/2\big)$, that is
    $\max|x| / 127.5$ for int8 and $/7.5$ for int4: all $2^b$ codes are used, the largest magnitude
    lands on $\pm(q_\max + \tfrac12)$ and is rounded (and clamped) half a step away, which keeps the
    error bound $|x - \hat x| \le s/2$ (torchao's convention, so the codes agree with it).

    **Affine (zero point)**: the block's range, widened to include 0 so that zero is exact, is
    spread over all codes: $s = (\max(x, 0) - \min(x, 0)) / (q_\max - q_\min)$ and
    $z = q_\min - \operatorname{round}(\min(x, 0)/s)$.

    Scales are float32 and never below :data:`SCALE_FLOOR`.

    :param x: ``(rows, cols)`` values: rows are output channels of a weight, or tokens of an activation.
    :param bits: code width, 2 to 8.
    :param mapping: ``"symmetric"`` or ``"affine"``.
    :param granularity: ``"tensor"`` (one scale), ``"channel"`` (one per row) or ``"group"`` (one
        per ``group_size`` consecutive values of a row).
    :param group_size: G, for ``granularity="group"``; must divide ``cols``.
    :returns: ``(scale, zero_point)``, scale float32 of shape ``(1, 1)``, ``(rows, 1)`` or
        ``(rows, cols // G)``; zero point int8 of the same shape, or None for symmetric.
    :raises ValueError: naming the argument that is invalid (a non-finite ``x`` included).

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    q_min, q_max = code_range(bits)
    _check(x, mapping, granularity, group_size)
    blocks = _blocks(x.float(), granularity, group_size)  # (R, n_groups, G)
    if mapping == "symmetric":
        scale = blocks.abs().amax(-1) / ((q_max - q_min) / 2)
        return scale.clamp(min=SCALE_FLOOR), None
    low = blocks.amin(-1).clamp(max=0.0)  # (R, n_groups)
    high = blocks.amax(-1).clamp(min=0.0)
    scale = ((high - low) / (q_max - q_min)).clamp(min=SCALE_FLOOR)
    zero = (q_min - torch.round(low / scale)).clamp(q_min, q_max)
    return scale, zero.to(torch.int8)


def _grouped(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (N, K) values and an (R, n) parameter -> (N, n, K // n) and (R, n, 1), which broadcast.
    N, K = x.shape
    R, n = p.shape
    if R not in (1, N) or n < 1 or K % n or (R == 1 and N != 1 and n != 1):
        raise ValueError(f"scale: shape {tuple(p.shape)} does not fit x of shape {(N, K)}")
    return x.reshape(N, n, K // n), p.reshape(R, n, 1)


def quantize_with(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, *, bits: int = 8
) -> torch.Tensor:
    r"""Round ``x`` onto a given grid: $q = \operatorname{clamp}(\operatorname{round}(x/s) + z)$.

    :param x: ``(rows, cols)`` values.
    :param scale: ``(1, 1)``, ``(rows, 1)`` or ``(rows, cols // G)`` scales (see :func:`choose_qparams`).
    :param zero_point: integer zero points of the same shape, or None (zero).
    :param bits: code width, 2 to 8.
    :returns: int8 codes ``(rows, cols)``.
    :raises ValueError: naming ``scale`` when its shape does not fit ``x``.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    q_min, q_max = code_range(bits)
    xg, s = _grouped(x.float(), scale.float())  # (N, n, K // n), (R, n, 1)
    q = torch.round(xg * (1.0 / s))  # by the reciprocal, as kernels (and torchao) do
    if zero_point is not None:
        q = q + zero_point.float().reshape(s.shape)
    return q.clamp(q_min, q_max).to(torch.int8).reshape(x.shape)


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes with the scales (and zero points) that turn them back into numbers.

    Introduced in {doc}`/book/part10/03-quantization`.
    """

    codes: torch.Tensor
    """int8 codes ``(rows, cols)``, in ``code_range(bits)``."""
    scale: torch.Tensor
    """float32 scales, ``(1, 1)``, ``(rows, 1)`` or ``(rows, cols // G)``."""
    zero_point: torch.Tensor | None
    """int8 zero points of the scale's shape; None for symmetric quantization."""
    bits: int
    """Code width."""
    granularity: str
    """``"tensor"``, ``"channel"`` or ``"group"``."""
    group_size: int | None = None
    """G for group-wise quantization, else None."""

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        r"""$\hat x = s\,(q - z)$, computed in float32 and returned in ``dtype``.

        :param dtype: the dtype of the result.
        :returns: ``(rows, cols)`` values.
        """
        q, s = _grouped(self.codes.float(), self.scale)  # (N, n, K // n), (R, n, 1)
        if self.zero_point is not None:
            q = q - self.zero_point.float().reshape(s.shape)
        return (q * s).reshape(self.codes.shape).to(dtype)

    def nbytes(self) -> int:
        """Bytes to store it with codes packed to ``bits`` each (scales float32, zeros one byte).

        :returns: the number of bytes.
        """
        params = self.scale.numel() * (4 + (self.zero_point is not None))
        return -(-self.codes.numel() * self.bits // 8) + params


def quantize(
    x: torch.Tensor,
    *,
    bits: int = 8,
    mapping: str = "symmetric",
    granularity: str = "channel",
    group_size: int | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` round-to-nearest: :func:`choose_qparams`, then :func:`quantize_with`.

    :param x: ``(rows, cols)`` floating-point values.
    :param bits: code width, 2 to 8.
    :param mapping: ``"symmetric"`` or ``"affine"``.
    :param granularity: ``"tensor"``, ``"channel"`` or ``"group"``.
    :param group_size: G, for ``granularity="group"``.
    :returns: the :class:`QuantizedTensor`.
    :raises ValueError: naming the argument that is invalid.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    scale, zero = choose_qparams(
        x, bits=bits, mapping=mapping, granularity=granularity, group_size=group_size
    )
    codes = quantize_with(x, scale, zero, bits=bits)
    return QuantizedTensor(codes, scale, zero, bits, granularity, group_size)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack signed int4 codes two per byte: ``code + 8`` in each nibble, even index in the low one.

    Odd-length rows are refused rather than padded: a pad nibble would have to be remembered and cut
    off again, and every group size used with int4 is even anyway.

    :param codes: integer codes in ``[-8, 7]``, shape ``(..., cols)`` with ``cols`` even.
    :returns: uint8 ``(..., cols // 2)``.
    :raises ValueError: naming ``codes`` when it is not an integer tensor, has a value outside
        ``[-8, 7]``, or an odd last dimension.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dim() == 0:
        raise ValueError("codes: expected an integer tensor with at least one dimension")
    if codes.size(-1) % 2:
        raise ValueError(
            f"codes: the last dimension must be even to pack two per byte, got {codes.size(-1)}"
        )
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError("codes: int4 codes must lie in [-8, 7]")
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)  # offset binary: -8 -> 0, 7 -> 15
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`.

    :param packed: uint8 ``(..., cols // 2)``.
    :returns: int8 codes in ``[-8, 7]``, ``(..., cols)``.
    :raises ValueError: naming ``packed`` when it is not uint8.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() == 0:
        raise ValueError("packed: expected a uint8 tensor with at least one dimension")
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)
