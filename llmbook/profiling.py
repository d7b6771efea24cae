"""Profiling one training step with :mod:`torch.profiler`."""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile


def profile_step(
    model: nn.Module,
    idx: torch.Tensor,
    targets: torch.Tensor,
    *,
    warmup: int = 1,
) -> profile:
    """Profile one forward and backward pass of a language model.

    The model runs ``warmup`` unprofiled steps first, so one-off costs (allocator growth, kernel
    selection) do not pollute the table.

    :param model: a module called as ``model(idx, targets)`` returning ``(logits, loss)``.
    :param idx: input ids ``(B, T)``.
    :param targets: target ids ``(B, T)``.
    :param warmup: unprofiled steps before the profiled one.
    :returns: the finished profiler; ``.key_averages().table(...)`` gives the familiar table.

    Introduced in {doc}`/book/part0/02-environment`.
    """
    for _ in range(warmup):
        _, loss = model(idx, targets)
        loss.backward()
        model.zero_grad(set_to_none=True)
    activities = [ProfilerActivity.CPU]
    if idx.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        _, loss = model(idx, targets)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return prof
