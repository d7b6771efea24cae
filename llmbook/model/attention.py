"""Scaled dot-product attention (readable and fused), one causal head, and multi-head attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.config import ModelConfig
from llmbook.model.rope import apply_rope


def causal_mask(T: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The boolean causal mask: position ``i`` may attend to ``j`` exactly when ``j <= i``.

    :param T: sequence length.
    :param device: where to allocate the mask.
    :returns: a ``(T, T)`` bool tensor, True where attention is allowed.

    Introduced in {doc}`/book/part1/02-attention-by-hand`.
    """
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Scaled dot-product attention written out step by step.

    $$\operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{D}} + M\right)V$$

    where $M$ is $0$ where attention is allowed and $-\infty$ elsewhere. A query row whose every key is
    masked has no defined softmax and yields NaN, exactly as in the fused kernel's math path.

    :param q: queries, ``(..., T, D)``.
    :param k: keys, ``(..., S, D)``.
    :param v: values, ``(..., S, Dv)``.
    :param mask: optional bool mask broadcastable to ``(..., T, S)``, True where attention is allowed.
    :param causal: also forbid each query from attending to later keys (requires ``T == S``).
    :param dropout_p: dropout on the attention weights (pass 0.0 at evaluation).
    :param return_weights: also return the attention weights.
    :returns: the output ``(..., T, Dv)``, and the weights ``(..., T, S)`` when asked.

    Introduced in {doc}`/book/part1/02-attention-by-hand`.
    """
    D = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (..., T, S)
    if causal:
        T, S = scores.shape[-2:]
        if T != S:
            raise ValueError(f"causal: needs as many queries as keys, got T={T}, S={S}")
        scores = scores.masked_fill(~causal_mask(T, device=scores.device), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Low-precision scores are normalised in float32 (as fused kernels do inside), then cast back.
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    weights = weights.to(v.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (..., T, Dv)
    return (out, weights) if return_weights else out


REFERENCE_MAX_KEYS = 256
"""The longest key sequence for which ``"auto"`` may pick the written-out attention. Measured on the
book's CPU in bfloat16 (4 heads of width 32, batch 12): the written-out path is about 3x faster at 64
keys, the two are level between 192 and 384, and the fused kernel is about 2x faster at 512. The
written-out path also stores the ``T x S`` weights, which the fused kernel never does."""


def resolve_attn_impl(impl: str, q: torch.Tensor, n_keys: int) -> str:
    """Turn ``"auto"`` into a concrete attention implementation for these tensors.

    ``"auto"`` picks :func:`attention_reference` for bfloat16 or float16 on the CPU (up to
    :data:`REFERENCE_MAX_KEYS` keys) and the fused kernel everywhere else. The reason is measured, not
    assumed: PyTorch's CPU flash kernel runs its backward pass in reduced precision several times slower
    than in float32, while the written-out path is a few batched matmuls that do get faster in
    bfloat16 (the Performance appendix times both). On GPUs the fused (flash) kernel wins.

    :param impl: ``"auto"``, ``"fused"`` or ``"reference"``.
    :param q: the queries (their device and dtype decide).
    :param n_keys: the number of keys ``S``.
    :returns: ``"fused"`` or ``"reference"``.

    Introduced in {doc}`/book/appendix/performance`.
    """
    if impl != "auto":
        return impl
    low_precision = q.dtype in (torch.bfloat16, torch.float16)
    if q.device.type == "cpu" and low_precision and n_keys <= REFERENCE_MAX_KEYS:
        return "reference"
    return "fused"


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    impl: str = "fused",
) -> torch.Tensor:
    """Attention through either implementation: the fused PyTorch kernel or :func:`attention_reference`.

    The fused path calls :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a
    flash, memory-efficient or math kernel for the device; the tests prove both paths equal.
    ``impl="auto"`` chooses between them with :func:`resolve_attn_impl`.

    :param q: queries, ``(..., T, D)``.
    :param k: keys, ``(..., S, D)``.
    :param v: values, ``(..., S, Dv)``.
    :param mask: optional bool mask broadcastable to ``(..., T, S)``, True where attention is allowed.
    :param causal: forbid attention to later positions.
    :param dropout_p: dropout on the attention weights.
    :param impl: ``"fused"``, ``"reference"`` or ``"auto"``.
    :returns: the output ``(..., T, Dv)``.

    Introduced in {doc}`/book/part1/02-attention-by-hand`.
    """
    if impl not in ("auto", "fused", "reference"):
        raise ValueError(f"impl: must be 'auto', 'fused' or 'reference', got {impl!r}")
    impl = resolve_attn_impl(impl, q, k.size(-2))
    if impl == "reference":
        return attention_reference(q, k, v, mask=mask, causal=causal, dropout_p=dropout_p)
    if causal and mask is not None:
        # The fused kernel takes one or the other; fold the causal rule into the explicit mask.
        mask = mask & causal_mask(q.size(-2), device=q.device)
        causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal
    )


class CausalSelfAttentionHead(nn.Module):
    """A single causal self-attention head: project to one query, key and value each, then attend.

    :param n_embd: input width (C).
    :param head_dim: width of the head (D).
    :param bias: whether the projections carry biases.

    Introduced in {doc}`/book/part1/03-one-head`.
    """

    def __init__(self, n_embd: int, head_dim: int, *, bias: bool = False) -> None:
        super().__init__()
        self.q_proj = nn.Linear(n_embd, head_dim, bias=bias)
        self.k_proj = nn.Linear(n_embd, head_dim, bias=bias)
        self.v_proj = nn.Linear(n_embd, head_dim, bias=bias)

    def forward(self, x: torch.Tensor, *, return_weights: bool = False):
        """Attend causally over the sequence.

        :param x: input ``(B, T, C)``.
        :param return_weights: also return the ``(B, T, T)`` attention weights.
        :returns: the head output ``(B, T, D)`` (and the weights when asked).
        """
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # each (B, T, D)
        return attention_reference(q, k, v, causal=True, return_weights=return_weights)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Split the channel dimension into heads and move heads before time.

    :param x: ``(B, T, C)`` with ``C`` divisible by ``n_head``.
    :param n_head: number of heads (H).
    :returns: ``(B, H, T, D)`` with ``D = C / H``; a view when the input is contiguous.

    Introduced in {doc}`/book/part1/04-multi-head`.
    """
    B, T, C = x.shape
    if C % n_head:
        raise ValueError(f"n_head: {n_head} does not divide the channel size {C}")
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Undo :func:`split_heads`: concatenate the heads back into channels.

    :param x: ``(B, H, T, D)``.
    :returns: ``(B, T, H * D)``.

    Introduced in {doc}`/book/part1/04-multi-head`.
    """
    B, H, T, D = x.shape
    return x.transpose(1, 2).contiguous().view(B, T, H * D)  # (B, T, C)


def build_attention_mask(
    T_q: int,
    T_k: int,
    *,
    offset: int = 0,
    key_valid: torch.Tensor | None = None,
    window: int | None = None,
    sinks: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The boolean mask for queries at indices ``offset .. offset + T_q - 1`` over keys ``0 .. T_k - 1``.

    A query at index ``i`` may attend to key ``j`` when ``j <= i`` (causal), and, with a window, when
    ``j > i - window`` or ``j < sinks`` (sliding window with attention sinks). With ``key_valid``,
    padding keys are hidden, and the window and the sinks count *real* tokens: with $r_j$ the number of
    real tokens before column $j$, key ``j`` is in the window of query ``i`` when $r_i - r_j < W$ and
    is a sink when $r_j < S$. A left-padded row therefore keeps as sinks its own first tokens, not the
    padding columns, and computes what the sequence computes alone. A padding query still sees itself,
    so that no row is empty (a softmax over nothing is NaN, and NaN times zero would leak into real
    rows).

    :param T_q: number of queries.
    :param T_k: number of keys.
    :param offset: index of the first query (the number of cached tokens).
    :param key_valid: optional bool ``(B, T_k)``, True at real tokens.
    :param window: attend only to the last ``window`` real tokens (None: all).
    :param sinks: with a window, the first ``sinks`` real tokens are always visible.
    :param device: where to allocate.
    :returns: bool ``(B or 1, 1, T_q, T_k)``, True where attention is allowed.

    Introduced in {doc}`/book/part3/05-sliding-window`.
    """
    q_idx = offset + torch.arange(T_q, device=device)[:, None]  # (T_q, 1)
    k_idx = torch.arange(T_k, device=device)[None, :]  # (1, T_k)
    allowed = (k_idx <= q_idx)[None]  # (1, T_q, T_k)
    if window is not None:
        if key_valid is None:
            q_pos, k_pos = q_idx[None], k_idx[None]  # every column is a real token
        else:
            # Real-token index of each column (a padding column gets its predecessor's; it is hidden).
            real = key_valid.to(device=device, dtype=torch.long).cumsum(-1) - 1  # (B, T_k)
            q_pos = real[:, offset : offset + T_q, None]  # (B, T_q, 1)
            k_pos = real[:, None, :]  # (B, 1, T_k)
        allowed = allowed & ((k_pos > q_pos - window) | (k_pos < sinks))  # (B or 1, T_q, T_k)
    allowed = allowed[:, None]  # (B or 1, 1, T_q, T_k)
    if key_valid is not None:
        allowed = (allowed & key_valid[:, None, None, :].bool()) | (k_idx == q_idx)
    return allowed


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention, with grouped-query heads, RoPE and a KV cache as options.

    Queries have ``H`` heads; keys and values have ``K = config.kv_heads`` heads, each shared by
    ``H / K`` query heads (grouped-query attention; ``K = H`` is plain multi-head attention). Projection
    names follow Hugging Face's Llama (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) so weights map
    without a rename table.

    :param config: the model config (uses ``n_embd``, ``n_head``, ``n_kv_head``, ``bias``, ``dropout``,
        ``attn_impl``).

    Introduced in {doc}`/book/part1/04-multi-head`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        C, D = config.n_embd, config.head_dim
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.dropout = config.dropout
        self.impl = config.attn_impl
        self.q_proj = nn.Linear(C, self.n_head * D, bias=config.bias)
        self.k_proj = nn.Linear(C, self.n_kv_head * D, bias=config.bias)
        self.v_proj = nn.Linear(C, self.n_kv_head * D, bias=config.bias)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        rope: tuple | None = None,
        cache=None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Attend causally (or under an explicit mask).

        :param x: input ``(B, T, C)``.
        :param mask: optional bool mask broadcastable to ``(B, H, T, S)``, True where allowed; when
            given it replaces the causal rule (build it with :func:`build_attention_mask`).
        :param rope: optional rotary tables ``(q_cos, q_sin, k_cos, k_sin)`` from the model.
        :param cache: optional :class:`~llmbook.model.kv_cache.KVCache` or
            :class:`~llmbook.model.kv_cache.RollingKVCache`.
        :param layer: this layer's index in the cache.
        :returns: ``(B, T, C)``.
        """
        B, T, _ = x.shape
        q = split_heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.n_kv_head)  # (B, K, T, D)
        v = split_heads(self.v_proj(x), self.n_kv_head)  # (B, K, T, D)
        if cache is not None and cache.rotates_keys:
            # Rolling cache: keys are stored raw and rotated by their position inside the cache.
            k, v = cache.update(layer, k, v)  # (B, K, S, D)
            q = apply_rope(q, rope[0], rope[1])
            k = apply_rope(k, rope[2], rope[3])
        else:
            if rope is not None:
                q = apply_rope(q, rope[0], rope[1])
                k = apply_rope(k, rope[2], rope[3])
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, K, S, D)
        causal = mask is None and cache is None
        dropout_p = self.dropout if self.training else 0.0
        impl = resolve_attn_impl(self.impl, q, k.size(-2))
        if self.n_kv_head != self.n_head and impl == "fused":
            # The fused kernel shares each k/v head with its group of query heads without copying.
            if causal:
                y = F.scaled_dot_product_attention(
                    q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=True
                )
            else:
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=True
                )
        else:
            if self.n_kv_head != self.n_head:
                group = self.n_head // self.n_kv_head
                k = k.repeat_interleave(
                    group, dim=1
                )  # (B, H, S, D): head h reads k/v head h // group
                v = v.repeat_interleave(group, dim=1)
            y = scaled_dot_product_attention(
                q, k, v, mask=mask, causal=causal, dropout_p=dropout_p, impl=impl
            )  # (B, H, T, D)
        return self.resid_dropout(self.o_proj(merge_heads(y)))  # (B, T, C)
