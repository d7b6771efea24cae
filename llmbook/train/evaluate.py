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

    Introduced in {doc}`/book/part2/09-evaluation`.
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
    r"""Loss over the whole split, in deterministic non-overlapping windows.

    Bits per byte scale the mean loss per token by the split's tokens per byte:

    $$\text{bpb} = \frac{\hat{\mathcal{L}}}{\ln 2}\cdot\frac{N_\text{tokens}}{N_\text{bytes}}$$

    where $\hat{\mathcal{L}}$ is the mean loss over the targets evaluated and $N_\text{tokens}$,
    $N_\text{bytes}$ count the whole of ``ids``. Over the full split this is the total loss in bits
    divided by the bytes; under ``max_batches`` the sampled mean estimates the split's mean, and the
    ratio stays the split's, so the estimate does not shrink with the number of batches sampled.

    :param model: a language model with a ``config.block_size``, called as ``model(x)`` and returning
        an output with ``.logits`` of shape ``(B, T, V)``.
    :param ids: the 1-D token stream of the split.
    :param block_size: window length (default: the model's ``config.block_size``).
    :param batch_size: windows per forward pass.
    :param n_bytes: bytes of text the whole of ``ids`` spans, e.g. ``len(tokenizer.decode_bytes(ids))``
        (default: one byte per token, as with the byte tokenizer).
    :param max_batches: a quick estimate from this many batches spread evenly over the split (used
        during training); None = all.
    :param bos_id: start every window with this token (for models trained that way, see
        :func:`~llmbook.data.batching.random_batch`).
    :returns: the :class:`EvalResult`.
    :raises ValueError: when ``n_bytes`` is not a positive integer.

    Introduced in {doc}`/book/part2/09-evaluation`.
    """
    if n_bytes is not None and (
        isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 1
    ):
        raise ValueError(f"n_bytes: must be a positive integer, got {n_bytes!r}")
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
    # The split's tokens per byte, not the evaluated targets' count: a subsample's mean loss stands
    # for the whole split, and so must the byte count it is divided by.
    bpb = bits_per_byte(loss) if n_bytes is None else bits_per_byte(loss, len(ids), n_bytes)
    return EvalResult(loss=loss, perplexity=math.exp(loss), bits_per_byte=bpb, n_tokens=count)
