"""The model configuration: one validated dataclass that describes every GPT the book builds."""

from __future__ import annotations

import difflib
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

POS_EMBEDDINGS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm", "none")
MLPS = ("gelu", "swiglu")
ATTN_IMPLS = ("auto", "fused", "reference")

_KINDS = {bool: "True or False", int: "an integer", float: "a finite number", str: "a string"}


@functools.cache
def _field_kinds(cls: type) -> dict[str, tuple[type, bool]]:
    """``{field: (kind, optional)}`` for the fields annotated with bool, int, float or str (or None)."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _KINDS:
            kinds[f.name] = (rest[0], optional)
    return kinds


def check_field_values(cls: type, values: Mapping[str, Any]) -> None:
    """Check each value against its field's annotation: the type, and that floats are finite.

    ``bool`` fields take only True or False; ``int`` fields take integers but not booleans (``True``
    is an ``int`` in Python, and a flag passed for a size is a mistake); ``float`` fields take ints or
    floats that are finite, because NaN slips past every range check (``nan <= 0`` is False) and
    infinity is never a meaningful size, rate or coefficient; ``str`` fields take strings. ``X | None``
    also takes None. Fields with other annotations are left to the class's own checks.

    :param cls: a dataclass whose annotations say what each field holds.
    :param values: field names mapped to values (names that are not fields are ignored).
    :raises ValueError: one line that starts with the field name, e.g.
        ``norm_eps: must be a finite number, got nan``.
    """
    for name, (kind, optional) in _field_kinds(cls).items():
        if name not in values:
            continue
        value = values[name]
        if value is None and optional:
            continue
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ValueError(
                f"{name}: must be {_KINDS[kind]}{' or None' if optional else ''}, got {value!r}"
            )


def config_from_dict(cls: type, data: Mapping[str, Any]):
    """Build any config dataclass from a dict; an unknown key or a wrong type raises a
    :class:`ValueError` naming the field.

    :param cls: the dataclass (e.g. :class:`ModelConfig` or :class:`~llmbook.train.loop.TrainConfig`).
    :param data: field names mapped to values.
    :returns: the validated config.
    :raises ValueError: when ``data`` is not a mapping, a key is not a field of ``cls``, or a value
        is invalid (see :func:`check_field_values` and the class's own checks).
    """
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{cls.__name__}: expected a mapping of field names to values, got {type(data).__name__}"
        )
    known = [f.name for f in fields(cls)]
    unknown = sorted((k for k in data if k not in known), key=repr)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {sorted(known)}"
        raise ValueError(f"{key}: not a {cls.__name__} field ({hint})")
    check_field_values(cls, data)
    return cls(**data)


@dataclass(kw_only=True)
class ModelConfig:
    """Shape and switches of a decoder-only transformer.

    The defaults give a tiny model that trains in seconds on a laptop CPU. Every field is checked in
    ``__post_init__``: its type (see :func:`check_field_values`; floats must be finite), its range, and
    how it combines with the others. A bad value raises :class:`ValueError` whose message starts with
    the field name, so a typo in a recipe points at itself.

    Introduced in {doc}`/book/part1/09-gpt-model`.
    """

    vocab_size: int = 256
    """Number of token ids the embedding and the LM head cover (V)."""
    block_size: int = 64
    """Longest sequence the model accepts: the context length (T at most)."""
    n_layer: int = 2
    """Number of transformer blocks stacked on top of each other."""
    n_head: int = 4
    """Number of attention (query) heads per block (H)."""
    n_kv_head: int | None = None
    """Number of key/value heads (K); None means ``n_head`` (multi-head attention). Fewer gives
    grouped-query attention, 1 gives multi-query attention; ``n_head`` must be a multiple of it."""
    n_embd: int = 64
    """Width of the residual stream (C); must be divisible by ``n_head``."""
    dropout: float = 0.0
    """Dropout probability on embeddings, attention weights and residual branches, in [0, 1)."""
    bias: bool = True
    """Whether linear layers and norms carry additive biases (GPT-2 does; Llama does not)."""
    pos_embedding: str = "learned"
    """How positions enter the model: ``"learned"`` (a trained table), ``"sinusoidal"`` (fixed), or
    ``"rope"`` (rotary: queries and keys are rotated inside attention; no table is added)."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies (used with ``pos_embedding="rope"``)."""
    norm: str = "layernorm"
    """Normalisation in each block and before the head: ``"layernorm"``, ``"rmsnorm"`` or ``"none"``
    (an ablation)."""
    mlp: str = "gelu"
    """Feed-forward block: ``"gelu"`` (GPT-2) or ``"swiglu"`` (Llama)."""
    mlp_hidden: int | None = None
    """Hidden width of the feed-forward block; None gives 4C for GELU and 8C/3 rounded up to a
    multiple of 64 for SwiGLU (about the same parameter count)."""
    sliding_window: int | None = None
    """Attend only to the last ``sliding_window`` positions (W, the query included); None: all."""
    attn_sinks: int = 0
    """With a sliding window, also always attend to the first ``attn_sinks`` positions (StreamingLLM)."""
    residual: bool = True
    """Whether blocks add their output to the residual stream; ``False`` only for the ablation of 1.6."""
    attn_impl: str = "auto"
    """Attention kernel: ``"fused"`` (``torch.nn.functional.scaled_dot_product_attention``),
    ``"reference"`` (the readable implementation of the book, proven equal), or ``"auto"``: the
    faster of the two for the tensors at hand (see
    :func:`~llmbook.model.attention.resolve_attn_impl`)."""
    tie_weights: bool = True
    """Whether the LM head reuses the token embedding matrix (saves V x C parameters)."""
    norm_eps: float = 1e-5
    """Epsilon added to the variance inside the norm, for numerical safety."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""
    n_expert: int = 0
    """Routed experts in each mixture-of-experts layer (E); 0: every block has a dense MLP."""
    n_expert_active: int = 2
    """Experts each token is sent to (k of top-k routing)."""
    moe_every: int = 1
    """Which blocks are MoE: block ``i`` (from 0) is when ``(i + 1) % moe_every == 0``; 1: all of them,
    2: every other one (the second, fourth, ...), the others keep the dense MLP."""
    n_shared_expert: int = 0
    """Always-on shared experts in each MoE layer, added to the routed ones (DeepSeekMoE)."""
    expert_hidden: int | None = None
    """Hidden width of each SwiGLU expert; None: the dense block's width (see ``mlp_hidden``)."""
    router_noise: float = 0.0
    """Standard deviation of Gaussian noise added to the router logits while training (0: none)."""
    router_renormalize: bool = True
    """Renormalise the k chosen gates to sum to 1 (Mixtral); False keeps the raw softmax
    probabilities (the Switch Transformer's choice for top-1)."""
    capacity_factor: float | None = None
    """Cap each expert at this multiple of an even share of the assignments and drop the rest; None:
    no cap, no dropping."""
    moe_aux_coef: float = 0.01
    """Weight of the load-balancing loss added to the training loss."""
    moe_z_coef: float = 0.001
    """Weight of the router z-loss added to the training loss."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        # From here on each value has its annotated type and every float is finite.
        for name in (
            "vocab_size",
            "block_size",
            "n_layer",
            "n_head",
            "n_embd",
            "n_expert_active",
            "moe_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)!r}")
        for name in ("attn_sinks", "n_expert", "n_shared_expert"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name}: must be a non-negative integer, got {getattr(self, name)!r}"
                )
        for name in ("n_kv_head", "mlp_hidden", "sliding_window", "expert_hidden"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be a positive integer or None, got {value!r}")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head: must divide n_head ({self.n_head}), got {self.n_kv_head}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd: must be divisible by n_head ({self.n_head}), got {self.n_embd}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        for name, allowed in (
            ("pos_embedding", POS_EMBEDDINGS),
            ("norm", NORMS),
            ("mlp", MLPS),
            ("attn_impl", ATTN_IMPLS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {allowed}, got {getattr(self, name)!r}")
        if self.pos_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"pos_embedding: rope needs an even head width, got {self.head_dim}")
        if self.pos_embedding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"pos_embedding: sinusoidal needs an even n_embd, got {self.n_embd}")
        if self.attn_sinks and self.sliding_window is None:
            raise ValueError("attn_sinks: sinks only make sense with a sliding_window")
        if self.n_expert:
            if self.n_expert_active > self.n_expert:
                raise ValueError(
                    f"n_expert_active: must be at most n_expert ({self.n_expert}), "
                    f"got {self.n_expert_active}"
                )
            # A larger moe_every selects no block at all: a dense model that claims to be MoE.
            if self.moe_every > self.n_layer:
                raise ValueError(
                    f"moe_every: must be at most n_layer ({self.n_layer}) for any block to be MoE, "
                    f"got {self.moe_every}"
                )
            if self.n_expert_active == 1 and self.router_renormalize:
                raise ValueError(
                    "router_renormalize: a renormalised top-1 gate is always 1 and passes no "
                    "gradient to the router; use router_renormalize=False (Switch) or "
                    "n_expert_active >= 2"
                )
        elif self.n_shared_expert:
            raise ValueError(
                f"n_shared_expert: shared experts need n_expert > 0 (MoE blocks), "
                f"got {self.n_shared_expert} with n_expert=0"
            )
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(
                f"capacity_factor: must be a positive number or None, got {self.capacity_factor!r}"
            )
        for name in ("router_noise", "moe_aux_coef", "moe_z_coef"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name}: must be a non-negative number, got {getattr(self, name)!r}"
                )
        for name in ("norm_eps", "init_std", "rope_theta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be a positive number, got {getattr(self, name)!r}")

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` (from 0) has a mixture-of-experts feed-forward layer.

        :param layer: the block index.
        :returns: True for an MoE block (see ``n_expert`` and ``moe_every``).
        """
        return self.n_expert > 0 and (layer + 1) % self.moe_every == 0

    @property
    def head_dim(self) -> int:
        """Width of one attention head (D = C / H)."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (K): ``n_kv_head``, or ``n_head`` when unset."""
        return self.n_kv_head or self.n_head

    @property
    def hidden_size(self) -> int:
        """Hidden width of the feed-forward block (see ``mlp_hidden``)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return 64 * -(-(8 * self.n_embd) // (3 * 64))

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain JSON-serialisable dict.

        :returns: a dict with one entry per field.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict, rejecting unknown keys and wrong types by field name.

        :param data: field names mapped to values, as written by :meth:`to_dict`.
        :returns: the validated config.
        :raises ValueError: when ``data`` is not a mapping, a key is not a field, or a value is
            invalid.
        """
        return config_from_dict(cls, data)

    @classmethod
    def tiny(cls) -> ModelConfig:
        """The defaults: 2 layers, 4 heads, width 64; for tests and quick experiments."""
        return cls()

    @classmethod
    def gpt2_small(cls) -> ModelConfig:
        """The 124M-parameter GPT-2 small shape (12 layers, 12 heads, width 768, context 1024)."""
        return cls(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)

    @classmethod
    def llama_style(cls, **overrides: Any) -> ModelConfig:
        """The modern (Llama-style) switches on the tiny defaults: RMSNorm, RoPE, SwiGLU, no biases,
        untied head; any field can be overridden.

        :param overrides: fields to change, e.g. ``n_kv_head=2``.
        :returns: the config.
        """
        base = dict(
            norm="rmsnorm", pos_embedding="rope", mlp="swiglu", bias=False, tie_weights=False
        )
        return cls(**{**base, **overrides})

    @classmethod
    def nanogpt_shakespeare_cpu(cls) -> ModelConfig:
        """nanoGPT's CPU Shakespeare shape: 4 layers, 4 heads, width 128, context 64, vocab 65."""
        return cls(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
