import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.attention import MultiHeadAttention
from llmbook.model.config import ModelConfig
from llmbook.model.mlp import SwiGLU
from llmbook.model.norm import RMSNorm


def test_rmsnorm_equals_torch():
    ours, theirs = RMSNorm(12, eps=1e-6), nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(12))
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 12) * 4
    torch.testing.assert_close(ours(x), theirs(x))
    g1 = torch.autograd.grad(ours(x).pow(3).sum(), ours.weight)[0]
    g2 = torch.autograd.grad(theirs(x).pow(3).sum(), theirs.weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    assert ours(x.bfloat16()).dtype == torch.bfloat16


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
