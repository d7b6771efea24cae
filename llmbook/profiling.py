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


OP_CATEGORIES: dict[str, tuple[str, ...]] = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention kernel": ("scaled_dot_product", "flash_attention"),
    "optimizer": ("adamw", "Optimizer.step"),
}
"""Operator-name fragments that put a profiled op into a category; everything else is ``"other"``
(elementwise work, copies, reductions, autograd bookkeeping)."""


def op_category(name: str) -> str:
    """The :data:`OP_CATEGORIES` category of a profiled operator.

    :param name: the operator's name as the profiler reports it (e.g. ``"aten::mm"``).
    :returns: the category, or ``"other"``.
    """
    lowered = name.lower()
    for category, fragments in OP_CATEGORIES.items():
        if any(
            lowered == f.lower() if f.startswith("aten::") else f.lower() in lowered
            for f in fragments
        ):
            return category
    return "other"


def time_by_category(fn, *, steps: int = 5, warmup: int = 2) -> dict[str, float]:
    """Profile ``steps`` calls of ``fn`` and split the self CPU time into :data:`OP_CATEGORIES`.

    Self time counts each microsecond once, in the operator that spent it, so the categories add up
    to the profiled total. The profiler adds a small cost to every operator, which inflates the many
    small ones ("other") a little; use the shares, not the absolute numbers, and time without the
    profiler for speed.

    :param fn: a function of no arguments, e.g. a training step.
    :param steps: profiled calls.
    :param warmup: unprofiled calls first.
    :returns: category to milliseconds per call, plus ``"total"``.

    Introduced in {doc}`/book/appendix/performance`.
    """
    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    out = {category: 0.0 for category in (*OP_CATEGORIES, "other")}
    for event in prof.key_averages():
        out[op_category(event.key)] += event.self_cpu_time_total / 1e3 / steps
    out["total"] = sum(out.values())
    return out
