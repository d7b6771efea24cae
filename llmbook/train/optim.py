"""AdamW with decay and no-decay parameter groups."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into those that get weight decay and those that do not.

    Matrices (linear weights, embeddings: two or more dimensions) are decayed; vectors (biases, norm
    gains) are not, because shrinking a gain or a bias towards zero is not a sensible prior. A tied
    matrix appears once.

    :param model: the model.
    :param weight_decay: decoupled weight decay for the matrices.
    :returns: two groups for :class:`torch.optim.AdamW`.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied tensor once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`.

    :param model: the model.
    :param lr: peak learning rate (the schedule scales it).
    :param weight_decay: decay for matrices.
    :param betas: Adam's moment decay rates.
    :param eps: Adam's epsilon.
    :returns: the optimizer.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    # fused: the whole update in one kernel per group (CPU and CUDA), instead of a Python loop over
    # tensors or a chain of multi-tensor ops; same formula, torch's tests prove it.
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=True
    )
