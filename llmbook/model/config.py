"""The model configuration: one validated dataclass that describes every GPT the book builds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

POS_EMBEDDINGS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm", "none")
MLPS = ("gelu", "swiglu")
ATTN_IMPLS = ("auto", "fused", "reference")


def config_from_dict(cls: type, data: dict[str, Any]):
    """Build any config dataclass from a dict; an unknown key raises a :class:`ValueError` naming it.

    :param cls: the dataclass (e.g. :class:`ModelConfig` or :class:`~llmbook.train.loop.TrainConfig`).
    :param data: field names mapped to values.
    :returns: the validated config.
    :raises ValueError: when a key is not a field of ``cls``, or a value is invalid.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a {cls.__name__} field (known: {sorted(known)})")
    return cls(**data)


@dataclass(kw_only=True)
class ModelConfig:
    """Shape and switches of a decoder-only transformer.

    The defaults give a tiny model that trains in seconds on a laptop CPU. Every field is checked in
    ``__post_init__``; a bad value raises :class:`ValueError` whose message starts with the field name,
    so a typo in a recipe points at itself.

    Introduced in {doc}`/book/part1/07-gpt-model`.
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
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.n_kv_head is not None:
            if (
                isinstance(self.n_kv_head, bool)
                or not isinstance(self.n_kv_head, int)
                or self.n_kv_head < 1
            ):
                raise ValueError(
                    f"n_kv_head: must be a positive integer or None, got {self.n_kv_head!r}"
                )
            if self.n_head % self.n_kv_head:
                raise ValueError(
                    f"n_kv_head: must divide n_head ({self.n_head}), got {self.n_kv_head}"
                )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd: must be divisible by n_head ({self.n_head}), got {self.n_embd}"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        for name in ("bias", "residual", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be True or False, got {getattr(self, name)!r}")
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
        for name in ("mlp_hidden", "sliding_window"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name}: must be a positive integer or None, got {value!r}")
        if (
            isinstance(self.attn_sinks, bool)
            or not isinstance(self.attn_sinks, int)
            or self.attn_sinks < 0
        ):
            raise ValueError(f"attn_sinks: must be a non-negative integer, got {self.attn_sinks!r}")
        if self.attn_sinks and self.sliding_window is None:
            raise ValueError("attn_sinks: sinks only make sense with a sliding_window")
        for name in ("n_expert", "n_shared_expert"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")
        for name in ("n_expert_active", "moe_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.n_expert and self.n_expert_active > self.n_expert:
            raise ValueError(
                f"n_expert_active: must be at most n_expert ({self.n_expert}), "
                f"got {self.n_expert_active}"
            )
        if self.n_expert and self.n_expert_active == 1 and self.router_renormalize:
            raise ValueError(
                "router_renormalize: a renormalised top-1 gate is always 1 and passes no gradient "
                "to the router; use router_renormalize=False (Switch) or n_expert_active >= 2"
            )
        if self.expert_hidden is not None and (
            isinstance(self.expert_hidden, bool)
            or not isinstance(self.expert_hidden, int)
            or self.expert_hidden < 1
        ):
            raise ValueError(
                f"expert_hidden: must be a positive integer or None, got {self.expert_hidden!r}"
            )
        if not isinstance(self.router_renormalize, bool):
            raise ValueError(
                f"router_renormalize: must be True or False, got {self.router_renormalize!r}"
            )
        if self.capacity_factor is not None and not (
            isinstance(self.capacity_factor, (int, float))
            and not isinstance(self.capacity_factor, bool)
            and self.capacity_factor > 0
        ):
            raise ValueError(
                f"capacity_factor: must be a positive number or None, got {self.capacity_factor!r}"
            )
        for name in ("router_noise", "moe_aux_coef", "moe_z_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: must be a non-negative number, got {value!r}")
        for name in ("norm_eps", "init_std", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}: must be a positive number, got {value!r}")

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
        """Build a config from a dict, rejecting unknown keys by name.

        :param data: field names mapped to values, as written by :meth:`to_dict`.
        :returns: the validated config.
        :raises ValueError: when a key is not a field, or a value is invalid.
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
