"""Quantized linear layers, parity with torchao, and quantize_model on a tiny Llama-style GPT."""

import copy

import pytest
import torch
from torch import nn

from llmbook.adapt.qlinear import (
    DynamicInt8Linear,
    QuantConfig,
    WeightOnlyLinear,
    bits_per_weight,
    model_size_bytes,
    quantize_model,
)
from llmbook.adapt.quantize import quantize
from llmbook.generate.generation import generate
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.train.evaluate import evaluate


def _linear(n_in=128, n_out=96, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tiny_gpt(**overrides):
    torch.manual_seed(0)
    cfg = dict(
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_kv_head=2,
        block_size=32,
        bias=False,
        pos_embedding="rope",
        norm="rmsnorm",
        mlp="swiglu",
    )
    return GPT(ModelConfig(**{**cfg, **overrides})).eval()


def test_int8_weight_only_equals_torchao():
    torchao_quant = pytest.importorskip("torchao.quantization")
    linear = _linear(256, 96)
    ours = WeightOnlyLinear.from_linear(linear)
    theirs = copy.deepcopy(linear)
    torchao_quant.quantize_(theirs, torchao_quant.Int8WeightOnlyConfig())
    w = theirs.weight
    assert torch.equal(ours.codes, w.qdata)
    assert torch.equal(ours.scale.view(-1), w.scale.view(-1).float())
    x = _x(5, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.weight(), w.dequantize().float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 8},
        {"bits": 4, "granularity": "group", "group_size": 32},
        {"bits": 4, "granularity": "group", "group_size": 64, "mapping": "affine"},
    ],
)
def test_aten_kernels_compute_what_dequantize_computes(kwargs):
    linear = _linear()
    slow = WeightOnlyLinear.from_linear(linear, **kwargs)
    fast = WeightOnlyLinear.from_linear(linear, kernel="aten", **kwargs)
    x = _x(2, 3, 128)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.weight(), slow.weight(), rtol=1e-6, atol=1e-6)
        exact = nn.functional.linear(x, slow.weight(), linear.bias)
        torch.testing.assert_close(slow(x), exact, rtol=0, atol=0)


def test_layer_error_shrinks_with_bits():
    linear = _linear()
    x = _x(8, 128)
    with torch.no_grad():
        ref = linear(x)
        err8 = (WeightOnlyLinear.from_linear(linear)(x) - ref).pow(2).mean()
        err4 = (
            (
                WeightOnlyLinear.from_linear(linear, bits=4, granularity="group", group_size=32)(x)
                - ref
            )
            .pow(2)
            .mean()
        )
    assert 0 < err8 < err4 / 50  # four more bits: 16x finer steps, 256x less noise power


@pytest.mark.parametrize("kernel", ["dequantize", "aten"])
def test_bfloat16_input(kernel):
    linear = _linear()
    layer = WeightOnlyLinear.from_linear(linear, kernel=kernel)
    x = _x(4, 128)
    with torch.no_grad():
        y = layer(x.bfloat16())
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.05)
        dyn = DynamicInt8Linear.from_linear(linear)
        assert dyn(x.bfloat16()).dtype == torch.bfloat16


def test_int4_layer_stores_half_a_byte_per_weight():
    layer = WeightOnlyLinear.from_linear(_linear(), bits=4, granularity="group", group_size=32)
    assert layer.codes.dtype == torch.uint8 and layer.codes.shape == (96, 64)
    assert bits_per_weight(layer) == pytest.approx(4 + 32 / 32)  # + a float32 scale per 32 weights


def test_dynamic_int8_integer_sum_by_hand_and_kernels_agree():
    linear = _linear(64, 32)
    x = _x(3, 7, 64)
    fast = DynamicInt8Linear.from_linear(linear)
    slow = DynamicInt8Linear.from_linear(linear, kernel="emulated")
    with torch.no_grad():
        y = fast(x)
        assert torch.equal(y, slow(x))
        qx, qw = quantize(x.reshape(-1, 64)), quantize(linear.weight)
        by_hand = (
            (qx.codes.double() @ qw.codes.double().t()) * qx.scale.double() * qw.scale.double().t()
        )
        torch.testing.assert_close(y.reshape(-1, 32), (by_hand + linear.bias.double()).float())
        rel = (y - linear(x)).norm() / linear(x).norm()
    assert rel < 0.02


