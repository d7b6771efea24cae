"""Reference implementations that tests compare the package against (test-only, never imported by
``llmbook``). Each is written independently of the code path it checks: full recomputation instead of
a cache, a plain loop instead of batching."""

from __future__ import annotations

import torch
from torch import nn

from llmbook.model.attention import merge_heads, split_heads
from llmbook.model.rope import apply_rope


@torch.no_grad()
def sink_window_logits(
    model: nn.Module, ids: torch.Tensor, *, sinks: int, window: int
) -> torch.Tensor:
    """Full recomputation under the sink + window mask, with the rolling cache's positions: what
    streaming through :class:`~llmbook.model.kv_cache.RollingKVCache` must give.

    Query ``t`` attends to tokens ``0..S-1`` and the last ``W`` tokens up to ``t``, and every key gets
    its rank in that set as its position (sinks ``0..S-1``, window ``S..``). All queries of a layer are
    computed at once by gathering each query's key set: ``O(T (S + W))`` memory.

    :param model: a RoPE, dense :class:`~llmbook.model.gpt.GPT` in eval mode.
    :param ids: ``(B, T)`` token ids.
    :param sinks: S.
    :param window: W.
    :returns: logits ``(B, T, V)``.
    """
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


@torch.no_grad()
def greedy_loop(model: nn.Module, prompt: list[int], n_new: int) -> list[int]:
    """Greedy decoding of one prompt the slow way: a full forward pass over the last ``block_size``
    tokens for every new token, no cache, no padding, no batching.

    :param model: a language model in eval mode.
    :param prompt: the prompt ids.
    :param n_new: tokens to generate.
    :returns: the generated ids.
    """
    ids = list(prompt)
    block = model.config.block_size
    for _ in range(n_new):
        logits = model(torch.tensor([ids[-block:]])).logits[0, -1]  # (V,)
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]
