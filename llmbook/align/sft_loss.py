r"""The supervised fine-tuning loss: next-token cross-entropy on assistant tokens only.

A chat example is one token sequence, prompt and answer together; the model reads all of it but is
graded only on the tokens it must learn to produce (the loss mask). Two choices remain once the
tokens are chosen: how labels line up with logits (the shift, :func:`sft_labels`), and how the
per-token losses of a batch are averaged (:func:`sft_loss`, per token or per example).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmbook.data.batching import IGNORE_INDEX
from llmbook.train.loss import shift_labels

REDUCTIONS = ("token", "sequence")
"""How :func:`sft_loss` averages: over every counted token, or over examples of their mean token loss."""


def sft_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the logits, counted only where the *target* is an assistant token.

    ``labels[:, t] = input_ids[:, t + 1]`` when ``loss_mask[:, t + 1]`` is True, else
    ``IGNORE_INDEX``; the last column has no next token and is always ignored. The mask is read at
    the target, not at the input: the last prompt token (e.g. the assistant-turn marker) is the
    position whose logits must predict the first answer token.

    :param input_ids: ``(B, T)`` token ids.
    :param loss_mask: bool ``(B, T)``, True on the tokens the model must learn to produce.
    :returns: ``(B, T)`` long labels.
    :raises ValueError: when the shapes differ or are not 2-D.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected (B, T), got shape {tuple(input_ids.shape)}")
    if tuple(loss_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"loss_mask: expected shape {tuple(input_ids.shape)}, got {tuple(loss_mask.shape)}"
        )
    return shift_labels(input_ids.long(), mask=loss_mask.bool())


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # fp32 whatever the autocast dtype: log-softmax over V in bf16 loses the small differences
    # between near-tied logits that the gradient is made of.
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ValueError(
            f"labels: expected shape {tuple(logits.shape[:2])} to match logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    B, T, V = logits.shape
    flat = F.cross_entropy(
        logits.float().reshape(B * T, V),
        labels.reshape(B * T),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return flat.view(B, T)  # (B, T), zero at ignored positions


def _group_sums(
    values: torch.Tensor, counted: torch.Tensor, document_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    # Sums and counts of the counted values per sequence: a row, or a document of a packed row.
    B, T = values.shape
    if document_ids is None:
        document_ids = torch.arange(B, device=values.device)[:, None].expand(B, T)
    elif tuple(document_ids.shape) != (B, T):
        raise ValueError(f"document_ids: expected shape {(B, T)}, got {tuple(document_ids.shape)}")
    ids = document_ids[counted]  # (N,)
    _, inverse = torch.unique(ids, return_inverse=True)  # sorted by document id
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = values.new_zeros(n_groups).index_add(0, inverse, values[counted])  # (S,)
    counts = torch.bincount(inverse, minlength=n_groups)  # (S,)
    return sums, counts


def sequence_losses(
    logits: torch.Tensor, labels: torch.Tensor, *, document_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's mean token loss, and how many tokens it counts.

    A sequence is a row of the batch, or, with ``document_ids``, one document of a packed row.
    Sequences with no counted token are left out; the others come in increasing order of row index
    (or of document id).

    :param logits: ``(B, T, V)``.
    :param labels: ``(B, T)``, aligned with ``logits`` (see :func:`sft_labels`).
    :param document_ids: optional long ``(B, T)``: which sequence each position belongs to (e.g.
        :attr:`~llmbook.align.batching.SFTBatch.document_ids` of a packed batch).
    :returns: ``(losses, n_tokens)``, each ``(S,)``: mean loss in nats (fp32, differentiable) and
        the number of counted tokens of each of the ``S`` sequences.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """
    counted = labels != IGNORE_INDEX  # (B, T)
    sums, counts = _group_sums(_token_losses(logits, labels), counted, document_ids)
    return sums / counts, counts


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "token",
    document_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Masked cross-entropy for SFT, averaged per token or per sequence.

    With $\ell_{i,t} = -\log p_\theta(y_{i,t} \mid y_{i,<t})$ the loss of counted token $t$ of
    example $i$, $n_i$ the number of counted tokens of example $i$, and $B$ the number of examples
    with at least one:

    $$\mathcal{L}_\text{token} = \frac{1}{\sum_j n_j}\sum_{i}\sum_{t=1}^{n_i} \ell_{i,t},
    \qquad
    \mathcal{L}_\text{sequence} = \frac{1}{B}\sum_{i}\frac{1}{n_i}\sum_{t=1}^{n_i} \ell_{i,t}.$$

    **The bias of each.** Differentiate: every token's gradient $\nabla\ell_{i,t}$ enters with the
    weight $w_{i,t} = 1/\sum_j n_j$ (token) or $1/(B\,n_i)$ (sequence). Summing over the tokens of
    example $i$, its total weight is $n_i/\sum_j n_j$ under the token mean, proportional to its
    answer length: an example with a 40-token answer pulls 40 times as hard as one with a 1-token
    answer, so long answers dominate the update. Under the sequence mean each example weighs
    exactly $1/B$, whatever its length; the price moves to the tokens, each worth
    $1/(B\,n_i)$, so a token of a short answer counts more than a token of a long one, and the
    loss is no longer the average per-token log-likelihood the perplexity is made of. When all
    $n_i$ are equal the two coincide.

    Rows (or documents) with no counted token are skipped by the sequence mean: they carry no
    label, and counting them as zero would shrink the loss by an amount that depends on the batch.

    :param logits: ``(B, T, V)``, any float dtype; the loss is computed in fp32.
    :param labels: ``(B, T)``, aligned with ``logits`` (see :func:`sft_labels`), ``IGNORE_INDEX``
        where a position does not count.
    :param reduction: ``"token"`` or ``"sequence"`` (see :data:`REDUCTIONS`).
    :param document_ids: optional long ``(B, T)`` for packed rows: with ``"sequence"``, each
        document is an example instead of each row (see :func:`sequence_losses`).
    :returns: ``(loss, metrics)``; metrics (detached): ``n_tokens`` counted, ``n_sequences`` with at
        least one counted token, ``loss_sum`` the sum of the token losses in nats.
    :raises ValueError: for an unknown reduction, mismatched shapes, or a batch with no counted token.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {REDUCTIONS}, got {reduction!r}")
    token_losses = _token_losses(logits, labels)  # (B, T)
    counted = labels != IGNORE_INDEX  # (B, T)
    n_tokens = counted.sum()
    if int(n_tokens) == 0:
        raise ValueError("labels: every position is IGNORE_INDEX; there is nothing to average")
    loss_sum = token_losses.sum()
    sums, counts = _group_sums(token_losses, counted, document_ids)  # (S,), (S,)
    if reduction == "token":
        loss = loss_sum / n_tokens
    else:
        loss = (sums / counts).mean()
    metrics = {
        "n_tokens": n_tokens.detach(),
        "n_sequences": torch.tensor(counts.numel(), device=counts.device),
        "loss_sum": loss_sum.detach(),
    }
    return loss, metrics