def test_quantize_model_keeps_logits_close_and_generates():
    model = _tiny_gpt()
    ref = copy.deepcopy(model)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    before = model_size_bytes(model)
    out = quantize_model(model, "int8")
    assert out is model
    blocks = model.blocks[0]
    for layer in (
        blocks.attn.q_proj,
        blocks.attn.o_proj,
        blocks.mlp.gate_proj,
        blocks.mlp.down_proj,
    ):
        assert isinstance(layer, WeightOnlyLinear)
    assert type(model.lm_head) is nn.Linear and type(model.tok_emb) is nn.Embedding
    with torch.no_grad():
        a, b = ref(ids).logits, model(ids).logits
    assert float((a - b).abs().max()) < 0.02 * float(a.abs().max())
    assert model_size_bytes(model) < 0.5 * before
    prompts = [[1, 2, 3], [4, 5]]
    cached = generate(model, prompts, max_new_tokens=8, temperature=0.0)
    uncached = generate(model, prompts, max_new_tokens=8, temperature=0.0, use_cache=False)
    assert cached.completions == uncached.completions and len(cached.completions[0]) == 8
    losses = [evaluate(m, torch.arange(200) % 256, batch_size=4).loss for m in (ref, model)]
    assert abs(losses[1] - losses[0]) < 0.01 * losses[0]


@pytest.mark.parametrize(
    "options",
    [
        {"scheme": "int4"},
        {"scheme": "int4", "kernel": "aten"},
        {"scheme": "int8", "kernel": "aten"},
        {"scheme": "int8-dynamic"},
        {"scheme": "int8", "quantize_head": True},
    ],
)
def test_every_scheme_runs_generation(options):
    model = quantize_model(_tiny_gpt(), **options)
    out = generate(model, [[1, 2, 3]], max_new_tokens=5, temperature=0.0)
    assert len(out.completions[0]) == 5
    assert isinstance(model.lm_head, nn.Linear) != options.get("quantize_head", False)


def test_model_size_counts_tied_weights_once():
    model = _tiny_gpt(tie_weights=True)
    expected = sum(p.numel() * 4 for p in model.parameters())
    assert model_size_bytes(model) == expected
    assert model_size_bytes(model) < sum(p.numel() * 4 for p in model.state_dict().values())


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"scheme": "int3"}, "scheme"),
        ({"granularity": "row"}, "granularity"),
        ({"granularity": "group", "group_size": 1}, "group_size"),
        ({"group_size": 32}, "group_size"),
        ({"mapping": "absmax"}, "mapping"),
        ({"kernel": "int_mm"}, "kernel"),
        ({"scheme": "int8-dynamic", "kernel": "aten"}, "kernel"),
        ({"scheme": "int8-dynamic", "granularity": "tensor"}, "granularity"),
        ({"quantize_head": 1}, "quantize_head"),
    ],
)
def test_invalid_options_name_themselves(options, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        QuantConfig(**options)


def test_invalid_layer_and_model_arguments():
    with pytest.raises(ValueError, match="^kernel:"):
        WeightOnlyLinear.from_linear(_linear(), granularity="tensor", kernel="aten")
    with pytest.raises(ValueError, match="^kernel:"):
        WeightOnlyLinear.from_linear(_linear(), kernel="cuda")
    with pytest.raises(ValueError, match="^qweight:"):
        WeightOnlyLinear(quantize(_linear().weight.detach(), bits=3))
    with pytest.raises(ValueError, match="^options:"):
        quantize_model(_tiny_gpt(), QuantConfig(), kernel="aten")
    with pytest.raises(ValueError, match="^model:"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)))
