"""Quantized linear layers (weight-only int8/int4, dynamic int8) and the swap of a GPT's projections."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.adapt.quantize import (
    GRANULARITIES,
    MAPPINGS,
    QuantizedTensor,
    pack_int4,
    quantize,
    unpack_int4,
)

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The Linear layers of a block that :func:`quantize_model` replaces by default."""
SCHEMES = ("int8", "int4", "int8-dynamic")
KERNELS = ("dequantize", "aten")
INT4_ATEN_GROUPS = (32, 64, 128, 256)


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach().float().clone()


class WeightOnlyLinear(nn.Module):
    r"""A Linear whose weight is stored as int8 or int4 codes with scales; activations stay float.

    ``forward`` computes $y = x\,\hat W^\top + b$. With ``kernel="dequantize"`` it rebuilds
    $\hat W = s\,(q - z)$ in the input's dtype and calls ``F.linear``: portable, exact, but it writes
    a float copy of the weight on every call. With ``kernel="aten"`` it calls torch's CPU kernels,
    ``_weight_int8pack_mm`` (int8, symmetric per channel only) or ``_weight_int4pack_mm_for_cpu``
    (int4 group-wise, G in 32, 64, 128, 256; for it the codes are kept only in that kernel's own
    packed layout, as many bytes as :func:`~llmbook.adapt.quantize.pack_int4`'s).

    :param qweight: the quantized ``(rows, cols)`` weight; 8 or 4 bits.
    :param bias: ``(N,)`` or None.
    :param kernel: ``"dequantize"`` or ``"aten"``.
    :raises ValueError: naming ``qweight`` or ``kernel`` when the combination is not supported.

    Introduced in {doc}`/book/part10/03-quantization`.
    """

    def __init__(
        self,
        qweight: QuantizedTensor,
        bias: torch.Tensor | None = None,
        *,
        kernel: str = "dequantize",
    ) -> None:
        super().__init__()
        if qweight.bits not in (4, 8):
            raise ValueError(f"qweight: a layer stores 8 or 4 bits, got {qweight.bits}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel: must be one of {KERNELS}, got {kernel!r}")
        self.out_features, self.in_features = qweight.codes.shape
        self.bits, self.kernel = qweight.bits, kernel
        self.mapping = "symmetric" if qweight.zero_point is None else "affine"
        self.granularity, self.group_size = qweight.granularity, qweight.group_size
        zero = qweight.zero_point
        if (
            kernel == "aten"
            and qweight.bits == 8
            and (qweight.granularity != "channel" or zero is not None)
        ):
            raise ValueError("kernel: 'aten' int8 needs symmetric per-channel weights")
        if kernel == "aten" and qweight.bits == 4 and qweight.group_size not in INT4_ATEN_GROUPS:
            raise ValueError(
                f"kernel: 'aten' int4 needs group-wise weights, G in {INT4_ATEN_GROUPS}"
            )
        self.register_buffer("bias", bias)
        if qweight.bits == 4 and kernel == "aten":
            # The kernel's own layout: uint4 u = code + 8, and w = (u - 8) * s + offset, so the
            # offset is -z * s; scales and offsets interleaved as (cols / G, rows, 2).
            unsigned = (qweight.codes.to(torch.int32) + 8).contiguous()
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned, 1)
            offset = (
                torch.zeros_like(qweight.scale) if zero is None else -zero.float() * qweight.scale
            )
            self.register_buffer("codes", packed)  # (rows, cols / 2) uint8
            self.register_buffer(
                "scales_and_zeros",
                torch.stack([qweight.scale, offset], -1).transpose(0, 1).contiguous(),
            )
            return
        self.register_buffer("scale", qweight.scale.clone())
        self.register_buffer("zero_point", None if zero is None else zero.clone())
        codes = (
            qweight.codes if qweight.bits == 8 else pack_int4(qweight.codes)
        )  # int4: (rows, cols / 2)
        self.register_buffer("codes", codes.clone())

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        bits: int = 8,
        granularity: str = "channel",
        group_size: int | None = None,
        mapping: str = "symmetric",
        kernel: str = "dequantize",
    ) -> WeightOnlyLinear:
        """Quantize an ``nn.Linear``'s weight round-to-nearest (see :func:`~llmbook.adapt.quantize.quantize`).

        :param linear: the layer (left unchanged).
        :param bits: 8 or 4.
        :param granularity: ``"tensor"``, ``"channel"`` or ``"group"``.
        :param group_size: G for group-wise.
        :param mapping: ``"symmetric"`` or ``"affine"``.
        :param kernel: ``"dequantize"`` or ``"aten"``.
        :returns: the quantized layer.
        """
        qweight = quantize(
            linear.weight.detach(),
            bits=bits,
            mapping=mapping,
            granularity=granularity,
            group_size=group_size,
        )
        return cls(qweight, _bias(linear), kernel=kernel)

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        r"""The dequantized weight $\hat W$, ``(rows, cols)``.

        :param dtype: its dtype.
        :returns: the weight the layer multiplies by.
        """
        if self.bits == 4 and self.kernel == "aten":  # read it back through the kernel: I W^T
            eye = torch.eye(self.in_features, device=self.codes.device)
            return self._int4_aten(eye).t().to(dtype)
        codes = self.codes if self.bits == 8 else unpack_int4(self.codes)
        q = QuantizedTensor(
            codes, self.scale, self.zero_point, self.bits, self.granularity, self.group_size
        )
        return q.dequantize(dtype)

    def _int4_aten(self, x2: torch.Tensor) -> torch.Tensor:
        sz = self.scales_and_zeros.to(x2.dtype)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.codes, self.group_size, sz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multiply by the quantized weight.

        :param x: ``(..., in_features)``, float32 or bfloat16.
        :returns: ``(..., out_features)`` in ``x``'s dtype.
        """
        if self.kernel == "dequantize":
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.weight(x.dtype), bias)
        x2 = x.reshape(-1, self.in_features)  # (B*T, cols)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scale.view(-1).to(x.dtype))
        else:
            y = self._int4_aten(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """The shape and the format, for ``print(model)``."""
        g = f", G={self.group_size}" if self.group_size else ""
        return (
            f"in={self.in_features}, out={self.out_features}, int{self.bits} {self.granularity}{g} "
            f"{self.mapping}, kernel={self.kernel}"
        )


class DynamicInt8Linear(nn.Module):
    r"""int8 weights (symmetric, per channel) times int8 activations, quantized per token at run time.

    Each row $x_t$ of the input gets its own absmax scale $a_t$, so
    $y_{tn} = a_t\,s_n \sum_k q^x_{tk}\,q^W_{nk} + b_n$: the sum runs over integers and is accumulated
    exactly in int32. ``kernel="int_mm"`` uses ``torch._int_mm`` (int8 x int8 -> int32, on the CPU and
    on CUDA GPUs); ``kernel="emulated"`` multiplies int32 tensors, the same integers, slower.

    :param qweight: symmetric per-channel int8 weight ``(rows, cols)``.
    :param bias: ``(N,)`` or None.
    :param kernel: ``"int_mm"`` or ``"emulated"``.
    :raises ValueError: naming ``qweight`` or ``kernel`` when they do not fit.

    Introduced in {doc}`/book/part10/03-quantization`.
    """

    def __init__(
        self, qweight: QuantizedTensor, bias: torch.Tensor | None = None, *, kernel: str = "int_mm"
    ) -> None:
        super().__init__()
        if qweight.bits != 8 or qweight.granularity != "channel" or qweight.zero_point is not None:
            raise ValueError("qweight: must be int8, symmetric, per channel")
        if kernel not in ("int_mm", "emulated"):
            raise ValueError(f"kernel: must be 'int_mm' or 'emulated', got {kernel!r}")
        self.out_features, self.in_features = qweight.codes.shape
        self.kernel = kernel
        self.register_buffer("codes", qweight.codes.clone())  # (rows, cols) int8
        self.register_buffer("scale", qweight.scale.clone())  # (rows, 1)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, kernel: str = "int_mm") -> DynamicInt8Linear:
        """Quantize an ``nn.Linear``'s weight per channel.

        :param linear: the layer (left unchanged).
        :param kernel: ``"int_mm"`` or ``"emulated"``.
        :returns: the quantized layer.
        """
        return cls(quantize(linear.weight.detach(), bits=8), _bias(linear), kernel=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multiply by the quantized weight.

        :param x: ``(..., in_features)``, float32 or bfloat16.
        :returns: ``(..., out_features)`` in ``x``'s dtype.
        """
        x2 = x.reshape(-1, self.in_features).float()  # (M, K), M = B*T tokens
        qx = quantize(x2, bits=8, granularity="channel")  # one scale per token
        if self.kernel == "int_mm":
            acc = torch._int_mm(qx.codes, self.codes.t())  # (M, N) int32
        else:
            acc = qx.codes.to(torch.int32) @ self.codes.to(torch.int32).t()
        y = acc.float() * qx.scale * self.scale.view(1, -1)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """The shape and the kernel, for ``print(model)``."""
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


