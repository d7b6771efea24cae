"""Validation: loss over a whole split, perplexity and bits per byte."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.data.batching import eval_batches
from llmbook.train.loss import bits_per_byte


@dataclass(frozen=True)
class EvalResult:
    """Loss of a model over a token stream.

    Introduced in {doc}`/book/part2/06-evaluation`.
    """

    loss: float
    """Mean cross-entropy in nats per token."""
    perplexity: float
    """$e^{\\text{loss}}$: the effective number of equally likely next tokens."""
    bits_per_byte: float
    """Loss in bits per byte of text."""
    n_tokens: int
    """How many targets the mean is over."""


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    block_size: int | None = None,
    batch_size: int = 64,
    n_bytes: int | None = None,
    max_batches: int | None = None,
    bos_id: int | None = None,
) -> EvalResult:
    """Loss over the whole split, in deterministic non-overlapping windows.

    :param model: a language model called as ``model(x, y)`` returning ``(logits, loss)``.
    :param ids: the 1-D token stream of the split.
    :param block_size: window length (default: the model's ``config.block_size``).
    :param batch_size: windows per forward pass.
    :param n_bytes: bytes of text the tokens span (default: one byte per token, the byte tokenizer).
    :param max_batches: a quick estimate from this many batches spread evenly over the split (used
        during training); None = all.
    :param bos_id: start every window with this token (for models trained that way, see
        :func:`~llmbook.data.batching.random_batch`).
    :returns: the :class:`EvalResult`.

    Introduced in {doc}`/book/part2/06-evaluation`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    T = block_size or model.config.block_size
    total, count = 0.0, 0
    n_targets = len(ids) if bos_id is not None else max(len(ids) - 1, 0)
    n_batches = -(-n_targets // (T * batch_size))
    chosen = None
    if max_batches is not None and max_batches < n_batches:
        # Evenly spaced batches, so a quick estimate sees the whole split (its start is not typical).
        chosen = set(torch.linspace(0, n_batches - 1, max_batches).round().long().tolist())
    for i, (x, y) in enumerate(eval_batches(ids, batch_size, T, device=device, bos_id=bos_id)):
        if chosen is not None and i not in chosen:
            continue
        logits = model(x).logits
        V = logits.size(-1)
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, V).float(), y.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += int((y != -100).sum())
    model.train(was_training)
    loss = total / max(count, 1)
    bpb = bits_per_byte(loss, count, n_bytes if n_bytes is not None else count)
    return EvalResult(loss=loss, perplexity=math.exp(loss), bits_per_byte=bpb, n_tokens=count)
