"""AdamW with decay and no-decay parameter groups."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn


def _is_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_adamw_arguments(
    *, lr: float, weight_decay: float, betas: tuple[float, float], eps: float
) -> None:
    """Refuse AdamW settings that are not finite or out of range, naming the argument.

    :class:`torch.optim.AdamW` catches NaN but accepts an infinite rate, decay or epsilon.

    :param lr: the learning rate, finite and >= 0.
    :param weight_decay: finite and >= 0.
    :param betas: two finite numbers in [0, 1).
    :param eps: finite and > 0.
    :raises ValueError: one line naming the argument, e.g. ``lr: must be a finite number >= 0, got inf``.
    """
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not _is_finite(value) or value < 0:
            raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    if (
        not isinstance(betas, (tuple, list))
        or len(betas) != 2
        or not all(_is_finite(b) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas: must be two finite numbers in [0, 1), got {betas!r}")
    if not _is_finite(eps) or eps <= 0:
        raise ValueError(f"eps: must be a finite number > 0, got {eps!r}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into those that get weight decay and those that do not.

    Matrices (linear weights, embeddings: two or more dimensions) are decayed; vectors (biases, norm
    gains) are not, because shrinking a gain or a bias towards zero is not a sensible prior. A tied
    matrix appears once.

    :param model: the model.
    :param weight_decay: decoupled weight decay for the matrices.
    :returns: two groups for :class:`torch.optim.AdamW`.

    Introduced in {doc}`/book/part2/05-optimizer`.
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
    :raises ValueError: for a setting that is not finite or out of range
        (see :func:`check_adamw_arguments`).

    Introduced in {doc}`/book/part2/05-optimizer`.
    """
    check_adamw_arguments(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    # fused: the whole update in one kernel per group (CPU and CUDA), instead of a Python loop over
    # tensors or a chain of multi-tensor ops; same formula, torch's tests prove it.
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=True
    )


def check_optimizer_fields(config) -> None:
    """Check the optimizer and schedule fields that every training config shares.

    The fields are ``lr``, ``min_lr``, ``beta1``, ``beta2``, ``weight_decay`` and ``grad_clip``. This
    checks ranges only; the config has already checked types and finiteness
    (:func:`~llmbook.model.config.check_field_values`).

    :param config: a config with those fields (:class:`~llmbook.train.loop.TrainConfig`,
        :class:`~llmbook.align.sft.SFTConfig`).
    :raises ValueError: one line that starts with the field name.

    Introduced in {doc}`/book/part2/05-optimizer`.
    """
    if not config.lr > 0:
        raise ValueError(f"lr: must be positive, got {config.lr!r}")
    if not 0 <= config.min_lr <= config.lr:
        raise ValueError(f"min_lr: must be in [0, lr], got {config.min_lr!r}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"{name}: must be in [0, 1), got {getattr(config, name)!r}")
    for name in ("weight_decay", "grad_clip"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: must be >= 0, got {getattr(config, name)!r}")
