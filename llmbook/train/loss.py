"""Language-model losses: cross-entropy with label shifting and ``ignore_index``; bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmbook.data.batching import IGNORE_INDEX


def shift_labels(input_ids: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Targets for next-token prediction: ``labels[:, t] = input_ids[:, t + 1]``.

    The last position has no next token and gets ``IGNORE_INDEX``; so do positions whose *target* is
    masked out (``mask`` False), e.g. padding or, in Part 6, the prompt.

    :param input_ids: ``(B, T)`` ids.
    :param mask: optional bool ``(B, T)``, True where a token counts as a target.
    :returns: ``(B, T)`` labels.

    Introduced in {doc}`/book/part2/03-loss`.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    if mask is not None:
        labels[:, :-1][~mask[:, 1:].bool()] = IGNORE_INDEX
    return labels


def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Mean next-token cross-entropy over the positions that count.

    $$\mathcal{L} = -\frac{1}{|M|}\sum_{(b,t)\in M} \log \operatorname{softmax}(z_{b,t})_{y_{b,t}}$$

    with $M$ the positions whose label is not ``ignore_index``. ``labels`` are already aligned with
    ``logits`` (use :func:`shift_labels`).

    :param logits: ``(B, T, V)``.
    :param labels: ``(B, T)``.
    :param ignore_index: label value left out of the mean.
    :returns: ``(loss, metrics)``; metrics (detached): ``loss_sum`` in nats, ``n_tokens`` counted.
    :raises ValueError: when no position counts.

    Introduced in {doc}`/book/part2/03-loss`.
    """
    V = logits.size(-1)
    flat_labels = labels.reshape(-1)
    n = (flat_labels != ignore_index).sum()
    if int(n) == 0:
        raise ValueError("labels: every position is ignore_index; there is nothing to average")
    loss_sum = F.cross_entropy(
        logits.reshape(-1, V).float(), flat_labels, ignore_index=ignore_index, reduction="sum"
    )
    loss = loss_sum / n
    return loss, {"loss_sum": loss_sum.detach(), "n_tokens": n.detach()}


def bits_per_byte(
    loss_nats: float, n_tokens: int | None = None, n_bytes: int | None = None
) -> float:
    r"""Convert a mean loss in nats per token to bits per byte.

    $$\text{bpb} = \frac{\mathcal{L}\cdot N_\text{tokens}}{N_\text{bytes}\,\ln 2}$$

    With the byte tokenizer a token is a byte, and bpb is just $\mathcal{L}/\ln 2$; with BPE (Part 4) the
    token and byte counts differ, which is why bpb, not loss per token, compares tokenizers fairly.

    :param loss_nats: mean loss per token, in nats.
    :param n_tokens: number of tokens the loss averaged over (omit for bytes = tokens).
    :param n_bytes: number of bytes those tokens span.
    :returns: bits per byte.

    Introduced in {doc}`/book/part2/04-baselines`.
    """
    ratio = 1.0 if n_tokens is None else n_tokens / n_bytes
    return loss_nats * ratio / math.log(2)
