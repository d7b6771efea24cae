"""Where the time goes: profiling a training step, and the benchmarks that explain llmbook's speed.

:mod:`llmbook.benchmark` measures llmbook against reference implementations; this module holds the
measurements behind its design choices: the attention kernel per dtype, the split of a step's time
into matmuls and the rest, and what :func:`torch.compile` would add.
"""

from __future__ import annotations

import time
from functools import partial

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from llmbook.benchmark import (
    NANOGPT_CPU,
    NANOGPT_CPU_BATCH,
    hf_train_step,
    llama_style,
    llmbook_train_step,
)
from llmbook.model.counting import flops_per_token
from llmbook.timing import interleaved, median, time_steps_and_peak


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

    Introduced in {doc}`/book/part0/04-mixed-precision-profiling`.
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


def _attention_calls(q, k, v, grad, impl: str, calls: int) -> None:
    from llmbook.model.attention import scaled_dot_product_attention

    for _ in range(calls):
        scaled_dot_product_attention(q, k, v, causal=True, impl=impl).backward(grad)


def bench_attention(
    *, lengths: tuple[int, ...] = (64, 256), repeats: int = 5, batch_size: int = NANOGPT_CPU_BATCH
) -> dict:
    """Causal attention forward and backward: the fused kernel against the written-out path.

    Shapes follow the nanoGPT configuration (4 heads of width 32, batch 12) at each context length, in
    float32 and in bfloat16. This is the measurement behind ``attn_impl="auto"``
    (:func:`llmbook.model.attention.resolve_attn_impl`).

    :param lengths: context lengths T.
    :param repeats: interleaved rounds.
    :param batch_size: sequences per call.
    :returns: ``rows`` (one per length and dtype: milliseconds per call of each path and the path
        ``"auto"`` picks) and ``ratios`` (fused time / reference time; above 1: the written-out path
        is faster).

    Introduced in {doc}`/book/appendix/performance`.
    """
    from llmbook.model.attention import resolve_attn_impl

    n_head, head_dim = NANOGPT_CPU["n_head"], NANOGPT_CPU["n_embd"] // NANOGPT_CPU["n_head"]
    rows, ratios = [], {}
    generator = torch.Generator().manual_seed(0)
    for T in lengths:
        inner = max(1, 256 // T)  # about as many query positions per timing at every length
        for dtype in (torch.float32, torch.bfloat16):
            shape = (batch_size, n_head, T, head_dim)
            q, k, v = (
                torch.randn(shape, generator=generator).to(dtype).requires_grad_() for _ in range(3)
            )
            grad = torch.randn(shape, generator=generator).to(dtype)
            fns = {
                impl: partial(_attention_calls, q, k, v, grad, impl, inner)
                for impl in ("fused", "reference")
            }
            for fn in fns.values():
                fn()
            times = interleaved(fns, repeats)
            ms = {impl: 1e3 * median(t) / inner for impl, t in times.items()}
            name = "fp32" if dtype == torch.float32 else "bf16"
            rows.append(
                {
                    "T": T,
                    "dtype": name,
                    "fused_ms": ms["fused"],
                    "reference_ms": ms["reference"],
                    "auto": resolve_attn_impl("auto", q, T),
                }
            )
            ratios[f"attn_{name}_T{T}_reference_vs_fused"] = ms["fused"] / ms["reference"]
    return {"rows": rows, "ratios": ratios}


def bench_profile(*, steps: int = 5, batch_size: int = NANOGPT_CPU_BATCH) -> dict:
    """Where a training step's time goes: the Llama-style step split by :mod:`llmbook.profiling`.

    Profiles llmbook in fp32 and bf16 autocast and ``transformers``' ``LlamaForCausalLM`` in fp32 at
    nanoGPT's CPU configuration, each split into matmul, attention kernel, optimizer and other time.

    :param steps: profiled steps per contender.
    :param batch_size: windows per step.
    :returns: ``ms_per_step``: contender to category to milliseconds (profiler clock).

    Introduced in {doc}`/book/appendix/performance`.
    """
    cfg = llama_style()
    fns = {
        "llmbook_llama_fp32": llmbook_train_step(cfg, batch_size),
        "llmbook_llama_bf16": llmbook_train_step(cfg, batch_size, precision="bfloat16"),
        "hf_llama_fp32": hf_train_step(cfg, batch_size),
    }
    return {"ms_per_step": {name: time_by_category(fn, steps=steps) for name, fn in fns.items()}}


def bench_compiled(
    *, repeats: int = 5, steps: int = 10, batch_size: int = NANOGPT_CPU_BATCH
) -> dict:
    """What :func:`torch.compile` adds to the eager Llama-style step on this machine.

    Eager and compiled steps (fp32 and bf16 autocast) run interleaved after compilation; the compile
    time of each is reported separately. The book's targets are for eager code; this is the reference
    point for how much of the gap to the matmul peak is operator overhead that fusion removes.

    :param repeats: interleaved rounds.
    :param steps: steps per timing.
    :param batch_size: windows per step.
    :returns: tokens/s, compile seconds, MFU shares and ``ratios`` (compiled / eager).

    Introduced in {doc}`/book/appendix/performance`.
    """
    cfg = llama_style()
    fns, compile_seconds = {}, {}
    for precision, name in (("float32", "fp32"), ("bfloat16", "bf16")):
        fns[f"eager_{name}"] = llmbook_train_step(cfg, batch_size, precision=precision)
        fns[f"compiled_{name}"] = llmbook_train_step(
            cfg, batch_size, precision=precision, compile=True
        )
        start = time.perf_counter()
        fns[f"compiled_{name}"]()
        compile_seconds[name] = time.perf_counter() - start
    for fn in fns.values():
        fn()
    tokens = batch_size * cfg.block_size
    tps, peak = time_steps_and_peak(fns, tokens_per_step=tokens, repeats=repeats, steps=steps)
    fpt = flops_per_token(cfg)
    return {
        "tokens_per_second": tps,
        "compile_seconds": compile_seconds,
        "matmul_peak_flops": peak,
        "mfu": {name: fpt * value / peak[name.split("_")[1]] for name, value in tps.items()},
        "ratios": {
            f"compiled_vs_eager_{p}": tps[f"compiled_{p}"] / tps[f"eager_{p}"]
            for p in ("fp32", "bf16")
        },
    }