@dataclass(kw_only=True)
class QuantConfig:
    """How :func:`quantize_model` quantizes; every field is checked when it is built.

    Introduced in {doc}`/book/part10/03-quantization`.
    """

    scheme: str = "int8"
    """``"int8"`` or ``"int4"`` (weight-only), or ``"int8-dynamic"`` (int8 weights and activations)."""
    granularity: str | None = None
    """Weight scales per ``"tensor"``, ``"channel"`` or ``"group"``; None: channel for int8, group
    for int4. ``"int8-dynamic"`` is per channel only."""
    group_size: int | None = None
    """G for group-wise scales; None: 32 when group-wise."""
    mapping: str = "symmetric"
    """``"symmetric"`` (absmax) or ``"affine"`` (zero point); weight-only schemes only."""
    kernel: str | None = None
    """``"dequantize"`` or ``"aten"`` for weight-only, ``"int_mm"`` or ``"emulated"`` for dynamic;
    None: ``"dequantize"``, ``"int_mm"``."""
    quantize_head: bool = False
    """Also quantize the language-model head (never the embedding table, which is a lookup)."""

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: must be one of {SCHEMES}, got {self.scheme!r}")
        dynamic = self.scheme == "int8-dynamic"
        if self.granularity is None:
            self.granularity = "group" if self.scheme == "int4" else "channel"
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity: must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if self.granularity == "group" and self.group_size is None:
            self.group_size = 32
        if self.group_size is not None and (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 2
            or self.granularity != "group"
        ):
            raise ValueError(
                f"group_size: an integer >= 2, with granularity='group' only; got {self.group_size!r}"
            )
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping: must be one of {MAPPINGS}, got {self.mapping!r}")
        if dynamic and (self.granularity != "channel" or self.mapping != "symmetric"):
            raise ValueError("granularity: 'int8-dynamic' uses symmetric per-channel weights")
        kernels = ("int_mm", "emulated") if dynamic else KERNELS
        if self.kernel is None:
            self.kernel = kernels[0]
        if self.kernel not in kernels:
            raise ValueError(
                f"kernel: must be one of {kernels} for {self.scheme!r}, got {self.kernel!r}"
            )
        if not isinstance(self.quantize_head, bool):
            raise ValueError(f"quantize_head: must be True or False, got {self.quantize_head!r}")


