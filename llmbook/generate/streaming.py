"""Streaming past the context window with a fixed-size cache: attention sinks plus a sliding window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llmbook.generate.generation import eval_mode
from llmbook.generate.sampling import check_sampling, sample_next
from llmbook.model.kv_cache import RollingKVCache


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
    :raises ValueError: for a non-RoPE model, an empty prompt, a negative ``max_new_tokens``, a bad
        cache size or a sampling setting :func:`~llmbook.generate.sampling.check_sampling` refuses.

    Introduced in {doc}`/book/part3/06-streaming`.
    """
    _check(model)
    if not prompt:
        raise ValueError("prompt: needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    if window is None:
        window = model.config.block_size - sinks
    param = next(model.parameters())
    cache = RollingKVCache(
        model.config, 1, sinks=sinks, window=window, device=param.device, dtype=param.dtype
    )
    out = StreamOutput([], [])
    with eval_mode(model):
        logits = None
        for tok in prompt:
            logits = model(torch.tensor([[tok]], device=param.device), cache=cache).logits[:, -1]
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
    :returns: ``(B, T - 1)`` float32 NLL in nats; entry ``t`` is
        $-\\log p(x_{t+1} \\mid \\text{cache after } x_t)$, computed in float32 whatever the model's dtype.
    :raises ValueError: for a non-RoPE model, fewer than 2 tokens, or a bad cache size.

    Introduced in {doc}`/book/part3/05-sliding-window`.
    """
    _check(model)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.size(1) < 2:
        raise ValueError(f"ids: need at least 2 tokens to score a next token, got {ids.size(1)}")
    param = next(model.parameters())
    ids = ids.to(param.device)
    # The cache must match the model's dtype: the cache write refuses to mix bf16 and float32.
    cache = RollingKVCache(
        model.config,
        ids.size(0),
        sinks=sinks,
        window=window,
        device=param.device,
        dtype=param.dtype,
    )
    nll = []
    with eval_mode(model):
        for t in range(ids.size(1) - 1):
            # log-softmax in float32: bf16 keeps 3 significant digits, too few for a loss.
            logits = model(ids[:, t : t + 1], cache=cache).logits[:, -1].float()  # (B, V)
            nll.append(-torch.log_softmax(logits, -1).gather(-1, ids[:, t + 1, None]).squeeze(-1))
    return torch.stack(nll, dim=1).cpu()
