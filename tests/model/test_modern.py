import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.attention import MultiHeadAttention
from llmbook.model.config import ModelConfig
from llmbook.model.mlp import SwiGLU
from llmbook.model.norm import RMSNorm


def rms_norm_by_hand(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * g in plain Python floats (float64), row by row."""
    out = []
    for row in x.reshape(-1, x.shape[-1]).tolist():
        rms = math.sqrt(math.fsum(v * v for v in row) / len(row) + eps)
        out.append([v / rms * g for v, g in zip(row, weight)])
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


@pytest.mark.parametrize("fused", [True, False])
def test_rmsnorm_equals_the_formula_worked_out_in_float64(fused):
    torch.manual_seed(0)
    norm = RMSNorm(12, eps=1e-6)
    norm.fused = fused
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12))
    x = torch.randn(3, 5, 12) * 4
    expected = rms_norm_by_hand(x.double(), norm.weight.tolist(), 1e-6)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)
    y16 = norm(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(
        y16.double(),
        rms_norm_by_hand(x.bfloat16().double(), norm.weight.tolist(), 1e-6),
        rtol=1e-2,
        atol=1e-2,
    )
    norm.double()
    torch.testing.assert_close(norm(x.double()), expected, rtol=1e-12, atol=1e-12)
    # x = (3, 4): mean square 12.5, no mean subtraction (LayerNorm would give -1, 1)
    unit = RMSNorm(2, eps=0.0).double()
    torch.testing.assert_close(
        unit(torch.tensor([3.0, 4.0], dtype=torch.float64)),
        torch.tensor([3.0, 4.0], dtype=torch.float64) / math.sqrt(12.5),
    )


@pytest.mark.parametrize("fused", [True, False])
def test_rmsnorm_gradients_equal_finite_differences(fused):
    torch.manual_seed(0)
    norm = RMSNorm(8).double()
    norm.fused = fused
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    def apply(x, weight):
        return torch.func.functional_call(norm, {"weight": weight}, (x,))

    assert torch.autograd.gradcheck(apply, (x, norm.weight))


def test_rmsnorm_also_equals_torch():
    ours, theirs = RMSNorm(12, eps=1e-6), nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(12))
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 12) * 4
    torch.testing.assert_close(ours(x), theirs(x))


def test_swiglu_formula_and_width():
    cfg = ModelConfig(mlp="swiglu", n_embd=48, n_head=4)
    assert cfg.hidden_size == 128  # 8 * 48 / 3 = 128, already a multiple of 64
    mlp = SwiGLU(cfg)
    x = torch.randn(2, 3, 48)
    h = F.silu(x @ mlp.gate_proj.weight.T + mlp.gate_proj.bias) * (
        x @ mlp.up_proj.weight.T + mlp.up_proj.bias
    )
    torch.testing.assert_close(mlp(x), h @ mlp.down_proj.weight.T + mlp.down_proj.bias)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = MultiHeadAttention(ModelConfig(n_embd=32, n_head=4, n_kv_head=2, bias=False)).eval()
    mha = MultiHeadAttention(ModelConfig(n_embd=32, n_head=4, bias=False)).eval()
    D = 8
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, D, 32)  # (K, D, C)
            getattr(mha, name).weight.copy_(w.repeat_interleave(2, dim=0).reshape(32, 32))
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(gqa(x), mha(x))
    assert gqa.k_proj.weight.shape == (16, 32)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"n_kv_head": 3}, "n_kv_head"),
        ({"norm": "batch"}, "norm"),
        ({"mlp": "relu"}, "mlp"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"attn_sinks": 2}, "attn_sinks"),
        ({"pos_embedding": "rope", "n_embd": 12, "n_head": 4}, "pos_embedding"),
        ({"rope_theta": 0.0}, "rope_theta"),
    ],
)
def test_new_fields_are_validated(kw, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        ModelConfig(**kw)


def test_llama_style_switches():
    c = ModelConfig.llama_style(n_kv_head=2)
    assert (c.norm, c.pos_embedding, c.mlp, c.bias, c.tie_weights, c.kv_heads) == (
        "rmsnorm",
        "rope",
        "swiglu",
        False,
        False,
        2,
    )
