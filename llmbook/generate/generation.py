"""Autoregressive generation for batches of prompts (left-padded), and log-probabilities of sequences."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.generate.sampling import check_sampling, sample_next
from llmbook.model.kv_cache import KVCache


@dataclass
class GenerationOutput:
    """Generated sequences, left-padded, with their masks and the sampled tokens' log-probabilities.

    Introduced in {doc}`/book/part2/08-batches-and-beams`.
    """

    sequences: torch.Tensor
    """``(B, P + N)`` ids: the left-padded prompts followed by the generated tokens."""
    attention_mask: torch.Tensor
    """``(B, P + N)`` bool, True at real tokens (prompt and generated, up to and including EOS)."""
    prompt_length: int
    """P: the padded prompt length; generated tokens start at this column."""
    logps: torch.Tensor
    """``(B, N)`` log-probability of each generated token (0 after a row finished)."""
    completion_mask: torch.Tensor
    """``(B, N)`` bool, True where a generated token counts (up to and including EOS)."""

    @property
    def completions(self) -> list[list[int]]:
        """The generated ids of each row, without padding (EOS included when it was produced)."""
        new = self.sequences[:, self.prompt_length :]
        return [row[m].tolist() for row, m in zip(new, self.completion_mask)]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts of different lengths, padding on the left so that they all end at the same column.

    :param prompts: lists of ids, each non-empty.
    :param pad_id: the id to pad with (it is never attended to).
    :returns: ``(ids (B, P), mask (B, P))``, mask True at real tokens.

    Introduced in {doc}`/book/part2/08-batches-and-beams`.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: need at least one prompt, and every prompt needs a token")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = True
    return ids, mask


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode, then put it back in the mode it was in (also on error).

    Generation must not use dropout, but a caller in the middle of training (an RL loop sampling
    rollouts, a training loop printing samples) expects its model to stay in train mode.

    :param model: the module.
    :returns: a context manager yielding ``model``.

    Introduced in {doc}`/book/part2/07-sampling`.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _crop(ids: torch.Tensor, mask: torch.Tensor, block_size: int):
    # Keep the last block_size columns: the model's context window slides over long sequences.
    return ids[:, -block_size:], mask[:, -block_size:]


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> GenerationOutput:
    """Generate continuations for a batch of prompts.

    Prompts are left-padded and the padding is masked (:func:`left_pad`), so every row computes what it
    would compute alone; a row stops at ``eos_id`` and is padded afterwards. With ``use_cache`` (and
    when prompt plus new tokens fit in ``block_size``) a :class:`~llmbook.model.kv_cache.KVCache` keeps
    every layer's keys and values, so each step runs the model on one new token; otherwise each step
    recomputes the last ``block_size`` tokens. Both give the same tokens. The model runs in eval mode
    and is put back in the mode it was in (:func:`eval_mode`).

    :param model: a language model with ``config.block_size`` whose forward takes ``attention_mask``.
    :param prompts: token-id lists (different lengths allowed).
    :param max_new_tokens: tokens to generate per row (N).
    :param temperature: sampling temperature, finite and ``>= 0``; 0 is greedy.
    :param top_k: top-k filter (None: off).
    :param top_p: nucleus filter (None: off).
    :param eos_id: stop a row after it produces this id (None: never stop early).
    :param pad_id: the padding id.
    :param generator: random generator, for reproducible samples.
    :param use_cache: use a KV cache when the whole sequence fits the context window.
    :returns: a :class:`GenerationOutput`.
    :raises ValueError: for a negative ``max_new_tokens`` or a sampling setting
        :func:`~llmbook.generate.sampling.check_sampling` refuses (before the model runs).

    Introduced in {doc}`/book/part2/07-sampling`.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    with eval_mode(model):
        device = next(model.parameters()).device
        ids, mask = left_pad(prompts, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        P, B = ids.size(1), ids.size(0)
        block_size = model.config.block_size
        done = torch.zeros(B, dtype=torch.bool, device=device)
        logps = torch.zeros(B, max_new_tokens, device=device)
        keep = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=device)
        cache = None
        if use_cache and P + max_new_tokens <= block_size:
            dtype = next(model.parameters()).dtype
            cache = KVCache(model.config, B, P + max_new_tokens, device=device, dtype=dtype)
        step_ids, n_cached = ids, 0
        for n in range(max_new_tokens):
            if cache is None:
                ctx_ids, ctx_mask = _crop(ids, mask, block_size)
                logits = model(ctx_ids, attention_mask=ctx_mask).logits[:, -1]  # (B, V)
            elif bool(mask.all()):
                # Nothing is padded: no mask to build, and attention takes its unmasked fast path.
                logits = model(step_ids, cache=cache).logits[:, -1]  # (B, V)
                n_cached = ids.size(1)
            else:
                # Positions count real tokens only, as in the uncached path.
                positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, n_cached:]
                out = model(step_ids, attention_mask=mask, positions=positions, cache=cache)
                logits = out.logits[:, -1]  # (B, V)
                n_cached = ids.size(1)
            next_ids, next_logps = sample_next(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
            keep[:, n] = ~done
            logps[:, n] = torch.where(done, torch.zeros_like(next_logps), next_logps)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            mask = torch.cat([mask, (~done)[:, None]], dim=1)
            step_ids = next_ids[:, None]
            if eos_id is not None:
                done = done | (next_ids == eos_id)
                if bool(done.all()):
                    logps, keep = logps[:, : n + 1], keep[:, : n + 1]
                    break
        return GenerationOutput(ids.cpu(), mask.cpu(), P, logps.cpu(), keep.cpu())


def sequence_logprobs(
    model: nn.Module,
    ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probability of every token of given sequences under a model (teacher forcing).

    ``logps[:, t]`` is $\\log p(\\text{ids}_{t+1} \\mid \\text{ids}_{\\le t})$; positions whose token is
    padding come out as 0. Sequences must fit in the context window.

    :param model: the language model.
    :param ids: ``(B, T)`` ids (left padding allowed).
    :param attention_mask: ``(B, T)`` bool, True at real tokens (None: all real).
    :param temperature: divide logits by this first, matching how the tokens were sampled; 0 scores
        under the untempered distribution, as :func:`~llmbook.generate.sampling.sample_next` does.
    :returns: ``(B, T - 1)`` log-probabilities (differentiable when grad is enabled).
    :raises ValueError: when ``temperature`` is not finite or is negative.

    Introduced in {doc}`/book/part2/08-batches-and-beams`.
    """
    check_sampling(temperature)
    logits = model(ids, attention_mask=attention_mask).logits[:, :-1].float()  # (B, T-1, V)
    if temperature > 0:
        logits = logits / temperature
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    if attention_mask is not None:
        logps = logps * attention_mask[:, 1:].to(logps.dtype)
    return logps
