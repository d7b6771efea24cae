"""Streaming past the context window with a fixed-size cache: attention sinks plus a sliding window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llmbook.generate.sampling import sample_next
from llmbook.model.attention import merge_heads, split_heads
from llmbook.model.kv_cache import RollingKVCache
from llmbook.model.rope import apply_rope


@dataclass
class StreamOutput:
    """What :func:`stream_generate` produced.

    Introduced in {doc}`/book/part3/06-streaming`.
    """

    tokens: list[int]
    """The generated ids."""
    logps: list[float]
    """Log-probability of each generated token."""
    cache_bytes: list[int] = field(default_factory=list)
    """Memory held by the cache after each step (constant by construction)."""


def _check(model: nn.Module) -> None:
    if model.config.pos_embedding != "rope":
        raise ValueError(
            "pos_embedding: streaming with cache-relative positions needs a rope model"
        )


@torch.no_grad()
def stream_generate(
    model: nn.Module,
    prompt: list[int],
    *,
    max_new_tokens: int,
    sinks: int = 4,
    window: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> StreamOutput:
    """Generate any number of tokens with constant memory (StreamingLLM).

    A :class:`~llmbook.model.kv_cache.RollingKVCache` keeps the first ``sinks`` tokens and the last
    ``window``; positions are assigned inside the cache, so RoPE never sees a distance the model was
    not trained on.

    :param model: a RoPE :class:`~llmbook.model.gpt.GPT`.
    :param prompt: the prompt ids (fed one at a time).
    :param max_new_tokens: how many tokens to generate.
    :param sinks: tokens kept from the start (S).
    :param window: recent tokens kept (W); default ``block_size - sinks``.
    :param temperature: sampling temperature; 0 is greedy.
    :param top_k: top-k filter.
    :param top_p: nucleus filter.
    :param generator: random generator.
    :param on_token: called as ``on_token(step, token)`` after each generated token.
    :returns: a :class:`StreamOutput`.

    Introduced in {doc}`/book/part3/06-streaming`.
    """
    _check(model)
    if not prompt:
        raise ValueError("prompt: needs at least one token")
    model.eval()
    device = next(model.parameters()).device
    window = window or model.config.block_size - sinks
    cache = RollingKVCache(
        model.config,
        1,
        sinks=sinks,
        window=window,
        device=device,
        dtype=next(model.parameters()).dtype,
    )
    logits = None
    for tok in prompt:
        logits = model(torch.tensor([[tok]], device=device), cache=cache).logits[:, -1]
    out = StreamOutput([], [])
    for step in range(max_new_tokens):
        ids, logps = sample_next(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
        tok = int(ids[0])
        out.tokens.append(tok)
        out.logps.append(float(logps[0]))
        out.cache_bytes.append(cache.nbytes)
        if on_token is not None:
            on_token(step, tok)
        logits = model(ids[:, None], cache=cache).logits[:, -1]
    return out


@torch.no_grad()
def streaming_nll(model: nn.Module, ids: torch.Tensor, *, sinks: int, window: int) -> torch.Tensor:
    """Negative log-likelihood of every next token of a long text, streamed through a rolling cache.

    :param model: a RoPE :class:`~llmbook.model.gpt.GPT`.
    :param ids: ``(T,)`` or ``(B, T)`` token ids, any length.
    :param sinks: tokens kept from the start (S).
    :param window: recent tokens kept (W).
    :returns: ``(B, T - 1)`` NLL in nats; entry ``t`` is $-\\log p(x_{t+1} \\mid \\text{cache after } x_t)$.

    Introduced in {doc}`/book/part3/05-sliding-window`.
    """
    _check(model)
    model.eval()
    ids = ids[None] if ids.dim() == 1 else ids
    device = next(model.parameters()).device
    ids = ids.to(device)
    cache = RollingKVCache(model.config, ids.size(0), sinks=sinks, window=window, device=device)
    nll = []
    for t in range(ids.size(1) - 1):
        logits = model(ids[:, t : t + 1], cache=cache).logits[:, -1].float()
        nll.append(-torch.log_softmax(logits, -1).gather(-1, ids[:, t + 1, None]).squeeze(-1))
    return torch.stack(nll, dim=1).cpu()


@torch.no_grad()
def sink_window_logits(
    model: nn.Module, ids: torch.Tensor, *, sinks: int, window: int
) -> torch.Tensor:
    """Full recomputation under the sink + window mask, with the rolling cache's positions: the
    reference that streaming must match.

    Query ``t`` attends to tokens ``0..S-1`` and the last ``W`` tokens up to ``t``, and every key gets
    its rank in that set as its position (sinks ``0..S-1``, window ``S..``), exactly what
    :class:`~llmbook.model.kv_cache.RollingKVCache` sees. All queries of a layer are computed at once by
    gathering each query's key set: ``O(T (S + W))`` memory, for tests and small experiments.

    :param model: a RoPE :class:`~llmbook.model.gpt.GPT`.
    :param ids: ``(B, T)`` token ids.
    :param sinks: S.
    :param window: W.
    :returns: logits ``(B, T, V)``.

    Introduced in {doc}`/book/part3/05-sliding-window`.
    """
    _check(model)
    model.eval()
    cfg = model.config
    B, T = ids.shape
    S, W = sinks, window
    device = ids.device
    t = torch.arange(T, device=device)[:, None]  # (T, 1)
    slot = torch.arange(S + W, device=device)[None, :]  # (1, S+W)
    first = (t - W + 1).clamp(min=S)  # first window token of each query
    j = torch.where(slot < S, slot, first + slot - S)  # (T, S+W) token held by each slot
    valid = j <= t
    j = j.clamp(max=T - 1)
    q_pos = torch.where(t[:, 0] < S, t[:, 0], (S + t[:, 0] - first[:, 0]))  # (T,)
    cos, sin = model.rope_tables(S + W, device)
    H, K = cfg.n_head, cfg.kv_heads
    x = model.drop(model.tok_emb(ids))  # (B, T, C)
    for block in model.blocks:
        a = block.attn
        h = block.attn_norm(x)
        q = apply_rope(split_heads(a.q_proj(h), H), cos[q_pos], sin[q_pos])  # (B, H, T, D)
        k = split_heads(a.k_proj(h), K)[:, :, j]  # (B, K, T, S+W, D)
        v = split_heads(a.v_proj(h), K)[:, :, j]
        k = apply_rope(k, cos[: S + W], sin[: S + W])  # slot s has position s
        if K != H:
            k = k.repeat_interleave(H // K, dim=1)
            v = v.repeat_interleave(H // K, dim=1)
        scores = torch.einsum("bhtd,bhtsd->bhts", q, k) / q.size(-1) ** 0.5
        scores = scores.masked_fill(~valid, float("-inf"))
        y = torch.einsum("bhts,bhtsd->bhtd", torch.softmax(scores, dim=-1), v)
        out = a.o_proj(merge_heads(y))
        x = x + out if block.residual else out
        m = block.mlp(block.mlp_norm(x))
        x = x + m if block.residual else m
    return model.lm_head(model.norm_f(x))