def quantize_layer(linear: nn.Linear, config: QuantConfig) -> nn.Module:
    """The quantized replacement of one ``nn.Linear`` under ``config``.

    :param linear: the layer (left unchanged).
    :param config: the scheme.
    :returns: a :class:`WeightOnlyLinear` or :class:`DynamicInt8Linear`.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    if config.scheme == "int8-dynamic":
        return DynamicInt8Linear.from_linear(linear, kernel=config.kernel)
    return WeightOnlyLinear.from_linear(
        linear,
        bits=8 if config.scheme == "int8" else 4,
        granularity=config.granularity,
        group_size=config.group_size,
        mapping=config.mapping,
        kernel=config.kernel,
    )


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str | QuantConfig = "int8", **options) -> nn.Module:
    """Replace the model's projection Linears by quantized ones, in place.

    Every ``nn.Linear`` whose name ends in one of :data:`PROJECTIONS` is swapped (and the head
    ``lm_head`` with ``quantize_head=True``); embeddings and norms stay float. The embedding is a
    table lookup, one row per token, so quantizing it saves memory but no matrix multiply, and the
    head turns the last hidden state straight into logits, where an error is not averaged away by
    later layers.

    :param model: a GPT (or any module with such names); it must hold float weights.
    :param scheme: ``"int8"``, ``"int4"``, ``"int8-dynamic"``, or a :class:`QuantConfig`.
    :param options: the other :class:`QuantConfig` fields (with a scheme name).
    :returns: the same model, quantized.
    :raises ValueError: naming the option that is invalid, or ``model`` when it has nothing to swap.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    if isinstance(scheme, QuantConfig):
        if options:
            raise ValueError(f"options: give them in the QuantConfig, got {sorted(options)}")
        config = scheme
    else:
        config = QuantConfig(scheme=scheme, **options)
    names = PROJECTIONS + (("lm_head",) if config.quantize_head else ())
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in names
    ]
    if not targets:
        raise ValueError(f"model: has no nn.Linear named {names} to quantize")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, quantize_layer(linear, config).to(linear.weight.device))
    return model


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory, each shared tensor counted once.

    :param model: the model.
    :returns: the number of bytes.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def bits_per_weight(layer: nn.Module) -> float:
    """Stored bits per weight of a quantized layer, scales and zero points included.

    :param layer: a :class:`WeightOnlyLinear` or :class:`DynamicInt8Linear`.
    :returns: ``8 * bytes / (out_features * in_features)``.

    Introduced in {doc}`/book/part10/03-quantization`.
    """
    names = ("codes", "scale", "zero_point", "scales_and_zeros")
    stored = [getattr(layer, n, None) for n in names]
    n_bytes = sum(t.numel() * t.element_size() for t in stored if t is not None)
    return 8 * n_bytes / math.prod((layer.out_features, layer.in_features))
