"""The benchmark and profiling helpers: timing discipline, kernel choice, accounting."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llmbook import benchmark, profiling, timing
from llmbook.model.attention import resolve_attn_impl
from llmbook.model.counting import count_parameters, flops_per_token
from tests.book.chapters import ROOT


def test_interleaved_rotates_the_order_and_times_every_contender_each_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.interleaved(fns, repeats=4)
    assert calls == list("abcbcacababc")
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for v in times.values() for t in v)


def test_median():
    assert timing.median([3.0, 1.0, 2.0]) == 2.0
    assert timing.median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_train_steps_build_the_same_model_for_llmbook_and_transformers():
    # Same config and seed: the two contenders start from identical weights, so they do the same work.
    cfg = benchmark.llama_style(n_layer=1)
    ours = benchmark.llmbook_train_step(cfg, 2)
    theirs = benchmark.hf_train_step(cfg, 2)
    model_ours, model_theirs = ours.model, theirs.model
    assert sum(p.numel() for p in model_ours.parameters()) == count_parameters(cfg)
    assert sum(p.numel() for p in model_theirs.parameters()) == count_parameters(cfg)
    first = model_ours.blocks[0].attn.q_proj.weight
    assert torch.equal(first, model_theirs.model.layers[0].self_attn.q_proj.weight)
    assert ours() > 0 and theirs() > 0


def test_op_categories():
    assert profiling.op_category("aten::mm") == "matmul"
    assert profiling.op_category("aten::addmm") == "matmul"
    assert profiling.op_category("aten::mm_backward") == "other"  # exact names for aten ops
    assert profiling.op_category("aten::_scaled_dot_product_flash_attention_for_cpu") == (
        "attention kernel"
    )
    assert profiling.op_category("aten::_fused_adamw_") == "optimizer"
    assert profiling.op_category("aten::mul") == "other"


def test_time_by_category_adds_up_and_sees_the_matmuls():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    split = profiling.time_by_category(lambda: (a @ b).relu_(), steps=3, warmup=1)
    assert set(split) == {*profiling.OP_CATEGORIES, "other", "total"}
    parts = sum(v for k, v in split.items() if k != "total")
    assert split["total"] == pytest.approx(parts)
    assert split["matmul"] > 0 and split["attention kernel"] == 0 and split["optimizer"] == 0


def test_bench_attention_reports_each_length_and_dtype_with_the_auto_choice():
    r = profiling.bench_attention(lengths=(16,), repeats=1, batch_size=2)
    assert [(row["T"], row["dtype"]) for row in r["rows"]] == [(16, "fp32"), (16, "bf16")]
    for row in r["rows"]:
        dtype = torch.float32 if row["dtype"] == "fp32" else torch.bfloat16
        assert row["auto"] == resolve_attn_impl("auto", torch.zeros(1, dtype=dtype), 16)
        assert row["fused_ms"] > 0 and row["reference_ms"] > 0
        key = f"attn_{row['dtype']}_T16_reference_vs_fused"
        assert r["ratios"][key] == pytest.approx(row["fused_ms"] / row["reference_ms"])


def test_gpu_mfu_benchmark_accounts_flops_on_any_device():
    cfg = benchmark.gpt2_style(n_layer=1, block_size=16)
    r = benchmark.bench_gpu_mfu(
        device="cpu", config=cfg, batch_size=2, steps=2, warmup=1, compile=False
    )
    assert r["device_name"] == "cpu" and r["bf16_peak_flops"]["datasheet"] is None
    assert r["parameters"] == count_parameters(cfg)
    assert r["flops_per_token"] == flops_per_token(cfg, seq_len=16)
    measured = r["bf16_peak_flops"]["measured_matmul"]
    expected = r["flops_per_token"] * r["tokens_per_second"] / measured
    assert r["mfu"]["vs_measured_matmul"] == pytest.approx(expected)
    assert r["mfu"]["vs_datasheet"] is None


def test_gpt2_124m_shape_has_124m_parameters():
    cfg = benchmark.gpt2_style(**benchmark.GPT2_124M)
    assert round(count_parameters(cfg) / 1e6) == 124


def test_bench_script_refuses_an_unknown_stage():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "nonsense"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown stage" in result.stderr and "training" in result.stderr
