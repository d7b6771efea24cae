"""Scaled dot-product attention (readable and fused), one causal head, and multi-head attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.config import ModelConfig


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
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (..., T, Dv)
    return (out, weights) if return_weights else out


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

    :param q: queries, ``(..., T, D)``.
    :param k: keys, ``(..., S, D)``.
    :param v: values, ``(..., S, Dv)``.
    :param mask: optional bool mask broadcastable to ``(..., T, S)``, True where attention is allowed.
    :param causal: forbid attention to later positions.
    :param dropout_p: dropout on the attention weights.
    :param impl: ``"fused"`` or ``"reference"``.
    :returns: the output ``(..., T, Dv)``.

    Introduced in {doc}`/book/part1/02-attention-by-hand`.
    """
    if impl == "reference":
        return attention_reference(q, k, v, mask=mask, causal=causal, dropout_p=dropout_p)
    if impl != "fused":
        raise ValueError(f"impl: must be 'fused' or 'reference', got {impl!r}")
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


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with an output projection.

    All heads are computed in one batched matmul: a single ``(C, C)`` projection per q, k and v, split
    into ``H`` heads of width ``D``. Projection names follow Hugging Face's Llama
    (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) so weights map without a rename table.

    :param config: the model config (uses ``n_embd``, ``n_head``, ``bias``, ``dropout``, ``attn_impl``).

    Introduced in {doc}`/book/part1/04-multi-head`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.impl = config.attn_impl
        self.q_proj = nn.Linear(C, C, bias=config.bias)
        self.k_proj = nn.Linear(C, C, bias=config.bias)
        self.v_proj = nn.Linear(C, C, bias=config.bias)
        self.o_proj = nn.Linear(C, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend causally, optionally also under a padding mask.

        :param x: input ``(B, T, C)``.
        :param mask: optional bool mask broadcastable to ``(B, H, T, T)``, True where allowed.
        :returns: ``(B, T, C)``.
        """
        q = split_heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.n_head)  # (B, H, T, D)
        v = split_heads(self.v_proj(x), self.n_head)  # (B, H, T, D)
        y = scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            impl=self.impl,
        )  # (B, H, T, D)
        return self.resid_dropout(self.o_proj(merge_heads(y)))  # (B, T, C)
